"""TFRecord files of the project: writing and opening them.

Two layouts:

- (image, label): every `tf.train.Example` holds `image` (encoded bytes) and `label` (int64); the first record of
  each file also `classes` and `total` (int64, that file's record count). Written by `write_tfrecord_from_folder`
  and by `prepare_data.json_to_tfrecord` (FFEM image lists with boxes, through `image_label_example` and
  `copy_records_with_header`); a set of shards is opened with a glob pattern.
- distillation: `image_names` (path bytes), `image_classes` (int64) and `embeddings` (raw float16 or float32
  bytes); the first record also `classes`, `emb_shape`, `total` and `use_fp16` (the original `data_distiller.py`).

Every file is written under a temporary name and then moved over the final one (`atomic_io.atomic_path`).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import glob
import os

import numpy as np
import tensorflow as tf

from atomic_io import atomic_path
from folder_scan import pre_process_folder

AUTOTUNE = tf.data.AUTOTUNE
DISTILL_SPEC = {
    "image_names": tf.io.FixedLenFeature([], tf.string),
    "image_classes": tf.io.FixedLenFeature([], tf.int64),
    "embeddings": tf.io.FixedLenFeature([], tf.string),
}


def _int64_feature(values):
    """A `tf.train.Feature` holding the int64 `values` (a number or an array, flattened)."""
    return tf.train.Feature(int64_list=tf.train.Int64List(value=list(np.ravel(values))))


def _bytes_feature(value):
    """A `tf.train.Feature` holding one byte string `value`."""
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _example(feature):
    """A `tf.train.Example` of the `{name: tf.train.Feature}` dict `feature`."""
    return tf.train.Example(features=tf.train.Features(feature=feature))


def image_label_example(image, label, classes=None, total=None):
    """The (image, label) record of encoded image bytes `image` and class index `label`; the first record of a
    file also takes `classes` and `total` (that file's record count)."""
    feature = {"image": _bytes_feature(image), "label": _int64_feature(label)}
    if classes is not None:
        feature.update(classes=_int64_feature(classes), total=_int64_feature(total))
    return _example(feature)


def write_tfrecord_from_folder(data_path, output_path, cache_dir=None, class_order="natural"):
    """Write every image of a class-per-folder dataset to one (image, label) TFRecord file.

    Each record holds the encoded bytes exactly as stored on disk. Returns `(output_path, total, classes)`.
    """
    from tqdm import tqdm

    names, labels, _, classes, _ = pre_process_folder(data_path, cache_dir=cache_dir, class_order=class_order)
    with atomic_path(output_path) as temporary, tf.io.TFRecordWriter(os.fspath(temporary)) as writer:
        for index, (name, label) in enumerate(tqdm(list(zip(names, labels, strict=True)), desc="write tfrecord")):
            with open(name, "rb") as file:
                header = (classes, len(names)) if index == 0 else (None, None)
                writer.write(image_label_example(file.read(), label, *header).SerializeToString())
    return output_path, len(names), classes


def copy_records_with_header(source, output_path, classes):
    """Copy the records of the TFRecord file `source` to `output_path`, adding `classes` and `total` (the record
    count) to the first one, as `read_tfrecord_dataset` expects. Returns the record count."""
    records = tf.data.TFRecordDataset(os.fspath(source))
    total = sum(1 for _ in records)
    with atomic_path(output_path) as temporary, tf.io.TFRecordWriter(os.fspath(temporary)) as writer:
        for index, record in enumerate(records):
            if index == 0:
                example = tf.train.Example.FromString(record.numpy())
                example.features.feature["classes"].CopyFrom(_int64_feature(classes))
                example.features.feature["total"].CopyFrom(_int64_feature(total))
                writer.write(example.SerializeToString())
            else:
                writer.write(record.numpy())
    return total


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


def first_example(path):
    """The first `tf.train.Example` of a TFRecord file (of the first file of a pattern; eagerly parsed)."""
    first_file = tfrecord_files(path)[0]
    for record in tf.data.TFRecordDataset(first_file).take(1):
        return tf.train.Example.FromString(record.numpy())
    raise ValueError(f"{first_file}: empty TFRecord file")


def is_distill_tfrecord(path):
    """Whether the TFRecord `path` is in the distillation layout (its first record holds `image_names`)."""
    return "image_names" in first_example(path).features.feature


def read_tfrecord_dataset(path):
    """Open an (image, label) TFRecord (or shards of one: a glob pattern; each shard's first record holds its own
    `total`).

    Returns:
        `(dataset of (encoded image bytes, int64 label), total, classes)`.
    """
    total, classes = 0, 0
    for file in tfrecord_files(path):
        features = first_example(file).features.feature
        if "image" not in features or "classes" not in features:
            raise ValueError(f"{file}: not an (image, label) TFRecord (first record lacks 'image' / 'classes')")
        total += features["total"].int64_list.value[0]
        classes = max(classes, features["classes"].int64_list.value[0])
    spec = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}
    parse = lambda record: tuple(tf.io.parse_single_example(record, spec).values())  # noqa: E731
    records = tf.data.TFRecordDataset(tfrecord_files(path), num_parallel_reads=AUTOTUNE)
    return records.map(parse, num_parallel_calls=AUTOTUNE), int(total), int(classes)


def _distill_example(name, label, embedding, header):
    """One distillation record; `header` (a dict of ints, the first record only) adds its fields."""
    feature = {
        "image_names": _bytes_feature(os.fspath(name).encode()),
        "image_classes": _int64_feature(label),
        "embeddings": _bytes_feature(embedding.tobytes()),
    }
    feature.update({key: _int64_feature(value) for key, value in header.items()})
    return _example(feature)


def write_distill_tfrecord(output_path, image_names, image_classes, embeddings, use_fp16=False):
    """Write teacher embeddings (N, D) of the images `image_names` (N,) of classes `image_classes` (N,) in the
    distillation TFRecord layout of the original `data_distiller.py` (float16 when `use_fp16`).

    Returns `output_path`.
    """
    embeddings = np.asarray(embeddings, dtype=np.float16 if use_fp16 else np.float32)
    classes = int(np.max(image_classes)) + 1
    header = {"classes": classes, "emb_shape": embeddings.shape[-1], "total": len(embeddings)}
    header["use_fp16"] = int(use_fp16)
    rows = zip(image_names, image_classes, embeddings, strict=True)
    with atomic_path(output_path) as temporary, tf.io.TFRecordWriter(os.fspath(temporary)) as writer:
        for index, (name, label, embedding) in enumerate(rows):
            example = _distill_example(name, label, embedding, header if index == 0 else {})
            writer.write(example.SerializeToString())
    return output_path


def read_distill_tfrecord(path):
    """Open a distillation TFRecord written by `write_distill_tfrecord`.

    Returns:
        `(dataset of (image path, int64 class, float32 embedding (D,)), total, classes)`.
    """
    features = first_example(path).features.feature
    classes, emb_shape = features["classes"].int64_list.value[0], features["emb_shape"].int64_list.value[0]
    total, use_fp16 = features["total"].int64_list.value[0], features["use_fp16"].int64_list.value[0]

    def parse(record):
        example = tf.io.parse_single_example(record, DISTILL_SPEC)
        embedding = tf.io.decode_raw(example["embeddings"], tf.float16 if use_fp16 else tf.float32)
        embedding = tf.reshape(tf.cast(embedding, tf.float32), [emb_shape])
        return example["image_names"], example["image_classes"], embedding

    records = tf.data.TFRecordDataset(os.fspath(path)).map(parse, num_parallel_calls=AUTOTUNE)
    return records, int(total), int(classes)
