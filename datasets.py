"""Training (and evaluation) datasets on `tf.data`, one builder per source:

- `image_list_dataset`: an image list (a scanned class folder or an image-list `.npz`, `scan_image_list`), with
  teacher embeddings for distillation when the `.npz` holds them;
- `partial_fc_dataset`: the same list, batches alternating between class shards (partial FC);
- `tfrecord_dataset`: an (image, label) TFRecord file or set of shards (interleaved, shuffled, exact order per
  epoch with a seed);
- `distill_tfrecord_dataset`: a distillation TFRecord (image path, class, teacher embedding);
- `Triplet_dataset`: K images of each of B / K classes per batch, for batch-hard triplet losses.

Every builder takes a `BatchOptions` (batch size, image size, augmentation, targets, shuffling, seed) and returns
`(dataset, steps_per_epoch)`. A training dataset repeats forever and yields whole batches; an evaluation one
(`is_train=False`) yields every image once, in order, without augmentation. Images are RGB, decoded to uint8,
augmented (`augment.RandomProcessImage`), then normalised with `preprocess.normalize`; labels are one-hot float32
of depth `classes` (or sparse int32 class ids with `sparse_label=True`).

Batches are read whole (`image_decode.read_image_batches`): one parallel map call reads, checks, decodes and
augments the images of a batch and makes its targets (throughput against raw `tf.io.decode_jpeg` in
`bench/data_pipeline.py`). Training datasets repeat forever, so skipped unreadable files never cut an epoch short
(a batch with no readable image at all is skipped, and the epoch takes the next one).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import logging
import os
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from augment import RandomProcessImage, mix_with_partner, mixup_weights
from folder_scan import pick_by_image_per_class, pre_process_folder
from image_decode import SkippedImages, read_image_batches
from preprocess import normalize, normalize_uint8
from seeds import batch_seed, image_seeds, op_seed, pipeline_seed
from tfrecords import image_label_header, parse_image_labels, read_distill_tfrecord

logger = logging.getLogger(__name__)

AUTOTUNE = tf.data.AUTOTUNE


# ----------------------------------------------------------------------------------------------------------------
# How batches are made


@dataclass
class BatchOptions:
    """How a builder makes its batches.

    Attributes:
        batch_size: images per batch.
        img_shape: (H, W) of the output images (other sizes are resized).
        augmenter: training augmentation (`augment.RandomProcessImage`), None for none.
        sparse_label: int32 class ids instead of one-hot float32 labels.
        mixup_alpha: in (0, 1]: mixup of images and targets (`augment.mixup`); 0: none.
        teacher_model_interf: None, or a callable on normalised image batches whose output replaces the labels
            when its width equals `classes` (soft labels) and otherwise becomes `(teacher embeddings, labels)`.
        is_train: shuffle, repeat forever, whole batches only; False: every image once, in order.
        shuffle_buffer_size: None: the source's default shuffling; a number: a `tf.data` buffer of that size.
        seed: None, or an int that fixes the image order and every augmentation draw (stateless ops seeded per
            batch, `seeds.batch_seed`): two builds with the same seed yield bitwise-equal batches.
        skipped_images: the `image_decode.SkippedImages` counting unreadable images (None: the default one).
    """

    batch_size: int = 128
    img_shape: tuple = (112, 112)
    augmenter: RandomProcessImage | None = None
    sparse_label: bool = False
    mixup_alpha: float = 0
    teacher_model_interf: object = None
    is_train: bool = True
    shuffle_buffer_size: int | None = None
    seed: int | None = None
    skipped_images: SkippedImages | None = None

    def __post_init__(self):
        self.img_shape = tuple(self.img_shape[:2])
        if self.mixup_alpha > 0 and self.sparse_label:
            raise ValueError("mixup needs one-hot labels; use sparse_label=False")

    @property
    def mixes(self):
        """Whether batches are mixed up."""
        return 0 < self.mixup_alpha <= 1

    def read(self, ds, finish, records_of=None, first_batch=0):
        """`image_decode.read_image_batches` of the batched sources `ds` with these options and `finish`; the
        augmentation of batch `i` of `ds` is seeded by `(seed, first_batch + i)`."""
        return read_image_batches(
            ds, self.img_shape, self.augmenter, records_of, finish, self.skipped_images, self.seed, first_batch
        )

    def shuffled(self, ds, default_buffer_size):
        """`ds` shuffled (buffer `shuffle_buffer_size` or `default_buffer_size`, `seed`) and repeated forever."""
        return ds.shuffle(self.shuffle_buffer_size or default_buffer_size, seed=self.seed).repeat()


def _normalized(images, augmenter, seed):
    """uint8 (B, H, W, 3) → the augmenter's batch part (if any, drawing from the (2,) `seed`) and `normalize`,
    float32."""
    if augmenter is None or not augmenter.has_batch_part:
        return normalize_uint8(images)
    return normalize(augmenter.process_batch(tf.cast(images, tf.float32), seed))


def _encode_labels(labels, classes, sparse_label):
    """Class ids → one-hot float32 of depth `classes`, or int32 ids when `sparse_label`."""
    if sparse_label:
        return tf.cast(labels, tf.int32)
    return tf.one_hot(labels, depth=classes, dtype=tf.float32)


def _mixed_up(images, labels, embeddings, alpha, seed):
    """Mixup of images, labels and (distillation) embeddings alike: one weight and partner per sample, drawn from
    the (2,) `seed`."""
    weight, partner = mixup_weights(tf.shape(images)[0], alpha, seed)
    mixed = [mix_with_partner(values, weight, partner) for values in (images, tf.cast(labels, tf.float32))]
    return (*mixed, tuple(mix_with_partner(values, weight, partner) for values in embeddings))


def batch_finisher(options, classes, with_embeddings=False):
    """The function batch `(uint8 images, class ids[, embeddings])` → `(normalised float32 images, targets)`.

    Targets: one-hot (or sparse) labels of depth `classes`; `(embeddings, labels)` with `with_embeddings`
    (distillation data); with a teacher, see `BatchOptions.teacher_model_interf`. With mixup, images, labels and
    embeddings are mixed alike. The random draws of a batch come from its (2,) `seed` (None: fresh ones, drawn only
    where there is a random op).
    """

    def finish(images, labels, *embeddings, seed=None):
        images = _normalized(images, options.augmenter, op_seed(seed, 0))
        labels = _encode_labels(labels, classes, options.sparse_label)
        if options.mixes:
            images, labels, embeddings = _mixed_up(images, labels, embeddings, options.mixup_alpha, op_seed(seed, 1))
        if with_embeddings:
            return images, (embeddings[0], labels)
        if options.teacher_model_interf is not None:
            teacher_output = options.teacher_model_interf(images)
            if teacher_output.shape[-1] == classes:
                return images, teacher_output
            return images, (teacher_output, labels)
        return images, labels

    return finish


def _with_options(ds, deterministic):
    """Prefetch, and set the pipeline's determinism (training runs may deliver parallel results out of order)."""
    options = tf.data.Options()
    options.deterministic = deterministic
    return ds.prefetch(AUTOTUNE).with_options(options)


def _steps(images, batch_size, is_train):
    """Batches per epoch: whole batches for training, every image (the last batch partial) otherwise."""
    return images // batch_size if is_train else -(-images // batch_size)


def _finished(ds, options, classes, with_embeddings=False, records_of=None, first_batch=0):
    """Batched sources → read, finished batches (augmentation seeded from batch number `first_batch` on),
    prefetched, deterministic unless training without a seed."""
    ds = options.read(ds, batch_finisher(options, classes, with_embeddings), records_of, first_batch)
    return _with_options(ds, deterministic=not options.is_train or options.seed is not None)


# ----------------------------------------------------------------------------------------------------------------
# Image lists (class folders and image-list .npz)


@dataclass
class ImageList:
    """The images of a dataset: paths `names` (N,), int64 class ids `labels` (N,), the class count `classes`, and
    optional teacher `embeddings` (N, D)."""

    names: np.ndarray
    labels: np.ndarray
    classes: int
    embeddings: np.ndarray | None = None

    def __len__(self):
        return len(self.names)

    def keep_classes_with(self, image_per_class):
        """The list without the classes of fewer than `image_per_class` images (class ids unchanged)."""
        keep, _ = pick_by_image_per_class(self.labels, image_per_class)
        embeddings = self.embeddings[keep] if self.embeddings is not None else None
        return ImageList(self.names[keep], self.labels[keep], self.classes, embeddings)


def scan_image_list(
    data_path, image_names_reg=None, image_classes_rule=None, cache_dir=None, class_order="natural", image_per_class=0
):
    """The `ImageList` of a class-per-folder directory or image-list `.npz` (`folder_scan.pre_process_folder`),
    without the classes of fewer than `image_per_class` images when that is > 0; None when there are no images."""
    names, labels, embeddings, classes, _ = pre_process_folder(
        data_path, image_names_reg, image_classes_rule, cache_dir, class_order
    )
    if len(names) == 0:
        return None
    image_list = ImageList(names, labels, classes, embeddings)
    return image_list.keep_classes_with(image_per_class) if image_per_class > 0 else image_list


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


def _cached_batches(columns, options, finish, cache):
    """Decode every image once into a `tf.data` cache (memory with `cache=True`, else the file `cache`), then
    shuffle (a buffer, default 10,000 images), batch, augment each image and finish the batches."""
    ds = tf.data.Dataset.from_tensor_slices(columns).batch(options.batch_size)
    ds = read_image_batches(ds, options.img_shape, skipped_images=options.skipped_images)
    ds = ds.unbatch().cache("" if cache is True else os.fspath(cache))
    if options.is_train:
        ds = options.shuffled(ds, 10000)
    ds = ds.batch(options.batch_size, drop_remainder=options.is_train)
    if not options.is_train or options.augmenter is None:
        return ds.map(finish, num_parallel_calls=AUTOTUNE)

    pipeline = pipeline_seed(options.seed)

    def augment(index, batch):
        images, *fields = batch
        seed = batch_seed(pipeline, index)
        per_image = (images, image_seeds(seed, tf.shape(images)[0]))
        process = lambda pair: options.augmenter.process_image(*pair)  # noqa: E731
        return finish(tf.map_fn(process, per_image, fn_output_signature=images.dtype), *fields, seed=seed)

    return ds.enumerate().map(augment, num_parallel_calls=AUTOTUNE)


def image_list_dataset(image_list, options, cache=False, initial_epoch=0):
    """The dataset of an `ImageList`: yields `(images, labels)`, or `(images, (embeddings, labels))` when the list
    holds teacher embeddings and no teacher model is given.

    Args:
        image_list: the images (`scan_image_list`), at least one batch of them.
        options: a `BatchOptions`.
        cache: True caches decoded images in memory, a string caches them in that file (then shuffling uses a
            buffer of `shuffle_buffer_size`, default 10,000 images).
        initial_epoch: with a `seed` and no `shuffle_buffer_size`, the stream starts at that epoch's order
            (exact resume, see `_epoch_shuffled_batches`).

    Returns:
        `(dataset, steps_per_epoch)`: `images // batch_size` when training, else `ceil(images / batch_size)`.
    """
    use_embeddings = image_list.embeddings is not None and options.teacher_model_interf is None
    columns = (image_list.names, image_list.labels)
    columns += (image_list.embeddings.astype(np.float32),) if use_embeddings else ()
    steps = _steps(len(image_list), options.batch_size, options.is_train)
    finish = batch_finisher(options, image_list.classes, use_embeddings)
    if cache:
        ds = _cached_batches(columns, options, finish, cache)
        return _with_options(ds, deterministic=not options.is_train or options.seed is not None), steps
    if options.is_train and not options.shuffle_buffer_size:
        source = _epoch_shuffled_batches(columns, options.batch_size, options.seed, initial_epoch)
    else:
        source = tf.data.Dataset.from_tensor_slices(columns)
        source = options.shuffled(source, None) if options.is_train else source
        source = source.batch(options.batch_size, drop_remainder=options.is_train)
    first_batch = initial_epoch * steps if options.is_train and not options.shuffle_buffer_size else 0
    return _finished(source, options, image_list.classes, use_embeddings, first_batch=first_batch), steps


# ----------------------------------------------------------------------------------------------------------------
# Batch orders drawn per pass (partial FC, triplet)


def _generator_batches(make_pass, batch_size, seed=None):
    """An infinite `tf.data` source of `(paths (B,), labels (B,))` batches from `make_pass(rng)`, called once per
    pass with a NumPy generator seeded by `seed` at the start of every iteration of the dataset; `make_pass`
    returns `(paths, labels)` arrays already in batch order, a whole number of batches long."""

    def generate():
        rng = np.random.default_rng(seed)
        while True:
            paths, labels = make_pass(rng)
            yield from zip(paths, labels, strict=True)

    signature = (tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int64))
    return tf.data.Dataset.from_generator(generate, output_signature=signature).batch(batch_size, drop_remainder=True)


def partial_fc_split_pick(image_names, image_classes, batch_size, split=2, debug=False, rng=None):
    """Order images so that consecutive batches come from alternating class shards.

    Shard i holds classes `[classes//split·i, classes//split·(i+1))` (top leftover classes are dropped). Each
    shard is shuffled (with the NumPy generator `rng`, default a fresh one) and cut into whole batches, all shards
    are truncated to the smallest batch count, and the batches are interleaved shard 0, 1, ..., split−1, 0, 1, ...
    `debug` logs the shard sizes. Returns `(image_names, image_classes)`.
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
        logger.info("partial FC: shard sizes %s, %d batches per shard", [len(m) for m in shards], num_batches)
    order = np.stack([members[: num_batches * batch_size].reshape(num_batches, batch_size) for members in shards], 1)
    order = order.reshape(-1)
    return image_names[order], image_classes[order]


def partial_fc_dataset(image_list, options, split):
    """Partial-FC training batches of an `ImageList`: batches alternate between `split` class shards
    (`partial_fc_split_pick`, re-drawn every pass with `options.seed`), labels are `label % (classes // split)`.

    Returns `(dataset, steps_per_epoch)`; the dataset is deterministic (the head follows the shard order).
    """
    sub_classes = image_list.classes // split
    batch_size = options.batch_size
    picked, _ = partial_fc_split_pick(image_list.names, image_list.labels, batch_size, split)

    def make_pass(rng):
        names, labels = partial_fc_split_pick(image_list.names, image_list.labels, batch_size, split, rng=rng)
        return names, labels % sub_classes

    finish = batch_finisher(options, sub_classes)
    ds = options.read(_generator_batches(make_pass, batch_size, options.seed), finish)
    return _with_options(ds, deterministic=True), len(picked) // batch_size


def triplet_batch_order(image_classes, batch_size, image_per_class, rng):
    """Image indices for one pass of triplet batches: each batch holds `batch_size // image_per_class` distinct
    classes with exactly `image_per_class` images each.

    Every class is shuffled (NumPy generator `rng`) and cut into groups of `image_per_class` (the remainder is
    left out this pass); the groups are shuffled and packed into batches without repeating a class within a
    batch. Returns an `(num_batches, groups_per_batch * image_per_class)` int array.
    """
    groups = []
    for cls in np.unique(image_classes):
        members = rng.permutation(np.flatnonzero(image_classes == cls))
        usable = len(members) // image_per_class * image_per_class
        groups.extend((cls, group) for group in members[:usable].reshape(-1, image_per_class))
    groups_per_batch = batch_size // image_per_class
    batches = _pack_groups([groups[i] for i in rng.permutation(len(groups))], groups_per_batch)
    return np.array(batches, dtype=np.int64).reshape(len(batches), groups_per_batch * image_per_class)


def _pack_groups(groups, groups_per_batch):
    """Pack `(class, indices)` groups, in order, into batches of `groups_per_batch` distinct classes; a group
    whose class the open batch already holds waits for a later batch. Returns the batches' index arrays."""
    batches, batch, seen, deferred = [], [], set(), []
    for cls, group in groups:
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
    return batches


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
    random_cutout_mask_area=0.0,
    seed=None,
    skipped_images=None,
):
    """Dataset for batch-hard triplet losses: every batch holds K = `max(4, image_per_class)` images of each of
    `batch_size // K` different classes (classes with fewer than K images are dropped).

    Decoding and augmentation (`augment.RandomProcessImage` of `random_status`, `random_crop`,
    `random_cutout_mask_area`) run in parallel; groups are re-drawn on every pass from a NumPy generator seeded
    by `seed` (an int gives the same batches on every build). A teacher receives the same normalised images as
    the student. Other arguments as in `datasets.scan_image_list` and `BatchOptions`. Returns
    `(dataset, steps_per_epoch)`, steps = complete batches per pass.
    """
    image_per_class = max(4, image_per_class)
    image_list = scan_image_list(data_path, image_names_reg, image_classes_rule, cache_dir, class_order)
    if image_list is None:
        raise ValueError(f"{data_path}: no images (a triplet dataset reads a class-per-folder directory or a .npz)")
    image_list = image_list.keep_classes_with(image_per_class)
    batch_size = batch_size // image_per_class * image_per_class
    steps = len(triplet_batch_order(image_list.labels, batch_size, image_per_class, np.random.default_rng(seed)))
    if steps == 0:
        raise ValueError(
            f"{data_path}: a triplet batch needs {batch_size // image_per_class} classes with at least "
            f"{image_per_class} images each; only {len(np.unique(image_list.labels))} such classes exist"
        )

    def make_pass(rng):
        order = triplet_batch_order(image_list.labels, batch_size, image_per_class, rng).ravel()
        return image_list.names[order], image_list.labels[order]

    augmenter = RandomProcessImage(img_shape, random_status, random_crop, random_cutout_mask_area)
    options = BatchOptions(
        batch_size=batch_size, img_shape=img_shape, augmenter=augmenter, sparse_label=sparse_label,
        teacher_model_interf=teacher_model_interf, seed=seed, skipped_images=skipped_images,
    )
    return _finished(_generator_batches(make_pass, batch_size, seed), options, image_list.classes), steps


# ----------------------------------------------------------------------------------------------------------------
# TFRecord sources


INTERLEAVED_SHARDS = 8  # shard files read at once, a record from each in turn (fixed: the order must not depend
# on the machine's core count)
DEFAULT_SHUFFLE_BUFFER = 10_000  # records of a TFRecord source shuffled together


def _window_shuffled(records, window, seed):
    """`records` shuffled within consecutive windows of `window` records: window `i` is permuted by a stateless
    shuffle seeded by `(seed, i)` ((2,) `seed`), so the order is a function of the seed alone (that of
    `Dataset.shuffle` also depends on TensorFlow's global seed)."""

    def permuted(index, block):
        order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(block)[0]), seed=op_seed(seed, index))
        return tf.gather(block, order)

    return records.batch(window).enumerate().map(permuted, num_parallel_calls=AUTOTUNE).unbatch()


def _epoch_records(files, seed, epoch, window):
    """The serialized records of training epoch `epoch` (int64 scalar) of the shard `files` ((F,) string): the
    files in an order drawn from `(seed, epoch)`, read `INTERLEAVED_SHARDS` at a time, a record from each in turn,
    then shuffled in windows of `window` records (`_window_shuffled`)."""
    epoch_seed = tf.stack([tf.constant(seed, tf.int64), epoch])
    order = tf.random.experimental.stateless_shuffle(tf.range(tf.shape(files)[0]), seed=op_seed(epoch_seed, 0))
    shards = tf.data.Dataset.from_tensor_slices(tf.gather(files, order))
    records = shards.interleave(tf.data.TFRecordDataset, cycle_length=min(int(files.shape[0]), INTERLEAVED_SHARDS),
                                block_length=1, num_parallel_calls=AUTOTUNE)
    return _window_shuffled(records, window, op_seed(epoch_seed, 1))


def _shard_epochs(files, options, initial_epoch):
    """Endless training batches of serialized records from epoch `initial_epoch` on: each epoch's records
    (`_epoch_records`, window `shuffle_buffer_size` or `DEFAULT_SHUFFLE_BUFFER`) cut into whole batches. With
    `options.seed` None the seed is drawn once (`seeds.pipeline_seed`)."""
    seed, files = pipeline_seed(options.seed), tf.constant(files)
    window = options.shuffle_buffer_size or DEFAULT_SHUFFLE_BUFFER

    def one_epoch(epoch):
        return _epoch_records(files, seed, epoch, window).batch(options.batch_size, drop_remainder=True)

    return tf.data.Dataset.counter(initial_epoch, dtype=tf.int64).flat_map(one_epoch)


def tfrecord_dataset(data_path, options, initial_epoch=0):
    """The dataset of an (image, label) TFRecord file or glob pattern of shards (`tfrecords.image_label_header`).

    Training: every epoch reads all shards (`_shard_epochs`): the shard order is drawn per epoch, 8 shards are
    read at once, a record from each in turn, and records are shuffled in windows of `shuffle_buffer_size`
    records (default 10,000; memory: that many encoded images, about twice while the next window fills). With a
    `seed` the batches of epoch `e` are a function of `(seed, e)` and the stream starts at epoch `initial_epoch`
    (exact resume, as `image_list_dataset`); without, the order is random and parallel reads may deliver out of
    order. `is_train=False`: the files in name order, every record once.

    Returns `(dataset of (images, labels), steps_per_epoch)`.
    """
    files, total, classes = image_label_header(data_path)
    steps = _steps(total, options.batch_size, options.is_train)
    if options.is_train:
        source = _shard_epochs(files, options, initial_epoch)
    else:
        source = tf.data.TFRecordDataset(files).batch(options.batch_size)
    source = source.map(parse_image_labels, num_parallel_calls=AUTOTUNE)
    first_batch = initial_epoch * steps if options.is_train else 0
    return _finished(source, options, classes, records_of=os.fspath(data_path), first_batch=first_batch), steps


def distill_tfrecord_dataset(data_path, options):
    """The dataset of a distillation TFRecord (`tfrecords.read_distill_tfrecord`): yields
    `(images, (embeddings, labels))`, or with a teacher model its targets (the stored embeddings unused).

    Training: shuffled with a buffer (`shuffle_buffer_size`, default 1,000 batches, seeded by `seed`), repeated,
    augmented and mixed up (embeddings mixed like the labels) as `options` say; `is_train=False`: every image
    once, in order. Returns `(dataset, steps_per_epoch)`.
    """
    source, total, classes = read_distill_tfrecord(data_path)
    with_embeddings = options.teacher_model_interf is None
    if not with_embeddings:
        source = source.map(lambda name, label, embedding: (name, label))
    source = options.shuffled(source, options.batch_size * 1000) if options.is_train else source
    source = source.batch(options.batch_size, drop_remainder=options.is_train)
    return _finished(source, options, classes, with_embeddings), _steps(total, options.batch_size, options.is_train)
