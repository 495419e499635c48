"""Image bytes → checked, decoded uint8 images, one file or whole batches inside `tf.data`.

Unreadable images: each file is checked when it is read (non-empty, a known image signature, and for JPEG/PNG the
end-of-image marker present, which catches truncated files). In the batch reader (`read_image_batches`) a file
that fails is left out of its batch (one image shorter), logged as a warning with its path and counted by a
`SkippedImages` object. A file that passes the check but still fails to decode (a JPEG damaged in the middle)
makes its batch fall back to decoding image by image, which names, counts and leaves out only that file. A batch
left with no image is skipped (counted in `SkippedImages.batches`): a training epoch goes on with the next one.

Random augmentation draws come from stateless ops seeded per batch (`seeds.batch_seed` of the reader's seed and
the batch's index) and per image, so a seeded reader yields the same batches on every run.

This module knows nothing of training: augmentation and targets are passed in as callables.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import logging
import threading

import numpy as np
import tensorflow as tf

from seeds import batch_seed, image_seeds, pipeline_seed

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE
JPEG_SEGMENTS_SEARCHED = 32  # marker segments `jpeg_sizes` walks before giving up (then images are decoded and resized)
IMAGES_DECODED_IN_PARALLEL = 8  # per batch, inside one map call (`read_image_batches`); batches also run in parallel


# ----------------------------------------------------------------------------------------------------------------
# Skipped images


UNREADABLE = "truncated, empty or not an image"  # why `looks_like_complete_image` rejects a file
UNDECODABLE = "corrupt: the decoder failed"  # why the image-by-image fallback leaves a file out


class SkippedImages:
    """Counts the unreadable images the batch readers leave out, and logs a warning naming each batch's files.

    Pass one to a dataset builder (`skipped_images=`) to count that dataset's skips; `count` is the number of
    skips (once per file per pass), `files` the distinct paths (or record descriptions) skipped, and `batches`
    the number of batches skipped whole because none of their images could be read.
    """

    def __init__(self):
        self.count = 0
        self.batches = 0
        self.files = set()
        self._lock = threading.Lock()

    def record(self, names, reason=UNREADABLE):
        """Count and log the skipped `names` (a sequence of bytes or str) and why; returns the new count (int64)."""
        names = [name.decode(errors="replace") if isinstance(name, bytes) else str(name) for name in names]
        logger.warning("skipping unreadable image(s) (%s): %s", reason, ", ".join(names))
        with self._lock:
            self.count += len(names)
            self.files.update(names)
            return self.count

    def record_empty_batch(self):
        """Count and log a batch skipped whole (no readable image); returns the new batch count (int64)."""
        with self._lock:
            self.batches += 1
            batches = self.batches
        logger.warning("skipping a batch with no readable image (%d so far); the epoch goes on", batches)
        return batches

    def record_in_graph(self, names, reason=UNREADABLE):
        """`record` as a TensorFlow op on a string tensor `names` (N,); returns the new count (int64 scalar).

        The op is declared stateless so that `tf.config.experimental.enable_op_determinism` keeps the pipeline
        parallel; callers must use its result in their data flow (a control dependency on a stateless op may be
        pruned)."""
        counted = tf.numpy_function(
            lambda found: np.int64(self.record(found.tolist(), reason)), [names], tf.int64, stateful=False
        )
        return tf.reshape(counted, [])

    def record_empty_batch_in_graph(self, shape):
        """`record_empty_batch` as a TensorFlow op (declared stateless, see `record_in_graph`); int64 scalar.

        Its input, the empty batch's `shape` (a run-time value), only keeps TensorFlow from evaluating an input-less
        stateless op once, when it optimises the graph."""
        counted = tf.numpy_function(lambda _: np.int64(self.record_empty_batch()), [shape], tf.int64, stateful=False)
        return tf.reshape(counted, [])


DEFAULT_SKIPPED_IMAGES = SkippedImages()  # the counter of the readers built without their own


def skipped_image_count():
    """How many times the readers built without their own `SkippedImages` have skipped an unreadable image."""
    return DEFAULT_SKIPPED_IMAGES.count


# ----------------------------------------------------------------------------------------------------------------
# Checks on encoded bytes


def _bytes_at(data, pos, length):
    """The `length` bytes from byte `pos` of every string in `data` (fewer at the end); `pos` broadcasts."""
    return tf.strings.substr(data, tf.broadcast_to(pos, tf.shape(data)), tf.fill(tf.shape(data), length))


COMPLETENESS_HEAD_BYTES = 4  # bytes of a file's start `looks_like_complete_image` reads (its signature)
COMPLETENESS_TAIL_BYTES = 32  # bytes of a file's end it searches for the JPEG / PNG end marker


def _tail_contains(data, marker, window=COMPLETENESS_TAIL_BYTES):
    """Whether the byte string `marker` occurs in the last `window` bytes of each string in `data`."""
    tail = _bytes_at(data, tf.maximum(tf.strings.length(data) - window, 0), window)
    tail = tf.io.decode_raw(tail, tf.uint8, fixed_length=window)  # (..., window), short strings zero-padded
    size = window - len(marker) + 1
    windows = tf.stack([tail[..., i : size + i] for i in range(len(marker))], axis=-1)
    return tf.reduce_any(tf.reduce_all(tf.equal(windows, tf.constant(list(marker), tf.uint8)), axis=-1), axis=-1)


def looks_like_complete_image(data):
    """Check encoded image bytes, elementwise over a string tensor of any shape.

    A known signature, and for JPEG and PNG the end marker within the last 32 bytes (files with a few trailing
    bytes pass). Catches empty, truncated and non-image files; GIF, BMP, WebP and JPEG XL are accepted by
    signature only. Returns a bool tensor of `data`'s shape.
    """
    head = _bytes_at(data, 0, COMPLETENESS_HEAD_BYTES)
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


# ----------------------------------------------------------------------------------------------------------------
# Decoding one image


def decode_image(data, img_shape):
    """Encoded bytes (any format `tf.io.decode_image` reads) → uint8 HxWx3, resized to `img_shape` (H, W)."""
    return _to_shape(tf.io.decode_image(data, channels=3, expand_animations=False), img_shape)


def _to_shape(image, img_shape):
    """Resize a uint8 HxWx3 image (bilinear, rounded) to `img_shape` only if its size differs."""
    same_size = tf.reduce_all(tf.equal(tf.shape(image)[:2], img_shape))
    resized = lambda: tf.cast(tf.clip_by_value(tf.round(tf.image.resize(image, img_shape)), 0, 255), tf.uint8)  # noqa: E731
    image = tf.cond(same_size, lambda: image, resized)
    return tf.ensure_shape(image, (*img_shape, 3))


def tf_imread(file_path, img_shape=None):
    """Read and decode one image file to float32 HxWx3 values 0..255 (resized to `img_shape` (H, W) when given)."""
    data = tf.io.read_file(file_path)
    if img_shape is None:
        return tf.cast(tf.io.decode_image(data, channels=3, expand_animations=False), tf.float32)
    return tf.cast(decode_image(data, img_shape), tf.float32)


# ----------------------------------------------------------------------------------------------------------------
# Decoding whole batches


def _drop_unreadable(fields, readable, names, skipped_images):
    """Leave the unreadable images out of a batch: `fields` (each (B, ...)) keep the rows where `readable` is
    true. The `names` (B,) of the others are logged and counted by `skipped_images`."""
    counted = skipped_images.record_in_graph(tf.boolean_mask(names, tf.logical_not(readable)))
    readable = readable & (counted >= 0)  # always true: ties the count into the data flow
    return tuple(tf.boolean_mask(field, readable) for field in fields)


class BatchDecoder:
    """The per-batch function of `read_image_batches`: read, check, decode (and augment per image) a batch.

    Args:
        img_shape: (H, W) of the decoded images; images of another size are resized.
        augmenter: None, or an object whose `process_image(uint8 HxWx3, seed)` runs inside the decode loop.
        records_of: None when sources are file paths; the TFRecord path when sources are encoded bytes.
        finish: None, or a function `(uint8 images, *fields, seed=)` → the dataset's element (`seed`: the batch's
            (2,) seed).
        skipped_images: the `SkippedImages` that counts this reader's skips (default `DEFAULT_SKIPPED_IMAGES`).
        seed: the int from which every batch's augmentation seed is derived (`seeds.batch_seed`); None: a fresh
            one (`seeds.pipeline_seed`).
    """

    def __init__(self, img_shape, augmenter=None, records_of=None, finish=None, skipped_images=None, seed=None):
        self.img_shape = tuple(img_shape)
        self.image_spec = tf.TensorSpec((*self.img_shape, 3), tf.uint8)
        self.augmenter, self.records_of, self.finish = augmenter, records_of, finish
        self.skipped_images = skipped_images or DEFAULT_SKIPPED_IMAGES
        self.seed = pipeline_seed(seed)

    def in_loop(self, fn, elems, signature=None):
        """`fn` over the first axis of `elems` in an in-graph loop of `IMAGES_DECODED_IN_PARALLEL` iterations."""
        signature = signature or self.image_spec
        return tf.map_fn(fn, elems, fn_output_signature=signature, parallel_iterations=IMAGES_DECODED_IN_PARALLEL)

    def augmented(self, image, seed):
        """The augmenter's per-image part with the image's (2,) `seed`, if there is an augmenter."""
        return image if self.augmenter is None else self.augmenter.process_image(image, seed)

    def decode_known_size(self, data_and_seed):
        """Decode a JPEG known to be of `img_shape` (and augment it); `(bytes, (2,) seed)` in."""
        data, seed = data_and_seed
        return self.augmented(tf.ensure_shape(tf.io.decode_jpeg(data, channels=3), self.image_spec.shape), seed)

    def decode_any(self, data_and_seed):
        """Decode any image, resized to `img_shape` if needed (and augment it); `(bytes, (2,) seed)` in."""
        data, seed = data_and_seed
        return self.augmented(decode_image(data, self.img_shape), seed)

    def decode_all(self, encoded, seeds):
        """uint8 (B, H, W, 3) of the encoded images (B,) with their seeds (B, 2): the plain JPEG loop when every
        frame header says `img_shape`, else the loop that also resizes."""
        decode = lambda: self.in_loop(self.decode_known_size, (encoded, seeds))  # noqa: E731
        decode_and_resize = lambda: self.in_loop(self.decode_any, (encoded, seeds))  # noqa: E731
        return tf.cond(tf.reduce_all(tf.equal(jpeg_sizes(encoded), self.img_shape)), decode, decode_and_resize)

    def names_of(self, sources, encoded):
        """What a skip report names: the file paths, or the TFRecord file and the record sizes."""
        if self.records_of is None:
            return sources
        sizes = tf.strings.as_string(tf.strings.length(encoded))
        return tf.strings.join([self.records_of, ": a record of ", sizes, " bytes"])

    def read(self, sources):
        """The encoded bytes of the sources (B,): the files read, or the records themselves."""
        return sources if self.records_of is not None else self.in_loop(tf.io.read_file, sources, tf.string)

    def finished(self, seed, images, *fields):
        """`(images, *fields)`, or `finish` of them with the batch's (2,) `seed`."""
        return (images, *fields) if self.finish is None else self.finish(images, *fields, seed=seed)

    def has_images(self, images, *fields):
        """Whether a batch `(images (b, ...), *fields)` holds an image (the filter of `read_image_batches`); an
        empty one is counted in `SkippedImages.batches` and logged."""
        shape = tf.shape(images)
        noted = lambda: self.skipped_images.record_empty_batch_in_graph(shape) < 0  # noqa: E731  (always false)
        return tf.cond(shape[0] > 0, lambda: tf.constant(True), noted)

    def whole_batch(self, seed, sources, *fields):
        """The fast path: `(sources (B,), *fields)` → the finished batch, the unreadable images left out, decoded
        in one loop. Raises (inside `tf.data`) when an image passes the check but fails to decode."""
        encoded = self.read(sources)
        readable = looks_like_complete_image(encoded)
        all_readable = tf.reduce_all(readable)

        def blanked():
            return tf.where(readable, encoded, tf.io.encode_jpeg(tf.zeros(self.image_spec.shape, tf.uint8)))

        def without_unreadable():
            return _drop_unreadable(fields, readable, self.names_of(sources, encoded), self.skipped_images)

        seeds = image_seeds(seed, tf.size(sources))
        fields = (self.decode_all(tf.cond(all_readable, lambda: encoded, blanked), seeds), *fields)
        return self.finished(seed, *tf.cond(all_readable, lambda: fields, without_unreadable))

    def decode_checked(self, position, source, seed):
        """One image of the fallback: `(position, uint8 image)`, decoded and augmented; raises when the image fails
        the check (`looks_like_complete_image`) or the decoder."""
        data = self.read(source[None])[0]
        check = tf.debugging.Assert(looks_like_complete_image(data), ["unreadable image"])
        with tf.control_dependencies([check]):
            return position, self.augmented(decode_image(data, self.img_shape), seed)

    def image_by_image(self, seed, sources, *fields):
        """The fallback: the batch decoded image by image; the images that fail are named, counted and left out,
        the others come out as from `whole_batch`. A dataset of one finished batch."""
        size = tf.size(sources)
        singles = tf.data.Dataset.from_tensor_slices((tf.range(size), sources, image_seeds(seed, size)))
        decoded = singles.map(self.decode_checked).ignore_errors().batch(tf.cast(size, tf.int64))
        none = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros([0, *self.image_spec.shape], tf.uint8)))

        def kept(positions, images):
            failed = tf.reduce_all(tf.not_equal(tf.range(size)[:, None], positions[None, :]), axis=1)
            names = tf.boolean_mask(self.names_of(sources, sources), failed)
            counted = self.skipped_images.record_in_graph(names, UNDECODABLE)
            positions += tf.cast(counted < 0, tf.int32)  # adds 0: ties the count into the data flow
            return self.finished(seed, images, *(tf.gather(field, positions) for field in fields))

        return decoded.concatenate(none).take(1).map(kept)

    def __call__(self, index, batch):
        """Batch number `index` `(sources (B,), *fields)` → a dataset of its finished batch: `whole_batch`, or
        `image_by_image` when that fails."""
        seed = batch_seed(self.seed, index)
        whole = tf.data.Dataset.from_tensors(batch).map(lambda *batch: self.whole_batch(seed, *batch))
        fallback = tf.data.Dataset.from_tensors(batch).flat_map(lambda *batch: self.image_by_image(seed, *batch))
        return whole.ignore_errors().concatenate(fallback).take(1)


def read_image_batches(
    ds, img_shape, augmenter=None, records_of=None, finish=None, skipped_images=None, seed=None, first_batch=0
):
    """Batches `(sources (B,), labels (B,), *extra)` → `(uint8 images (b, H, W, 3), labels (b,), *extra)`, 0 < b ≤ B,
    or what `finish` makes of those, computed in the same parallel call.

    A source is a file path, or already-encoded bytes read from the TFRecord file `records_of`. One parallel call
    handles a whole batch, so the per-element cost of `tf.data` is paid once per batch:

    1. an in-graph loop reads the files;
    2. `looks_like_complete_image` checks all of them at once; unreadable ones are replaced by a blank JPEG;
    3. `jpeg_sizes` reads the frame headers of all of them at once; when every image is a JPEG of `img_shape`, a
       loop decodes (and augments, `augmenter.process_image`) each one with nothing else, otherwise the loop also
       resizes the images of another size (`decode_image`).

    The loops hold only the per-image work: the same checks run image by image cost several times more. An image
    that fails the check is logged, counted (`skipped_images`, see `BatchDecoder`) and left out of its batch
    (with its label and extra fields). When an image passes the check but the decoder fails on it, that batch is
    decoded again image by image and only the failing images are named, counted and left out. A batch with no
    image left is dropped (counted in `skipped_images.batches`).

    Augmentation is seeded per batch: batch number `first_batch + i` of `ds` gets the seed `[seed, first_batch +
    i]` (`seeds.batch_seed`; `seed` None: a fresh int, `seeds.pipeline_seed`), so a seeded reader repeats its
    batches.
    """
    decoder = BatchDecoder(img_shape, augmenter, records_of, finish, skipped_images, seed)
    ds = ds.enumerate(first_batch).interleave(decoder, num_parallel_calls=AUTOTUNE)
    return ds.filter(decoder.has_images)
