"""Scanning a dataset into an image list: class folders (or a glob pattern and a class rule) or an image-list
`.npz`, through a cache file that is rebuilt when the folder changes.

A dataset folder holds one sub-folder per identity; the class index of a folder is its position in the list of
sub-folder names sorted in *natural* order (digit runs compare as numbers, so "2" < "10"; for all-numeric names
this is numeric order). `class_order="sorted"` gives the original GhostFaceNets plain string order instead.

NumPy only: no TensorFlow import, so evaluation tools can list folders cheaply.
"""

import fnmatch
import glob
import hashlib
import logging
import os
import re
import warnings
import zipfile

import numpy as np

from atomic_io import save_npz_atomic

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".jxl")
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = "cache"
UNREADABLE_NPZ_ERRORS = (zipfile.BadZipFile, EOFError, KeyError, ValueError, OSError)


def natural_sort_key(name):
    """Sort key that compares digit runs as numbers: "id2" < "id10"."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def sort_class_names(names, class_order="natural"):
    """Class folder names in class-index order: "natural" (digit runs as numbers) or "sorted" (plain strings)."""
    if class_order == "natural":
        return sorted(names, key=natural_sort_key)
    if class_order == "sorted":
        return sorted(names)
    raise ValueError(f"class_order must be 'natural' or 'sorted', got {class_order!r}")


def is_image_file(name):
    """Whether a file name has one of `IMAGE_EXTENSIONS` (case-insensitive) and is not hidden: names starting
    with `.` are skipped, such as the temporary files `atomic_io` writes and a killed run may leave behind."""
    return not os.path.basename(name).startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class ImageClassesRule_map:  # noqa: N801 (the original public name)
    """Maps an image path to the class index of its parent folder; classes are the sub-folders of `dir`."""

    def __init__(self, dir, dir_rule="*", excludes=(), class_order="natural"):
        names = [entry.name for entry in os.scandir(dir) if entry.is_dir() and fnmatch.fnmatch(entry.name, dir_rule)]
        self.indices_2_classes = sort_class_names([name for name in names if name not in excludes], class_order)
        self.classes_2_indices = {name: index for index, name in enumerate(self.indices_2_classes)}

    def __call__(self, image_path):
        """The class index (int) of the folder holding `image_path`."""
        return self.classes_2_indices[os.path.basename(os.path.dirname(image_path))]


def _warn_non_image_files(data_path, ignored):
    """One warning naming (the first five of) the non-image files a scan left out."""
    shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
    warnings.warn(f"skipped {len(ignored)} non-image file(s) in {data_path}: {shown}", stacklevel=3)


def scan_folder(data_path, class_order="natural"):
    """List the images of a class-per-folder dataset.

    Files without an image extension are skipped with one warning naming them.

    Args:
        data_path: the dataset folder, one sub-folder per class.
        class_order: "natural" or "sorted", see `sort_class_names`.

    Returns:
        `(image_names, image_classes, class_names)`: file paths (under `data_path`, sorted by class then file
        name), int64 class indices (N,), and the class folder names in index order.

    Raises:
        ValueError: a class folder holds no image, naming it.
    """
    class_names = sort_class_names([entry.name for entry in os.scandir(data_path) if entry.is_dir()], class_order)
    image_names, image_classes, ignored = [], [], []
    for index, class_name in enumerate(class_names):
        class_dir = os.path.join(data_path, class_name)
        files = sorted(entry.name for entry in os.scandir(class_dir) if entry.is_file())
        images = [name for name in files if is_image_file(name)]
        ignored.extend(os.path.join(class_dir, name) for name in files if not is_image_file(name))
        if not images:
            raise ValueError(
                f"class folder {class_dir} holds no image files (extensions {', '.join(IMAGE_EXTENSIONS)}); "
                "remove it or add images, so that class indices stay meaningful"
            )
        image_names.extend(os.path.join(class_dir, name) for name in images)
        image_classes.extend([index] * len(images))
    if ignored:
        _warn_non_image_files(data_path, ignored)
    return image_names, np.array(image_classes, dtype=np.int64), class_names


def folder_fingerprint(data_path):
    """A hash (hex string) of the modification times of `data_path` and of each class folder.

    Adding, removing or renaming an image or a class folder changes it (directory mtimes change), so a cache
    keyed by it is rebuilt; editing an image in place does not (the image list stays valid).
    """
    digest = hashlib.sha1(str(os.stat(data_path).st_mtime_ns).encode())
    for entry in sorted(os.scandir(data_path), key=lambda entry: entry.name):
        if entry.is_dir():
            digest.update(f"{entry.name}:{entry.stat().st_mtime_ns};".encode())
    return digest.hexdigest()


def cache_path_for(data_path, cache_dir, options):
    """Cache file for `data_path`: `<cache_dir>/<folder name>_<hash of absolute path and options>_shuffle.npz`."""
    key = hashlib.sha1(f"{os.path.abspath(data_path)}|{options}|v{CACHE_VERSION}".encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{os.path.basename(data_path)}_{key}_shuffle.npz")


def load_image_list_npz(npz_path):
    """Read an image-list `.npz` (`image_names`, `image_classes`, optional `embeddings` (N, D)).

    Returns:
        `(names (N,) str, classes (N,) int64, embeddings or None)`.

    Raises:
        ValueError: the file is truncated, not an `.npz` or lacks a key, naming the file.
    """
    try:
        with np.load(npz_path, allow_pickle=False) as loaded:
            embeddings = loaded["embeddings"] if "embeddings" in loaded.files else None
            return loaded["image_names"].astype(str), loaded["image_classes"].astype(np.int64), embeddings
    except UNREADABLE_NPZ_ERRORS as error:
        raise ValueError(
            f"{npz_path}: not a readable image-list .npz (keys image_names, image_classes[, embeddings]): {error!r}"
        ) from error


def read_scan_cache(cache_path, fingerprint):
    """`(names, classes)` from the cache file `cache_path` when it holds `fingerprint`, else None.

    A truncated or corrupt cache file is reported with a warning naming it and treated as absent (rebuilt).
    """
    if not os.path.isfile(cache_path):
        return None
    try:
        with np.load(cache_path, allow_pickle=False) as cached:
            if str(cached["fingerprint"]) != fingerprint:
                return None
            return cached["image_names"].astype(str), cached["image_classes"].astype(np.int64)
    except UNREADABLE_NPZ_ERRORS as error:
        logger.warning("scan cache %s is unreadable (%r); scanning the folder again", cache_path, error)
        return None


def _scan_uncached(data_path, image_names_reg, image_classes_rule, class_order):
    """`(names, classes)` of a folder scan: every class folder, or the glob pattern and the class rule."""
    if image_names_reg is None and image_classes_rule is None:
        names, classes, _ = scan_folder(data_path, class_order)
        return np.array(names), classes
    pattern = image_names_reg or os.path.join("*", "*")
    names = sorted(name for name in glob.glob(os.path.join(data_path, pattern)) if is_image_file(name))
    rule = image_classes_rule or ImageClassesRule_map(data_path, class_order=class_order)
    return np.array(names), np.array([rule(name) for name in names], dtype=np.int64)


def pre_process_folder(data_path, image_names_reg=None, image_classes_rule=None, cache_dir=None, class_order="natural"):
    """Scan a dataset into an image list, through a cache that is rebuilt when the folder changes.

    Args:
        data_path: a class-per-folder directory, or an image-list `.npz` (keys `image_names`, `image_classes` and
            optionally `embeddings`, e.g. teacher embeddings for distillation).
        image_names_reg: a glob pattern relative to `data_path` (default: every image in every class folder).
        image_classes_rule: a callable path → class index (default: the parent folder's index).
        cache_dir: where the cache file is written (default `./cache`).
        class_order: "natural" or "sorted", see `sort_class_names`.

    Returns:
        `(image_names, image_classes, embeddings or None, classes, cache_path)`; empty arrays and `classes = 0`
        when `data_path` does not exist.
    """
    data_path = os.path.normpath(os.fspath(data_path))
    if data_path.endswith(".npz"):
        names, classes, embeddings = load_image_list_npz(data_path)
        return names, classes, embeddings, int(classes.max()) + 1 if len(classes) else 0, data_path
    if not os.path.isdir(data_path):
        return np.array([], dtype=str), np.array([], dtype=np.int64), None, 0, None

    options = f"{image_names_reg}|{class_order}|{getattr(image_classes_rule, '__qualname__', image_classes_rule)}"
    cache_path = cache_path_for(data_path, cache_dir or DEFAULT_CACHE_DIR, options)
    fingerprint = folder_fingerprint(data_path)
    cached = read_scan_cache(cache_path, fingerprint)
    if cached is not None:
        names, classes = cached
        return names, classes, None, int(classes.max()) + 1, cache_path
    names, classes = _scan_uncached(data_path, image_names_reg, image_classes_rule, class_order)
    if len(names) == 0:
        raise ValueError(f"no images found in {data_path}")
    save_npz_atomic(cache_path, compressed=True, image_names=names, image_classes=classes, fingerprint=fingerprint)
    return names, classes, None, int(classes.max()) + 1, cache_path


def pick_by_image_per_class(image_classes, image_per_class):
    """Keep classes with at least `image_per_class` images.

    Returns:
        `(boolean mask over images (N,), kept class indices)`.
    """
    counts = np.bincount(image_classes)
    kept = np.flatnonzero(counts >= image_per_class)
    return counts[image_classes] >= image_per_class, kept
