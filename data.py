"""Training data on `tf.data`: class-folder scanning with a validated cache, augmentation, mixup, and the plain,
partial-FC, triplet and distillation datasets. Also TFRecord read/write and the safe `.bin` loader (re-exported).

Conventions (as in the original):

- A dataset folder holds one sub-folder per identity; the class index of a folder is its position in the list of
  sub-folder names sorted in *natural* order (digit runs compare as numbers, so "2" < "10"; for all-numeric names
  this is numeric order). `class_order="sorted"` gives the original GhostFaceNets plain string order instead.
- Images are RGB, decoded to float32 0..255, augmented, then normalised as `(x − 127.5) · 0.0078125`.
- Labels are one-hot float32 of depth `classes` (or sparse int32 class ids with `sparse_label=True`).

Pipelines read whole batches: one parallel map call reads, checks, decodes and augments the images of a batch,
so `tf.data`'s per-element cost is paid per batch, and the checks run vectorised over the batch (see
`_read_batches`; throughput against raw `tf.io.decode_jpeg` in `bench/data_pipeline.py`).

Unreadable images: each file is checked when it is read (non-empty, a known image signature, and for JPEG/PNG
the end-of-image marker present, which catches truncated files). A file that fails is skipped (its batch is one
image shorter), reported on stderr with its path, and counted (`skipped_image_count()`); a file that passes but
still fails to decode makes `tf.data`'s `ignore_errors` drop its whole batch, with TensorFlow's warning. Training
datasets repeat forever, so skipped files never cut an epoch short: Keras runs exactly `steps_per_epoch` batches.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import glob
import hashlib
import os
import re
import sys
import warnings

import numpy as np
import tensorflow as tf

from augment import RandAugment
from bin_files import load_bin, make_bin  # noqa: F401 (re-exported: data.load_bin / data.make_bin)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".jxl")
NORMALIZE_MEAN, NORMALIZE_SCALE = 127.5, 0.0078125
CACHE_VERSION = 1
DEFAULT_CACHE_DIR = "cache"
RANDAUGMENT_OPS = ["AutoContrast", "Equalize", "Color", "Contrast", "Brightness", "Sharpness", "Cutout"]
AUTOTUNE = tf.data.AUTOTUNE
JPEG_SEGMENTS_SEARCHED = 32  # marker segments `jpeg_sizes` walks before giving up (then images are decoded and resized)
IMAGES_DECODED_IN_PARALLEL = 8  # per batch, inside one map call (`_read_batches`); batches also run in parallel


# ----------------------------------------------------------------------------------------------------------------
# Folder scanning and cache


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
    """Whether a file name has one of `IMAGE_EXTENSIONS` (case-insensitive)."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


class ImageClassesRule_map:  # noqa: N801 (the original public name)
    """Maps an image path to the class index of its parent folder; classes are the sub-folders of `dir`."""

    def __init__(self, dir, dir_rule="*", excludes=(), class_order="natural"):
        import fnmatch

        names = [entry.name for entry in os.scandir(dir) if entry.is_dir() and fnmatch.fnmatch(entry.name, dir_rule)]
        self.indices_2_classes = sort_class_names([name for name in names if name not in excludes], class_order)
        self.classes_2_indices = {name: index for index, name in enumerate(self.indices_2_classes)}

    def __call__(self, image_path):
        return self.classes_2_indices[os.path.basename(os.path.dirname(image_path))]


def scan_folder(data_path, class_order="natural"):
    """List the images of a class-per-folder dataset.

    Returns `(image_names, image_classes, class_names)`: file paths (under `data_path`, sorted by class then file
    name), int64 class indices, and the class folder names in index order. Files without an image extension are
    skipped with one warning naming them; a class folder without images raises `ValueError` naming it.
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
        shown = ", ".join(ignored[:5]) + (", ..." if len(ignored) > 5 else "")
        warnings.warn(f"skipped {len(ignored)} non-image file(s) in {data_path}: {shown}", stacklevel=2)
    return image_names, np.array(image_classes, dtype=np.int64), class_names


def folder_fingerprint(data_path):
    """A hash of the modification times of `data_path` and of each class folder.

    Adding, removing or renaming an image or a class folder changes it (directory mtimes change), so a cache
    keyed by it is rebuilt; editing an image in place does not (the image list stays valid).
    """
    digest = hashlib.sha1(str(os.stat(data_path).st_mtime_ns).encode())
    for entry in sorted(os.scandir(data_path), key=lambda entry: entry.name):
        if entry.is_dir():
            digest.update(f"{entry.name}:{entry.stat().st_mtime_ns};".encode())
    return digest.hexdigest()


def _cache_path(data_path, cache_dir, options):
    """Cache file for `data_path`: `<cache_dir>/<folder name>_<hash of absolute path and options>_shuffle.npz`."""
    key = hashlib.sha1(f"{os.path.abspath(data_path)}|{options}|v{CACHE_VERSION}".encode()).hexdigest()[:12]
    return os.path.join(cache_dir, f"{os.path.basename(data_path)}_{key}_shuffle.npz")


def load_image_list_npz(npz_path):
    """Read an image-list `.npz` (`image_names`, `image_classes`, optional `embeddings`) → `(names, classes, embs)`."""
    with np.load(npz_path, allow_pickle=False) as loaded:
        embeddings = loaded["embeddings"] if "embeddings" in loaded.files else None
        return loaded["image_names"].astype(str), loaded["image_classes"].astype(np.int64), embeddings


def pre_process_folder(data_path, image_names_reg=None, image_classes_rule=None, cache_dir=None, class_order="natural"):
    """Scan a dataset into an image list, through a cache that is rebuilt when the folder changes.

    `data_path` is a class-per-folder directory or an image-list `.npz` (keys `image_names`, `image_classes` and
    optionally `embeddings`, e.g. teacher embeddings for distillation). `image_names_reg` is a glob pattern
    relative to `data_path` (default: every image in every class folder) and `image_classes_rule` a callable
    path → class index (default: the parent folder's index). The cache is written in `cache_dir` (default
    `./cache`). Returns `(image_names, image_classes, embeddings or None, classes, cache_path)`; empty arrays
    and `classes = 0` when `data_path` does not exist.
    """
    data_path = os.path.normpath(os.fspath(data_path))
    if data_path.endswith(".npz"):
        names, classes, embeddings = load_image_list_npz(data_path)
        return names, classes, embeddings, int(classes.max()) + 1 if len(classes) else 0, data_path
    if not os.path.isdir(data_path):
        return np.array([], dtype=str), np.array([], dtype=np.int64), None, 0, None

    options = f"{image_names_reg}|{class_order}|{getattr(image_classes_rule, '__qualname__', image_classes_rule)}"
    cache_path = _cache_path(data_path, cache_dir or DEFAULT_CACHE_DIR, options)
    fingerprint = folder_fingerprint(data_path)
    if os.path.isfile(cache_path):
        with np.load(cache_path, allow_pickle=False) as cached:
            if str(cached["fingerprint"]) == fingerprint:
                names, classes = cached["image_names"].astype(str), cached["image_classes"].astype(np.int64)
                return names, classes, None, int(classes.max()) + 1, cache_path

    if image_names_reg is None and image_classes_rule is None:
        names, classes, _ = scan_folder(data_path, class_order)
    else:
        pattern = image_names_reg or os.path.join("*", "*")
        names = sorted(name for name in glob.glob(os.path.join(data_path, pattern)) if is_image_file(name))
        rule = image_classes_rule or ImageClassesRule_map(data_path, class_order=class_order)
        classes = np.array([rule(name) for name in names], dtype=np.int64)
    if len(names) == 0:
        raise ValueError(f"no images found in {data_path}")
    os.makedirs(os.path.dirname(cache_path), exist_ok=True)
    np.savez_compressed(cache_path, image_names=np.array(names), image_classes=classes, fingerprint=fingerprint)
    return np.array(names), classes, None, int(classes.max()) + 1, cache_path


def pick_by_image_per_class(image_classes, image_per_class):
    """Keep classes with at least `image_per_class` images: `(boolean mask over images, kept class indices)`."""
    counts = np.bincount(image_classes)
    kept = np.flatnonzero(counts >= image_per_class)
    return counts[image_classes] >= image_per_class, kept


# ----------------------------------------------------------------------------------------------------------------
# Reading and decoding


_skipped_images = None


def _skip_counter():
    """The process-wide count of skipped unreadable images (a tf.Variable, created on first use)."""
    global _skipped_images
    if _skipped_images is None:
        with tf.init_scope():
            _skipped_images = tf.Variable(0, dtype=tf.int64, trainable=False, name="skipped_images")
    return _skipped_images


def skipped_image_count():
    """How many times the pipelines of this process have skipped an unreadable image (once per file per pass)."""
    return int(_skip_counter().numpy())


def _bytes_at(data, pos, length):
    """The `length` bytes from byte `pos` of every string in `data` (fewer at the end); `pos` broadcasts."""
    return tf.strings.substr(data, tf.broadcast_to(pos, tf.shape(data)), tf.fill(tf.shape(data), length))


def _tail_contains(data, marker, window=32):
    """Whether the byte string `marker` occurs in the last `window` bytes of each string in `data`."""
    tail = _bytes_at(data, tf.maximum(tf.strings.length(data) - window, 0), window)
    tail = tf.io.decode_raw(tail, tf.uint8, fixed_length=window)  # (..., window), short strings zero-padded
    size = window - len(marker) + 1
    windows = tf.stack([tail[..., i : size + i] for i in range(len(marker))], axis=-1)
    return tf.reduce_any(tf.reduce_all(tf.equal(windows, tf.constant(list(marker), tf.uint8)), axis=-1), axis=-1)


def looks_like_complete_image(data):
    """Check encoded image bytes, elementwise over a string tensor of any shape: a known signature, and for JPEG
    and PNG the end marker within the last 32 bytes (files with a few trailing bytes pass). Catches empty,
    truncated and non-image files; GIF, BMP, WebP and JPEG XL are accepted by signature only."""
    head = _bytes_at(data, 0, 4)
    head_2, head_3 = tf.strings.substr(head, 0, 2), tf.strings.substr(head, 0, 3)
    is_jpeg = tf.equal(head_3, b"\xff\xd8\xff")
    is_png = tf.equal(head, b"\x89PNG")
    known_other = (
        tf.equal(head, b"GIF8")
        | tf.equal(head_2, b"BM")
        | tf.equal(head, b"RIFF")
        | tf.equal(head_2, b"\xff\x0a")
        | tf.equal(head, b"\x00\x00\x00\x0c")
    )
    return (is_jpeg & _tail_contains(data, b"\xff\xd9")) | (is_png & _tail_contains(data, b"IEND")) | known_other


def _is_frame_marker(marker):
    """Whether JPEG marker bytes (int32) start a frame header: SOF0–SOF15 (C0–CF) except DHT, JPG and DAC."""
    return (marker >= 0xC0) & (marker <= 0xCF) & (marker != 0xC4) & (marker != 0xC8) & (marker != 0xCC)


def jpeg_sizes(encoded, max_segments=JPEG_SEGMENTS_SEARCHED):
    """`(height, width)` int32 (B, 2) of each JPEG in the string tensor `encoded` (B,), read from its frame
    header by walking the marker segments from the start of the file (vectorised over the batch, without decoding).
    `(0, 0)` where no frame header is found within `max_segments` segments: not a JPEG, truncated, or unusual."""
    lengths = tf.strings.length(encoded)

    def step(index, pos, sizes, searching):
        fields = tf.io.decode_raw(_bytes_at(encoded, pos, 9), tf.uint8, fixed_length=9)
        fields = tf.cast(fields, tf.int32)  # FF, marker, length (2 bytes), precision, height (2), width (2)
        at_marker = searching & tf.equal(fields[:, 0], 0xFF)
        is_fill = at_marker & tf.equal(fields[:, 1], 0xFF)
        is_frame = at_marker & _is_frame_marker(fields[:, 1])
        frame_size = tf.stack([fields[:, 5] * 256 + fields[:, 6], fields[:, 7] * 256 + fields[:, 8]], axis=1)
        sizes = tf.where(is_frame[:, None], frame_size, sizes)
        advance = tf.where(is_fill, 1, 2 + fields[:, 2] * 256 + fields[:, 3])
        pos = tf.where(at_marker & ~is_frame, tf.minimum(pos + advance, lengths), pos)
        return index + 1, pos, sizes, at_marker & ~is_frame

    start = (0, tf.minimum(2, lengths), tf.zeros([tf.size(encoded), 2], tf.int32), tf.ones_like(lengths, tf.bool))
    _, _, sizes, _ = tf.while_loop(
        lambda index, pos, sizes, searching: (index < max_segments) & tf.reduce_any(searching), step, start
    )
    return sizes


def decode_image(data, img_shape):
    """Encoded bytes (any format `tf.io.decode_image` reads) → uint8 HxWx3, resized to `img_shape`."""
    return _to_shape(tf.io.decode_image(data, channels=3, expand_animations=False), img_shape)


def _to_shape(image, img_shape):
    """Resize a uint8 HxWx3 image (bilinear, rounded) to `img_shape` only if its size differs."""
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], img_shape))
    resized = lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, img_shape)), 0, 255), tf.uint8)  # noqa: E731
    image = tf.cond(same_size, lambda: image, resized)
    return tf.ensure_shape(image, (*img_shape, 3))


def tf_imread(file_path, img_shape=None):
    """Read and decode one image file to float32 0..255 (resized to `img_shape` when given)."""
    data = tf.io.read_file(file_path)
    if img_shape is None:
        return tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    return tf.cast(decode_image(data, img_shape), tf.float32)


def _drop_unreadable(fields, readable, names):
    """Leave the unreadable images out of a batch: `fields` (each (B, ...)) keep the rows where `readable` is
    true. The `names` (B,) of the others are reported on stderr and counted."""
    bad = tf.boolean_mask(names, tf.logical_not(readable))
    tf.print(
        "data: skipping unreadable image(s) (truncated, empty or not an image):",
        tf.strings.reduce_join(bad, separator=", "),
        output_stream=sys.stderr,
    )
    with tf.control_dependencies([_skip_counter().assign_add(tf.size(bad, tf.int64))]):
        return tuple(tf.boolean_mask(field, readable) for field in fields)


# ----------------------------------------------------------------------------------------------------------------
# Augmentation


def _per_sample(batch_size, low, high, dtype=tf.float32):
    """One uniform draw in [low, high) per sample, shaped (B, 1, 1, 1) to broadcast over images."""
    return tf.random.uniform([batch_size, 1, 1, 1], low, high, dtype=dtype)


def random_cutout_mask(images, image_shape, probability=0.3, replace=128.0):
    """Per image, with `probability`: keep the top `h ~ U[int(0.55·H), int(0.7·H))` rows, fill the rest with
    `replace` (a face mask over the bottom of the face). `images`: (B, H, W, C) batch or one (H, W, C) image."""
    if images.shape.rank == 3:
        return random_cutout_mask(images[None], image_shape, probability, replace)[0]
    batch_size, height = tf.shape(images)[0], image_shape[0]
    keep_rows = _per_sample(batch_size, int(0.55 * height), int(0.7 * height), tf.int32)
    rows = tf.reshape(tf.range(tf.shape(images)[1]), [1, -1, 1, 1])
    masked = tf.cast((rows >= keep_rows) & (_per_sample(batch_size, 0.0, 1.0) < probability), images.dtype)
    return images * (1 - masked) + tf.cast(replace, images.dtype) * masked


def random_flip_left_right(image):
    """Mirror one HxWxC image with probability 1/2."""
    return tf.cond(tf.random.uniform([]) < 0.5, lambda: tf.reverse(image, [1]), lambda: image)


def random_brightness(images, max_delta):
    """Add one uniform value in [−max_delta, max_delta) per image (pixel units)."""
    return images + _per_sample(tf.shape(images)[0], -max_delta, max_delta)


def random_contrast(images, lower, upper):
    """Scale each image's deviation from its per-channel mean by a factor in [lower, upper) (tf.image rule)."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * _per_sample(tf.shape(images)[0], lower, upper) + mean


def adjust_saturation(images, factor):
    """`tf.image.adjust_saturation` without the HSV round trip: scale each pixel's HSV saturation `s` by `factor`
    (broadcast against `images` (..., H, W, 3)), clipped to [0, 1], keeping hue and value `v` (the channel maximum).
    With hue and value fixed every channel `c` moves along `v − c`: `c' = v − (v − c) · min(factor, 1 / s)`, where
    `1 / s = v / (v − min channel)`; pixels with `v <= 0` become grey `v`, as in the HSV formulas."""
    value = tf.reduce_max(images, axis=-1, keepdims=True)
    spread = value - tf.reduce_min(images, axis=-1, keepdims=True)
    scale = tf.where(value > 0, tf.minimum(factor, tf.math.divide_no_nan(value, spread)), 0.0)
    return value - (value - images) * scale


def random_saturation(images, lower, upper):
    """Scale each image's HSV saturation by a factor in [lower, upper), clipped to [0, 1] (tf.image rule)."""
    return adjust_saturation(images, _per_sample(tf.shape(images)[0], lower, upper))


def random_crop_resize(images, crop_shape, img_shape):
    """Crop a random `crop_shape` window from each image and resize it (bilinear) back to `img_shape`."""
    batch_size = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    crop_height, crop_width = crop_shape[0], crop_shape[1]
    top = tf.random.uniform([batch_size], 0, height - crop_height + 1, dtype=tf.int32)
    left = tf.random.uniform([batch_size], 0, width - crop_width + 1, dtype=tf.int32)
    top, left = tf.cast(top, tf.float32), tf.cast(left, tf.float32)
    boxes = tf.stack(
        [
            top / (height - 1),
            left / (width - 1),
            (top + crop_height - 1) / (height - 1),
            (left + crop_width - 1) / (width - 1),
        ],
        axis=1,
    )
    return tf.image.crop_and_resize(images, boxes, tf.range(batch_size), img_shape)


class RandomProcessImage:
    """Training augmentation selected by `random_status` (images float32 0..255).

    - `-1`: none; `0`: random left-right flip; `1`: also brightness (max delta 12.75·s pixel values);
      `2`: also contrast and saturation in [1 − 0.1·s, 1 + 0.1·s]; `3`: also a random crop to `random_crop`,
      resized back to `img_shape`. Higher values below 100 strengthen the same ops. From 1 on, values are clipped
      to 0..255.
    - `>= 100`: random flip and RandAugment (2 layers, magnitude `5·s/100`, cutout 40, translate 100) over
      AutoContrast, Equalize, Color, Contrast, Brightness, Sharpness and Cutout.
    - `random_cutout_mask_area > 0`: with that probability the bottom of the image is filled with grey 128
      (`random_cutout_mask`), at every `random_status`, including −1.

    Every draw is independent per image. The pipeline runs flip and RandAugment per image (`process_image`, in
    the decode loop) and the rest on whole batches (`process_batch`, vectorised); `process(image)` does both.
    """

    def __init__(self, img_shape=(112, 112), random_status=2, random_crop=None, random_cutout_mask_area=0):
        self.img_shape = tuple(img_shape[:2])
        self.random_status = random_status
        self.random_crop = random_crop
        self.random_cutout_mask_area = random_cutout_mask_area
        self.randaug = None
        if random_status >= 100:
            self.randaug = RandAugment(
                num_layers=2, magnitude=5 * random_status / 100, cutout_const=40, translate_const=100
            )
            self.randaug.available_ops = list(RANDAUGMENT_OPS)

    def process_image(self, image):
        """The per-image part: random flip (`random_status >= 0`) and RandAugment (`>= 100`); keeps the dtype."""
        if self.random_status >= 0:
            image = random_flip_left_right(image)
        return image if self.randaug is None else self.randaug.distort(image)

    @property
    def has_batch_part(self):
        """Whether `process_batch` changes anything: levels 1 to 99, or the cutout mask."""
        return 1 <= self.random_status < 100 or self.random_cutout_mask_area > 0

    def process_batch(self, images):
        """The batch part on a float32 (B, H, W, 3) batch: brightness, contrast, saturation, crop, clip, mask."""
        level = self.random_status
        if 1 <= level < 100:
            images = random_brightness(images, 12.75 * level)
        if 2 <= level < 100:
            lower, upper = max(0.0, 1 - 0.1 * level), 1 + 0.1 * level
            images = random_saturation(random_contrast(images, lower, upper), lower, upper)
        if 3 <= level < 100 and self.random_crop is not None:
            images = random_crop_resize(images, self.random_crop, self.img_shape)
        if 1 <= level < 100:
            images = tf.clip_by_value(images, 0.0, 255.0)
        if self.random_cutout_mask_area > 0:
            images = random_cutout_mask(images, self.img_shape, self.random_cutout_mask_area)
        return images

    def process(self, image):
        """Augment one HxWx3 image (values 0..255); returns float32."""
        image = tf.cast(self.process_image(image), tf.float32)
        return self.process_batch(image[None])[0]


def normalize(images):
    """`(x − 127.5) · 0.0078125`: 0..255 → about [−0.996, 0.996]."""
    return (tf.cast(images, tf.float32) - NORMALIZE_MEAN) * NORMALIZE_SCALE


def normalize_uint8(images):
    """`normalize` of uint8 images in one op (a quint8 dequantisation over [−0.99609375, 0.99609375], whose step is
    exactly 0.0078125): bitwise equal to `normalize`, and cheaper on the hot path of the readers."""
    return tf.quantization.dequantize(tf.bitcast(images, tf.quint8), -0.99609375, 0.99609375, mode="MIN_COMBINED")


def sample_beta_distribution(size, concentration_0=0.4, concentration_1=0.4):
    """`size` draws of Beta(concentration_1, concentration_0), through two Gamma draws."""
    gamma_1 = tf.random.gamma([size], concentration_1)
    gamma_0 = tf.random.gamma([size], concentration_0)
    return gamma_1 / (gamma_1 + gamma_0)


def mixup(image, label, alpha=0.4):
    """Mix every sample of the batch with a random other one: weight λ ~ Beta(α, α) per sample, λ = max(λ, 1 − λ),
    and λ > 0.9 counts as 1 (no mix). `image` (B,H,W,C) and one-hot `label` (B,classes) are mixed alike."""
    batch_size = tf.shape(image)[0]
    weight = sample_beta_distribution(batch_size, alpha, alpha)
    weight = tf.maximum(weight, 1.0 - weight)
    weight = tf.where(weight > 0.9, tf.ones_like(weight), weight)
    partner = tf.random.shuffle(tf.range(batch_size))
    image_weight = tf.reshape(tf.cast(weight, image.dtype), [-1, 1, 1, 1])
    image = image * image_weight + tf.gather(image, partner) * (1 - image_weight)
    label = tf.cast(label, tf.float32)
    label_weight = weight[:, None]
    label = label * label_weight + tf.gather(label, partner) * (1 - label_weight)
    return image, label


# ----------------------------------------------------------------------------------------------------------------
# Pipeline pieces


def _with_options(ds, deterministic):
    """Prefetch, and set the pipeline's determinism (training runs may deliver parallel results out of order)."""
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.prefetch(AUTOTUNE).with_options(options)


def _read_batches(ds, img_shape, augmenter=None, records_of=None, finish=None):
    """Batches `(sources (B,), labels (B,), *extra)` → `(uint8 images (b, H, W, 3), labels (b,), *extra)`, b ≤ B,
    or what `finish` (`_batch_finisher`) makes of those, computed in the same map call.

    `source` is a file path, or already-encoded bytes read from the TFRecord file `records_of`. One parallel map
    call handles a whole batch, so the per-element cost of `tf.data` is paid once per batch:

    1. an in-graph loop reads the files;
    2. `looks_like_complete_image` checks all of them at once; unreadable ones are replaced by a blank JPEG;
    3. `jpeg_sizes` reads the frame headers of all of them at once; when every image is a JPEG of `img_shape`, a
       loop decodes (and augments, `augmenter.process_image`) each one with nothing else, otherwise the loop also
       resizes the images of another size (`decode_image`).

    The loops hold only the per-image work: the same checks run image by image cost several times more. An image
    that fails the check is reported on stderr, counted and left out of its batch (with its label and extra
    fields); a batch holding a file that passes the check but still fails to decode is dropped whole by
    `ignore_errors`, with TensorFlow's warning.
    """
    image_spec = tf.TensorSpec((*img_shape, 3), tf.uint8)

    def in_loop(fn, elems, signature=image_spec):
        return tf.map_fn(fn, elems, fn_output_signature=signature, parallel_iterations=IMAGES_DECODED_IN_PARALLEL)

    def augmented(image):
        return image if augmenter is None else augmenter.process_image(image)

    def decode_known_size(data):
        return augmented(tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), image_spec.shape))

    def decode_any(data):
        return augmented(decode_image(data, img_shape))

    def decode_all(encoded):
        decode = lambda: in_loop(decode_known_size, encoded)  # noqa: E731
        decode_and_resize = lambda: in_loop(decode_any, encoded)  # noqa: E731
        return tf.cond(tf.reduce_all(tf.equal(jpeg_sizes(encoded), img_shape)), decode, decode_and_resize)

    def names_of(sources, encoded):
        if records_of is None:
            return sources
        sizes = tf.strings.as_string(tf.strings.length(encoded))
        return tf.strings.join([records_of, ": a record of ", sizes, " bytes"])

    def load_batch(sources, *fields):
        encoded = sources if records_of is not None else in_loop(tf.io.read_file, sources, tf.string)
        readable = looks_like_complete_image(encoded)
        all_readable = tf.reduce_all(readable)

        def blanked():
            return tf.where(readable, encoded, tf.io.encode_jpeg(tf.zeros(image_spec.shape, tf.uint8)))

        def without_unreadable():
            return _drop_unreadable(fields, readable, names_of(sources, encoded))

        fields = (decode_all(tf.cond(all_readable, lambda: encoded, blanked)), *fields)
        fields = tf.cond(all_readable, lambda: fields, without_unreadable)
        return fields if finish is None else finish(*fields)

    return ds.map(load_batch, num_parallel_calls=AUTOTUNE).ignore_errors(log_warning=True)


def _augment_each_image(ds, augmenter, finish):
    """Batches `(images, *fields)` → `finish(augmented images, *fields)`, `augmenter.process_image` applied to
    every image (per-image draws)."""

    def augment(images, *fields):
        return finish(tf.map_fn(augmenter.process_image, images), *fields)

    return ds.map(augment, num_parallel_calls=AUTOTUNE)


def _epoch_shuffled_batches(columns, batch_size, seed=None, initial_epoch=0):
    """An endless stream of batches of the rows of `columns` (arrays of equal length): epoch after epoch, the
    `len // batch_size` whole batches of a new random permutation (a Keras epoch; the leftover rows differ every
    epoch). Each element holds one `(batch_size, ...)` slice per column.

    Each epoch draws a full permutation and gathers the rows (a true uniform shuffle, cheaper than a shuffle
    buffer). With an integer `seed`, the permutation of epoch `e` is a stateless function of `(seed, e)`, and the
    stream starts at epoch `initial_epoch`: a run resumed at epoch `e` reads exactly the images an uninterrupted
    run reads from epoch `e` on.
    """
    columns = tuple(tf.constant(column) for column in columns)
    count = int(columns[0].shape[0])
    steps = count // batch_size

    def one_epoch(epoch):
        indices = tf.range(count, dtype=tf.int64)
        if seed is None:
            order = tf.random.shuffle(indices)
        else:
            epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
            order = tf.random.experimental.stateless_shuffle(indices, seed=epoch_seed)
        order = tf.reshape(order[: steps * batch_size], (steps, batch_size))
        return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(column, order) for column in columns))

    return tf.data.Dataset.counter(initial_epoch, dtype=tf.int64).flat_map(one_epoch)


def _steps(images, batch_size, is_train):
    """Batches per epoch: whole batches for training, every image (the last batch partial) otherwise."""
    return images // batch_size if is_train else -(-images // batch_size)


def _encode_labels(labels, classes, sparse_label):
    """Class ids → one-hot float32 of depth `classes`, or int32 ids when `sparse_label`."""
    if sparse_label:
        return tf.cast(labels, tf.int32)
    return tf.one_hot(labels, depth=classes, dtype=tf.float32)


def _batch_finisher(
    classes, augmenter=None, sparse_label=False, mixup_alpha=0, teacher_model_interf=None, with_embeddings=False
):
    """The function batch `(uint8 images, class ids[, embeddings])` → augmented (`augmenter.process_batch`) and
    normalised float32 images with the training targets. Without a batch augmentation, normalisation is one op
    over the uint8 batch (`normalize_uint8`).

    Targets: one-hot (or sparse) labels; mixed up when `0 < mixup_alpha <= 1`; `(embeddings, labels)` for
    distillation data; with a teacher, its output on the normalised images replaces the labels when its width
    equals `classes` (soft-label mode) and otherwise becomes `(teacher embeddings, labels)`.
    """
    if mixup_alpha > 0 and sparse_label:
        raise ValueError("mixup needs one-hot labels; use sparse_label=False")

    def finish(images, labels, *embeddings):
        if augmenter is None or not augmenter.has_batch_part:
            images = normalize_uint8(images)
        else:
            images = normalize(augmenter.process_batch(tf.cast(images, tf.float32)))
        labels = _encode_labels(labels, classes, sparse_label)
        if 0 < mixup_alpha <= 1:
            images, labels = mixup(images, labels, mixup_alpha)
        if with_embeddings:
            return images, (embeddings[0], labels)
        if teacher_model_interf is not None:
            teacher_output = teacher_model_interf(images)
            if teacher_output.shape[-1] == classes:
                return images, teacher_output
            return images, (teacher_output, labels)
        return images, labels

    return finish


def _generator_batches(make_pass, batch_size):
    """An infinite `tf.data` source of `(paths (B,), labels (B,))` batches from `make_pass()`, called once per
    pass; `make_pass` returns `(paths, labels)` arrays already in batch order, a whole number of batches long."""

    def generate():
        while True:
            paths, labels = make_pass()
            yield from zip(paths, labels, strict=True)

    signature = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).batch(batch_size, drop_remainder=True)


# ----------------------------------------------------------------------------------------------------------------
# TFRecord datasets


def _int64_feature(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(np.ravel(values))))


def _bytes_feature(value):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def write_tfrecord_from_folder(data_path, output_path, cache_dir=None, class_order="natural"):
    """Write every image of a class-per-folder dataset to one TFRecord file.

    Each `tf.train.Example` holds `image` (the encoded bytes exactly as stored on disk) and `label` (int64); the
    first also holds `classes` and `total` (int64). Returns `(output_path, total, classes)`.
    """
    from tqdm import tqdm

    names, labels, _, classes, _ = pre_process_folder(data_path, cache_dir=cache_dir, class_order=class_order)
    with tf.io.TFRecordWriter(os.fspath(output_path)) as writer:
        for index, (name, label) in enumerate(tqdm(list(zip(names, labels, strict=True)), desc="write tfrecord")):
            with open(name, "rb") as file:
                feature = {"image": _bytes_feature(file.read()), "label": _int64_feature(label)}
            if index == 0:
                feature.update(classes=_int64_feature(classes), total=_int64_feature(len(names)))
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return output_path, len(names), classes


def tfrecord_files(path):
    """The files of a TFRecord path: the path itself, or the sorted matches of a glob pattern such as
    `faces-*-of-00004.tfrecord` (sharded files); an error naming the pattern when nothing matches."""
    path = os.fspath(path)
    if not glob.has_magic(path):
        return [path]
    files = sorted(glob.glob(path))
    if not files:
        raise FileNotFoundError(f"{path}: no TFRecord file matches this pattern")
    return files


def _first_example(path):
    """The first `tf.train.Example` of a TFRecord file (of the first file of a pattern; eagerly parsed)."""
    first_file = tfrecord_files(path)[0]
    for record in tf.data.TFRecordDataset(first_file).take(1):
        return tf.train.Example.FromString(record.numpy())
    raise ValueError(f"{first_file}: empty TFRecord file")


def read_tfrecord_dataset(path):
    """Open a TFRecord of (image, label) written by `write_tfrecord_from_folder` (or shards of one: a glob
    pattern; each shard's first record holds its own `total`).

    Returns `(dataset of (encoded image bytes, int64 label), total, classes)`.
    """
    total, classes = 0, 0
    for file in tfrecord_files(path):
        features = _first_example(file).features.feature
        if "image" not in features or "classes" not in features:
            raise ValueError(f"{file}: not an (image, label) TFRecord (first record lacks 'image' / 'classes')")
        total += features["total"].int64_list.value[0]
        classes = max(classes, features["classes"].int64_list.value[0])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    parse = lambda record: tuple(tf.io.parse_single_example(record, spec).values())  # noqa: E731
    records = tf.data.TFRecordDataset(tfrecord_files(path), num_parallel_reads=AUTOTUNE)
    return records.map(parse, num_parallel_calls=AUTOTUNE), int(total), int(classes)


def write_distill_tfrecord(output_path, image_names, image_classes, embeddings, use_fp16=False):
    """Write teacher embeddings in the distillation TFRecord layout of the original `data_distiller.py`.

    Every Example holds `image_names` (path bytes), `image_classes` (int64) and `embeddings` (raw float16 or
    float32 bytes); the first also `classes`, `emb_shape`, `total` and `use_fp16` (int64).
    """
    embeddings = np.asarray(embeddings, dtype=np.float16 if use_fp16 else np.float32)
    classes = int(np.max(image_classes)) + 1
    with tf.io.TFRecordWriter(os.fspath(output_path)) as writer:
        for index, (name, label, embedding) in enumerate(zip(image_names, image_classes, embeddings, strict=True)):
            feature = {
                "image_names": _bytes_feature(os.fspath(name).encode()),
                "image_classes": _int64_feature(label),
                "embeddings": _bytes_feature(embedding.tobytes()),
            }
            if index == 0:
                feature.update(
                    classes=_int64_feature(classes),
                    emb_shape=_int64_feature(embeddings.shape[-1]),
                    total=_int64_feature(len(embeddings)),
                    use_fp16=_int64_feature(int(use_fp16)),
                )
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return output_path


def prepare_distill_dataset_tfrecord(
    data_path,
    batch_size=128,
    img_shape=(112, 112),
    random_status=2,
    random_crop=(100, 100, 3),
    random_cutout_mask_area=0.0,
    sparse_label=False,
    shuffle_buffer_size=None,
    **kw,
):
    """Distillation dataset from a TFRecord of (image path, class, teacher embedding).

    Yields `(images, (embeddings, labels))`, repeating forever; returns `(dataset, steps_per_epoch)` with
    `steps_per_epoch = total // batch_size`.
    """
    features = _first_example(data_path).features.feature
    classes, emb_shape = features["classes"].int64_list.value[0], features["emb_shape"].int64_list.value[0]
    total, use_fp16 = features["total"].int64_list.value[0], features["use_fp16"].int64_list.value[0]
    spec = {
        "image_names": tf.io.FixedLenFeature([], tf.string),
        "image_classes": tf.io.FixedLenFeature([], tf.int64),
        "embeddings": tf.io.FixedLenFeature([], tf.string),
    }

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        embedding = tf.io.decode_raw(example["embeddings"], tf.float16 if use_fp16 else tf.float32)
        embedding = tf.reshape(tf.cast(embedding, tf.float32), [emb_shape])
        return example["image_names"], example["image_classes"], embedding

    ds = tf.data.TFRecordDataset(os.fspath(data_path)).map(parse, num_parallel_calls=AUTOTUNE)
    ds = ds.shuffle(shuffle_buffer_size or batch_size * 1000).repeat()
    augmenter = RandomProcessImage(img_shape, random_status, random_crop, random_cutout_mask_area)
    finish = _batch_finisher(int(classes), augmenter, sparse_label, with_embeddings=True)
    ds = _read_batches(ds.batch(batch_size, drop_remainder=True), tuple(img_shape[:2]), augmenter, finish=finish)
    return _with_options(ds, deterministic=False), int(total) // batch_size


# ----------------------------------------------------------------------------------------------------------------
# Partial FC


def partial_fc_split_pick(image_names, image_classes, batch_size, split=2, debug=False, rng=None):
    """Order images so that consecutive batches come from alternating class shards.

    Shard i holds classes `[classes//split·i, classes//split·(i+1))` (top leftover classes are dropped). Each
    shard is shuffled and cut into whole batches, all shards are truncated to the smallest batch count, and the
    batches are interleaved shard 0, 1, ..., split−1, 0, 1, ... Returns `(image_names, image_classes)`.
    """
    rng = rng or np.random.default_rng()
    image_names, image_classes = np.asarray(image_names), np.asarray(image_classes)
    sub_classes = (int(image_classes.max()) + 1) // split
    shards = []
    for shard in range(split):
        members = np.flatnonzero((image_classes >= sub_classes * shard) & (image_classes < sub_classes * (shard + 1)))
        shards.append(rng.permutation(members))
    num_batches = min(len(members) // batch_size for members in shards)
    if debug:
        print(f">>>> partial FC: shard sizes {[len(m) for m in shards]}, {num_batches} batches per shard")
    order = np.stack([members[: num_batches * batch_size].reshape(num_batches, batch_size) for members in shards], 1)
    order = order.reshape(-1)
    return image_names[order], image_classes[order]


# ----------------------------------------------------------------------------------------------------------------
# Datasets


def prepare_dataset(
    data_path,
    image_names_reg=None,
    image_classes_rule=None,
    batch_size=128,
    img_shape=(112, 112),
    random_status=0,
    random_crop=(100, 100, 3),
    random_cutout_mask_area=0.0,
    mixup_alpha=0,
    image_per_class=0,
    partial_fc_split=0,
    cache=False,
    shuffle_buffer_size=None,
    is_train=True,
    teacher_model_interf=None,
    cache_dir=None,
    sparse_label=False,
    class_order="natural",
    seed=None,
    initial_epoch=0,
):
    """The training (or evaluation) dataset of a class-per-folder directory, image-list `.npz` or TFRecord.

    Streams from disk: shuffle the file list, read and decode in parallel, augment (`RandomProcessImage`, training
    only), batch (whole batches only), normalise, build targets, prefetch. Arguments as in the original:

    - `batch_size`; `img_shape` (H, W) of the output images (other sizes are resized);
    - `random_status`, `random_crop`, `random_cutout_mask_area`: augmentation, see `RandomProcessImage`;
    - `mixup_alpha` in (0, 1]: mixup (`mixup`); `image_per_class > 0`: keep only classes with at least that
      many images (class ids unchanged);
    - `partial_fc_split > 1`: batches alternate between that many class shards, labels are
      `one_hot(label % (classes // split))` (`partial_fc_split_pick`);
    - `cache`: True caches decoded images in memory, a string caches them in that file (then shuffling uses a
      buffer of `shuffle_buffer_size`, default 10,000 images); `shuffle_buffer_size`: by default every epoch is
      a full random permutation of the list; a number uses a `tf.data` shuffle buffer of that size instead;
    - `is_train=False`: no shuffling, augmentation, repetition or mixup (for embedding a dataset in order);
    - `teacher_model_interf`: a callable on normalised image batches; see `_batch_finisher`;
    - `.npz` data with `embeddings` yields `(images, (embeddings, labels))` for embedding distillation; a
      distillation `.tfrecord` is handed to `prepare_distill_dataset_tfrecord`;
    - additions: `cache_dir` for the scan cache, `sparse_label` for int labels, `class_order` (see module doc);
      `seed` (int) makes the image order of every epoch a function of `(seed, epoch)` and the batches
      deterministic, and `initial_epoch` starts the stream at that epoch (exact resume, see `train.Train`).

    Returns `(dataset, steps_per_epoch)`; a training dataset repeats forever and `steps_per_epoch = images //
    batch_size`; with `is_train=False` every image comes once, the last batch may be smaller, and steps is
    `ceil(images / batch_size)`. Returns `(None, None)` when there are no images.
    """
    img_shape = tuple(img_shape[:2])
    data_path = os.fspath(data_path)
    augmenter = RandomProcessImage(img_shape, random_status, random_crop, random_cutout_mask_area) if is_train else None
    mixup_alpha = mixup_alpha if is_train else 0
    if data_path.endswith(".tfrecord"):
        if "image_names" in _first_example(data_path).features.feature:
            return prepare_distill_dataset_tfrecord(
                data_path,
                batch_size,
                img_shape,
                random_status,
                random_crop,
                random_cutout_mask_area,
                sparse_label,
                shuffle_buffer_size,
            )
        source, total, classes = read_tfrecord_dataset(data_path)
        if is_train:
            source = source.shuffle(shuffle_buffer_size or min(total, 10000)).repeat()
        finish = _batch_finisher(classes, augmenter, sparse_label, mixup_alpha, teacher_model_interf)
        ds = _read_batches(source.batch(batch_size, drop_remainder=is_train), img_shape, augmenter, data_path, finish)
        return _with_options(ds, deterministic=not is_train), _steps(total, batch_size, is_train)

    names, labels, embeddings, classes, _ = pre_process_folder(
        data_path, image_names_reg, image_classes_rule, cache_dir, class_order
    )
    if len(names) == 0:
        return None, None
    if image_per_class > 0:
        keep, _ = pick_by_image_per_class(labels, image_per_class)
        names, labels = names[keep], labels[keep]
        embeddings = embeddings[keep] if embeddings is not None else None
    if len(names) < batch_size:
        raise ValueError(f"{data_path}: {len(names)} images, fewer than one batch of {batch_size}")

    if partial_fc_split > 1 and is_train:
        sub_classes = classes // partial_fc_split
        picked, _ = partial_fc_split_pick(names, labels, batch_size, partial_fc_split)

        def make_pass():
            pass_names, pass_labels = partial_fc_split_pick(names, labels, batch_size, partial_fc_split)
            return pass_names, pass_labels % sub_classes

        finish = _batch_finisher(sub_classes, augmenter, sparse_label, mixup_alpha, teacher_model_interf)
        ds = _read_batches(_generator_batches(make_pass, batch_size), img_shape, augmenter, finish=finish)
        return _with_options(ds, deterministic=True), len(picked) // batch_size  # the head follows the shard order

    use_embeddings = embeddings is not None and teacher_model_interf is None
    columns = (names, labels, embeddings.astype(np.float32)) if use_embeddings else (names, labels)
    finish = _batch_finisher(classes, augmenter, sparse_label, mixup_alpha, teacher_model_interf, use_embeddings)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if cache:
        ds = _read_batches(ds.batch(batch_size), img_shape).unbatch().cache("" if cache is True else os.fspath(cache))
        if is_train:
            ds = ds.shuffle(shuffle_buffer_size or 10000).repeat()
        ds = ds.batch(batch_size, drop_remainder=is_train)
        ds = _augment_each_image(ds, augmenter, finish) if is_train else ds.map(finish, num_parallel_calls=AUTOTUNE)
    elif is_train and not shuffle_buffer_size:
        source = _epoch_shuffled_batches(columns, batch_size, seed, initial_epoch)
        ds = _read_batches(source, img_shape, augmenter, finish=finish)
    else:
        if is_train:
            ds = ds.shuffle(shuffle_buffer_size, reshuffle_each_iteration=True).repeat()
        ds = _read_batches(ds.batch(batch_size, drop_remainder=is_train), img_shape, augmenter, finish=finish)
    return _with_options(ds, deterministic=not is_train or seed is not None), _steps(len(names), batch_size, is_train)


def triplet_batch_order(image_classes, batch_size, image_per_class, rng):
    """Image indices for one pass of triplet batches: each batch holds `batch_size // image_per_class` distinct
    classes with exactly `image_per_class` images each.

    Every class is shuffled and cut into groups of `image_per_class` (the remainder is left out this pass); the
    groups are shuffled and packed into batches without repeating a class within a batch. Returns an
    `(num_batches, groups_per_batch * image_per_class)` int array.
    """
    groups_per_batch = batch_size // image_per_class
    groups = []
    for cls in np.unique(image_classes):
        members = rng.permutation(np.flatnonzero(image_classes == cls))
        usable = len(members) // image_per_class * image_per_class
        groups.extend((cls, group) for group in members[:usable].reshape(-1, image_per_class))
    order = rng.permutation(len(groups))
    batches, batch, seen, deferred = [], [], set(), []
    for cls, group in (groups[i] for i in order):
        if cls in seen:
            deferred.append((cls, group))
            continue
        batch.append(group)
        seen.add(cls)
        while len(batch) == groups_per_batch:
            batches.append(np.concatenate(batch))
            batch, seen, still_deferred = [], set(), []
            for deferred_cls, deferred_group in deferred:
                if deferred_cls in seen or len(batch) == groups_per_batch:
                    still_deferred.append((deferred_cls, deferred_group))
                else:
                    batch.append(deferred_group)
                    seen.add(deferred_cls)
            deferred = still_deferred
    return np.array(batches, dtype=np.int64).reshape(len(batches), groups_per_batch * image_per_class)


def Triplet_dataset(
    data_path,
    image_names_reg=None,
    image_classes_rule=None,
    batch_size=48,
    image_per_class=4,
    img_shape=(112, 112, 3),
    random_status=3,
    random_crop=(100, 100, 3),
    teacher_model_interf=None,
    cache_dir=None,
    sparse_label=False,
    class_order="natural",
    **kw,
):
    """Dataset for batch-hard triplet losses: every batch holds K = `max(4, image_per_class)` images of each of
    `batch_size // K` different classes (classes with fewer than K images are dropped).

    Decoding and augmentation run in parallel; groups are re-drawn on every pass. A teacher receives the same
    normalised images as the student. Returns `(dataset, steps_per_epoch)`, steps = complete batches per pass.
    """
    img_shape = tuple(img_shape[:2])
    image_per_class = max(4, image_per_class)
    names, labels, _, classes, _ = pre_process_folder(
        data_path, image_names_reg, image_classes_rule, cache_dir, class_order
    )
    keep, _ = pick_by_image_per_class(labels, image_per_class)
    names, labels = names[keep], labels[keep]
    batch_size = batch_size // image_per_class * image_per_class
    rng = np.random.default_rng()
    steps = len(triplet_batch_order(labels, batch_size, image_per_class, rng))
    if steps == 0:
        raise ValueError(
            f"{data_path}: a triplet batch needs {batch_size // image_per_class} classes with at least "
            f"{image_per_class} images each; only {len(np.unique(labels))} such classes exist"
        )

    def make_pass():
        order = triplet_batch_order(labels, batch_size, image_per_class, rng)
        return names[order.ravel()], labels[order.ravel()]

    augmenter = RandomProcessImage(img_shape, random_status, random_crop)
    finish = _batch_finisher(classes, augmenter, sparse_label, teacher_model_interf=teacher_model_interf)
    ds = _read_batches(_generator_batches(make_pass, batch_size), img_shape, augmenter, finish=finish)
    return _with_options(ds, deterministic=False), steps


def show_batch_sample(ds, rows=8, basic_size=1, save_path="batch_sample.png"):
    """Save a grid of the first batch's images (normalised to [−1, 1]) to `save_path` with matplotlib."""
    import matplotlib.pyplot as plt

    images = next(iter(ds))[0].numpy()
    columns = int(np.ceil(len(images) / rows))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * basic_size, rows * basic_size), squeeze=False)
    for axis, index in zip(axes.ravel(), range(rows * columns), strict=True):
        if index < len(images):
            axis.imshow(np.clip(images[index] / 2 + 0.5, 0, 1))
        axis.axis("off")
    figure.savefig(save_path, bbox_inches="tight")
    plt.close(figure)
    return save_path
