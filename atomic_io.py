"""Every file the library writes goes through `atomic_path`: written under a temporary name in the destination's
folder, then moved over the final name with `os.replace`, so a reader (or a resumed run) sees either the old file
or the complete new one, never a partial file.

Temporary names are `.<stem>.tmp-<pid><suffix>` (the suffix kept, since NumPy, Keras and h5py choose the format by
it); `remove_stale_temp_files` deletes the ones a killed process left behind.
"""

import contextlib
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np

MULTI_PART_SUFFIXES = (".weights.h5", ".tar.gz")
TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<pid>\d+)(?P<suffix>(\.[^.]+)*)$")


def file_suffix(path):
    """The ending that decides a file's format: `.weights.h5` for `x.weights.h5`, else the last suffix (or '')."""
    name = Path(path).name
    for suffix in MULTI_PART_SUFFIXES:
        if name.endswith(suffix) and len(name) > len(suffix):
            return suffix
    return Path(name).suffix


def temp_path_for(path):
    """The temporary name `atomic_path` writes `path` under: `.<stem>.tmp-<pid><suffix>` in the same folder."""
    path = Path(path)
    suffix = file_suffix(path)
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}.tmp-{os.getpid()}{suffix}")


@contextlib.contextmanager
def atomic_path(path):
    """Context manager yielding a temporary path to write; on normal exit it replaces `path` (parents created).

    On an exception the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temp_path_for(path)
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_bytes_atomic(path, data):
    """Write `data` (bytes) to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text_atomic(path, text, encoding="utf-8"):
    """Write `text` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding=encoding)


def write_json_atomic(path, data):
    """Write `data` as strict JSON (no NaN/Infinity) to `path` atomically."""
    write_text_atomic(path, json.dumps(data, allow_nan=False))


def save_npy_atomic(path, array):
    """`np.save(path, array)` atomically; `path` should end with `.npy`."""
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        np.save(file, np.asarray(array))


def save_npz_atomic(path, compressed=False, **arrays):
    """`np.savez` (or `np.savez_compressed`) of `arrays` to `path` atomically; `path` should end with `.npz`."""
    save = np.savez_compressed if compressed else np.savez
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        save(file, **arrays)


def copy_file_atomic(source, destination):
    """Copy `source` to `destination` atomically."""
    with atomic_path(destination) as temporary:
        shutil.copyfile(source, temporary)


def save_figure_atomic(figure, path, **savefig_kwargs):
    """`figure.savefig(path, ...)` atomically (the format taken from `path`'s suffix unless given)."""
    savefig_kwargs.setdefault("format", file_suffix(path).lstrip(".") or None)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, **savefig_kwargs)


MODEL_SUFFIXES = (".keras", ".weights.h5", ".h5")


def model_file_suffix(path):
    """`.keras`, `.weights.h5` or `.h5` for a model checkpoint path; ValueError naming the path otherwise."""
    suffix = file_suffix(path)
    if suffix not in MODEL_SUFFIXES:
        raise ValueError(f"{path}: a model checkpoint must end with .keras, .h5 or .weights.h5")
    return suffix


def save_model_atomic(model, path, save_weights_only=False):
    """Save `model` to `path` atomically.

    `.keras`: full model with optimizer state; `.h5`: legacy HDF5 model; `.weights.h5` (or `save_weights_only`):
    weights only, which needs a `.weights.h5` name.
    """
    suffix = model_file_suffix(path)
    weights_only = save_weights_only or suffix == ".weights.h5"
    if weights_only and suffix != ".weights.h5":
        raise ValueError(f"{path}: weights-only checkpoints must end with .weights.h5")
    with atomic_path(path) as temporary:
        if weights_only:
            model.save_weights(temporary)
        else:
            model.save(temporary)


def _pid_is_running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_files(folder):
    """Delete the temporary files of `atomic_path` in `folder` whose writing process no longer runs.

    Returns the list of removed paths. Files of running processes (another training run writing now) are kept.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        match = TEMP_NAME.match(path.name)
        if match and path.is_file() and not _pid_is_running(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed
