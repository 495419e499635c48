"""Training data, the original's public names in one place: `prepare_dataset` (a dispatcher over the builders of
`datasets.py`, one per source), `Triplet_dataset`, and the pieces the original's `data.py` held, now imported
from the modules that hold them:

- `folder_scan`: class folders and image lists, the scan cache (`pre_process_folder`, `scan_folder`, ...);
- `image_decode`: image bytes → checked, decoded uint8 (`tf_imread`, `jpeg_sizes`, `skipped_image_count`, ...);
- `augment`: all augmentation (`RandomProcessImage`, `mixup`, RandAugment, ...);
- `datasets`: the dataset builders and the batch order of partial FC and triplet batches;
- `tfrecords`: TFRecord writing and reading;
- `preprocess`: `normalize` (the model input contract); `bin_files`: the `.bin` verification sets.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import os

import numpy as np

from atomic_io import save_figure_atomic
from augment import (  # noqa: F401 (re-exported: data.<name>)
    RANDAUGMENT_OPS,
    RandAugment,
    RandomProcessImage,
    adjust_saturation,
    mixup,
    random_brightness,
    random_contrast,
    random_crop_resize,
    random_cutout_mask,
    random_flip_left_right,
    random_saturation,
    sample_beta_distribution,
)
from bin_files import load_bin, make_bin  # noqa: F401 (re-exported: data.load_bin / data.make_bin)
from datasets import (  # noqa: F401 (re-exported: data.<name>)
    AUTOTUNE,
    BatchOptions,
    Triplet_dataset,
    distill_tfrecord_dataset,
    image_list_dataset,
    partial_fc_dataset,
    partial_fc_split_pick,
    scan_image_list,
    tfrecord_dataset,
    triplet_batch_order,
)
from folder_scan import (  # noqa: F401 (re-exported: data.<name>)
    CACHE_VERSION,
    DEFAULT_CACHE_DIR,
    IMAGE_EXTENSIONS,
    ImageClassesRule_map,
    folder_fingerprint,
    is_image_file,
    load_image_list_npz,
    natural_sort_key,
    pick_by_image_per_class,
    pre_process_folder,
    scan_folder,
    sort_class_names,
)
from image_decode import (  # noqa: F401 (re-exported: data.<name>)
    IMAGES_DECODED_IN_PARALLEL,
    JPEG_SEGMENTS_SEARCHED,
    SkippedImages,
    decode_image,
    jpeg_sizes,
    looks_like_complete_image,
    skipped_image_count,
    tf_imread,
)
from preprocess import NORMALIZE_MEAN, NORMALIZE_SCALE, normalize, normalize_uint8  # noqa: F401 (re-exported)
from tfrecords import (  # noqa: F401 (re-exported: data.<name>)
    _bytes_feature,
    _int64_feature,
    is_distill_tfrecord,
    read_tfrecord_dataset,
    tfrecord_files,
    write_distill_tfrecord,
    write_tfrecord_from_folder,
)


def prepare_dataset(
    data_path, image_names_reg=None, image_classes_rule=None, batch_size=128, img_shape=(112, 112), random_status=0,
    random_crop=(100, 100, 3), random_cutout_mask_area=0.0, mixup_alpha=0, image_per_class=0, partial_fc_split=0,
    cache=False, shuffle_buffer_size=None, is_train=True, teacher_model_interf=None, cache_dir=None, sparse_label=False,
    class_order="natural", seed=None, initial_epoch=0, skipped_images=None,
):
    """The training (or evaluation) dataset of a class-per-folder directory, image-list `.npz` or TFRecord.

    Picks the builder of `datasets.py`: a `.tfrecord` → `distill_tfrecord_dataset` (distillation layout) or
    `tfrecord_dataset` (`initial_epoch`); else the images are scanned (`scan_image_list`: `image_names_reg`,
    `image_classes_rule`, `cache_dir`, `class_order`, `image_per_class`), then `partial_fc_split > 1` →
    `partial_fc_dataset` (training only), otherwise `image_list_dataset` (`cache`, `initial_epoch`).
    `random_status`, `random_crop`, `random_cutout_mask_area`: `augment.RandomProcessImage` (training only); the
    other arguments: see `datasets.BatchOptions` (`mixup_alpha` applies to training only).

    Returns `(dataset, steps_per_epoch)`: a training dataset repeats forever and `steps_per_epoch = images //
    batch_size`; with `is_train=False` every image comes once, the last batch may be smaller, and steps is
    `ceil(images / batch_size)`. `(None, None)` when there are no images.
    """
    augmenter = RandomProcessImage(img_shape, random_status, random_crop, random_cutout_mask_area) if is_train else None
    options = BatchOptions(
        batch_size=batch_size, img_shape=img_shape, augmenter=augmenter, sparse_label=sparse_label,
        mixup_alpha=mixup_alpha if is_train else 0, teacher_model_interf=teacher_model_interf, is_train=is_train,
        shuffle_buffer_size=shuffle_buffer_size, seed=seed, skipped_images=skipped_images,
    )
    data_path = os.fspath(data_path)
    if data_path.endswith(".tfrecord"):
        _check_no_list_options(data_path, image_names_reg=image_names_reg, image_classes_rule=image_classes_rule,
                               image_per_class=image_per_class > 0, partial_fc_split=partial_fc_split > 1,
                               cache=cache)
        if is_distill_tfrecord(data_path):
            return distill_tfrecord_dataset(data_path, options)
        return tfrecord_dataset(data_path, options, initial_epoch)
    image_list = _scan_batches(data_path, batch_size, image_names_reg, image_classes_rule, cache_dir, class_order,
                               image_per_class)
    if image_list is None:
        return None, None
    if partial_fc_split > 1 and is_train:
        return partial_fc_dataset(image_list, options, partial_fc_split)
    return image_list_dataset(image_list, options, cache, initial_epoch)


def _check_no_list_options(data_path, **list_options):
    """ValueError naming the options set (not None, 0 or False) that only image lists support, for a TFRecord."""
    given = sorted(name for name, value in list_options.items() if value)
    if given:
        raise ValueError(f"{data_path}: a TFRecord source does not support {', '.join(given)}")


def _scan_batches(data_path, batch_size, *scan_options):
    """`scan_image_list(data_path, *scan_options)`; a ValueError when it holds fewer than `batch_size` images."""
    image_list = scan_image_list(data_path, *scan_options)
    if image_list is not None and len(image_list) < batch_size:
        raise ValueError(f"{data_path}: {len(image_list)} images, fewer than one batch of {batch_size}")
    return image_list


def prepare_distill_dataset_tfrecord(
    data_path,
    batch_size=128,
    img_shape=(112, 112),
    random_status=2,
    random_crop=(100, 100, 3),
    random_cutout_mask_area=0.0,
    sparse_label=False,
    shuffle_buffer_size=None,
    mixup_alpha=0,
    is_train=True,
    seed=None,
):
    """Distillation dataset from a TFRecord of (image path, class, teacher embedding), as in the original:
    `datasets.distill_tfrecord_dataset` with the augmentation of `random_status`, `random_crop` and
    `random_cutout_mask_area` (training only). Returns `(dataset of (images, (embeddings, labels)), steps)`."""
    augmenter = RandomProcessImage(img_shape, random_status, random_crop, random_cutout_mask_area) if is_train else None
    options = BatchOptions(
        batch_size=batch_size, img_shape=img_shape, augmenter=augmenter, sparse_label=sparse_label,
        mixup_alpha=mixup_alpha if is_train else 0, is_train=is_train, shuffle_buffer_size=shuffle_buffer_size,
        seed=seed,
    )
    return distill_tfrecord_dataset(data_path, options)


def show_batch_sample(ds, rows=8, basic_size=1, save_path="batch_sample.png"):
    """Save a grid of the first batch's images (normalised to [−1, 1]) to `save_path` with matplotlib; its path."""
    import matplotlib.pyplot as plt

    images = next(iter(ds))[0].numpy()
    columns = int(np.ceil(len(images) / rows))
    figure, axes = plt.subplots(rows, columns, figsize=(columns * basic_size, rows * basic_size), squeeze=False)
    for axis, index in zip(axes.ravel(), range(rows * columns), strict=True):
        if index < len(images):
            axis.imshow(np.clip(images[index] / 2 + 0.5, 0, 1))
        axis.axis("off")
    save_figure_atomic(figure, save_path, bbox_inches="tight")
    plt.close(figure)
    return save_path
