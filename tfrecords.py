"""TFRecord files of the project: writing and opening them.

Two layouts:

- (image, label): every `tf.train.Example` holds `image` (encoded bytes) and `label` (int64); the first record of
  each file also `classes` and `total` (int64, that file's record count), and in files written by
  `packed_records` a `conversion` tag (bytes). Written by `write_tfrecord_from_folder` and by `packed_records`
  (insightface `.rec`, class folders, and `prepare_data.json_to_tfrecord`'s FFEM lists, a shard at a time through
  `frame_image_label_records` and `write_framed_records`: numpy lays out the records and their TFRecord framing,
  and with the optional `google-crc32c` package the checksums are computed over that buffer, several times faster
  than `tf.io.TFRecordWriter`); a set of shards is opened with a glob pattern.
- distillation: `image_names` (path bytes), `image_classes` (int64) and `embeddings` (raw float16 or float32
  bytes); the first record also `classes`, `emb_shape`, `total` and `use_fp16` (the original `data_distiller.py`).

Every file is written under a temporary name and then moved over the final one (`atomic_io.atomic_path`).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import glob
import itertools
import os
import struct
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from atomic_io import atomic_path
from folder_scan import pre_process_folder

try:  # optional: hardware CRC32C, to write TFRecord files several times faster than tf.io.TFRecordWriter
    import google_crc32c
except ImportError:
    google_crc32c = None

CRC32C = google_crc32c.value if google_crc32c is not None and google_crc32c.implementation == "c" else None

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


def image_label_example(image, label, classes=None, total=None, conversion=None):
    """The (image, label) record of encoded image bytes `image` and class index `label`; the first record of a
    file also takes `classes` and `total` (that file's record count), and `conversion` (bytes, the tag of the
    conversion that wrote the file, `packed_records`) when given."""
    feature = {"image": _bytes_feature(image), "label": _int64_feature(label)}
    if classes is not None:
        feature.update(classes=_int64_feature(classes), total=_int64_feature(total))
    if conversion is not None:
        feature.update(conversion=_bytes_feature(conversion))
    return _example(feature)


VARINT_SHIFTS = np.arange(0, 70, 7)  # the 10 groups of 7 bits of a uint64 (`varints`' widest width)
LENGTH_VARINT_BYTES = 5  # varint bytes of the lengths of a record's fields: up to 2**35 - 1 (32 GiB)
IMAGE_FIELD_TAGS = b"\x0a\x05image\x12"  # map entry: key "image" (field 1, 5 bytes), then the Feature (field 2)
LABEL_KEY = b"\x0a\x05label"  # map entry: key "label"
FRAME_HEAD, FRAME_TAIL = 12, 4  # TFRecord framing: uint64 length + masked CRC32C of it; masked CRC32C of the data
CRC_MASK_DELTA = 0xA282EAD8


def varints(values, width=10):
    """Protobuf base-128 varints of non-negative ints `values` (N,) below `2 ** (7 * width)`: `(bytes (N, width)
    uint8, lengths (N,))`, row `i`'s encoding being its first `lengths[i]` bytes."""
    groups = np.asarray(values, np.int64)[:, None] >> VARINT_SHIFTS[:width]
    more = groups[:, 1:] != 0  # a byte has the continuation bit when higher bits remain
    data = groups.astype(np.uint8) & 0x7F  # the low 7 bits of each group
    data[:, :-1] |= more.view(np.uint8) << 7
    return data, 1 + np.count_nonzero(more, axis=1)


def _constant_column(data, count):
    """The byte string `data` as a column of `count` equal rows: `(bytes (count, len), lengths (count,))`."""
    return np.broadcast_to(np.frombuffer(data, np.uint8), (count, len(data))), np.full(count, len(data))


def _scatter_columns(buffer, starts, columns):
    """Write into `buffer`, from byte `starts[i]` for row `i`, the row-wise concatenation of `columns` (each
    `(bytes (N, w), lengths (N,))`, of which row `i` contributes its first `lengths[i]` bytes). Rows are written
    in groups of equal column lengths (in practice one or two groups), each as one dense block."""
    if len(starts) == 0:
        return
    lengths = np.stack([column_lengths for _, column_lengths in columns], axis=1)  # each below 16: one hex digit
    layouts, groups = np.unique(lengths @ (16 ** np.arange(len(columns))), return_inverse=True)
    for group in range(len(layouts)):
        rows = np.flatnonzero(groups == group) if len(layouts) > 1 else slice(None)
        widths = lengths[rows][0] if len(layouts) > 1 else lengths[0]
        block = np.concatenate([data[rows, :width] for (data, _), width in zip(columns, widths, strict=True)], axis=1)
        buffer[starts[rows][:, None] + np.arange(block.shape[1])] = block


@dataclass
class FramedRecords:
    """(image, label) records laid out as the frames of a TFRecord file, checksums not yet computed.

    Attributes:
        buffer: the file's bytes (uint8), the CRC32C fields not yet set (`fill_checksums`).
        record_starts: byte offset of each frame (N + 1,), the last one the end of the buffer.
        image_starts: byte offset of each record's image bytes (N,).
        image_lengths: length of each image (N,).
    """

    buffer: np.ndarray
    record_starts: np.ndarray
    image_starts: np.ndarray
    image_lengths: np.ndarray

    def __len__(self):
        return len(self.image_starts)

    def example(self, index):
        """The serialized `tf.train.Example` (bytes) of record `index`."""
        start, end = self.record_starts[index : index + 2]
        return self.buffer[start + FRAME_HEAD : end - FRAME_TAIL].tobytes()


def _label_entry_start(size):
    """The 15 bytes of the "label" map entry before its int64 varint of `size` bytes: entry (field 1, size + 13
    bytes), key "label", Feature (field 2, size + 4), int64_list (field 3, size + 2), packed value (field 1, size)."""
    return bytes([0x0A, size + 13]) + LABEL_KEY + bytes([0x12, size + 4, 0x1A, size + 2, 0x0A, size])


LABEL_ENTRY_STARTS = np.array([list(_label_entry_start(size)) for size in range(11)], np.uint8)  # (11, 15)


def varint_lengths(values):
    """Bytes of the protobuf varint of each non-negative int of `values` (N,) below `2 ** 35`."""
    return 1 + np.count_nonzero(values[:, None] >= 128 ** np.arange(1, LENGTH_VARINT_BYTES), axis=1)


def _image_label_columns(lengths, labels):
    """The protobuf bytes of (image, label) Examples of images of `lengths` (N,) and `labels` (N,), as columns:
    `(head columns, label entry columns, bytes before the image (N,), bytes after it (N,))`.

    Example{features (1): Features{feature (1): map entries {key (1), value (2): Feature}}}, the "image" Feature
    holding bytes_list (1) {value (1)}, the "label" one int64_list (3) {packed value (1)}.
    """
    count, label = len(labels), varints(labels)
    bytes_list = 1 + varint_lengths(lengths) + lengths
    feature = 1 + varint_lengths(bytes_list) + bytes_list
    entry = len(IMAGE_FIELD_TAGS) + varint_lengths(feature) + feature
    label_entry = len(LABEL_ENTRY_STARTS[0]) + label[1]
    features = 1 + varint_lengths(entry) + entry + label_entry
    example = 1 + varint_lengths(features) + features
    sizes, size_lengths = varints(np.stack([features, entry, feature, bytes_list, lengths], axis=1).reshape(-1),
                                  LENGTH_VARINT_BYTES)
    sizes, size_lengths = sizes.reshape(count, 5, -1), size_lengths.reshape(count, 5)
    size = [(sizes[:, field], size_lengths[:, field]) for field in range(5)]
    newline = _constant_column(b"\x0a", count)
    head = [(example.astype("<u8").view(np.uint8).reshape(-1, 8), np.full(count, 8)), _constant_column(bytes(4), count),
            newline, size[0], newline, size[1], _constant_column(IMAGE_FIELD_TAGS, count), size[2], newline, size[3],
            newline, size[4]]
    entry_columns = [(LABEL_ENTRY_STARTS[label[1]], np.full(count, len(LABEL_ENTRY_STARTS[0]))), label]
    return head, entry_columns, FRAME_HEAD + example - lengths - label_entry, label_entry + FRAME_TAIL


def frame_image_label_records(images, labels):
    """Lay out (image, label) records, as `image_label_example(image, label)` without header fields, in the
    TFRecord framing, all at once: lengths and protobuf fields are computed with numpy, the image bytes copied once.

    Args:
        images: N encoded images (bytes-like: bytes, memoryview slices of a memory-mapped file).
        labels: N non-negative int class indices.

    Returns:
        A `FramedRecords`; `write_framed_records` adds the checksums and writes it.
    """
    labels = np.asarray(labels, np.int64).reshape(-1)
    if labels.size and labels.min() < 0:
        raise ValueError(f"label {labels.min()} is negative")
    lengths = np.fromiter(map(len, images), np.int64, len(images))
    head, label_entry, before, after = _image_label_columns(lengths, labels)
    record_starts = np.concatenate([[0], np.cumsum(before + lengths + after)])
    image_starts = record_starts[:-1] + before
    buffer = np.empty(record_starts[-1], np.uint8)
    _scatter_columns(buffer, record_starts[:-1], head)
    _scatter_columns(buffer, image_starts + lengths, label_entry)
    view = memoryview(buffer)
    for start, image in zip(image_starts.tolist(), images, strict=True):
        view[start : start + len(image)] = image
    return FramedRecords(buffer, record_starts, image_starts, lengths)


def image_label_record(image, label):
    """`image_label_example(image, label).SerializeToString()` (no header fields), encoded directly in the
    protobuf wire format (`frame_image_label_records` of one record). `label` must be a non-negative int."""
    return frame_image_label_records([image], [label]).example(0)


def masked_crc32c(crcs):
    """TFRecord's masked checksums of CRC32C values `crcs` (uint32 array, any shape): rotated right by 15 bits
    plus a constant, modulo 2**32."""
    crcs = np.asarray(crcs, np.uint32)
    return ((crcs >> 15) | (crcs << 17)) + np.uint32(CRC_MASK_DELTA)


def _crc32c_table():
    """The CRC32C (Castagnoli, reflected polynomial 0x82F63B78) value of each byte 0–255: (256,) uint32."""
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1).astype(np.uint32)
    return table


CRC32C_TABLE = _crc32c_table()


def crc32c_rows(rows):
    """CRC32C of each row of `rows` (N, w) uint8, vectorised over the rows (for short rows: w steps)."""
    crcs = np.full(len(rows), 0xFFFFFFFF, np.uint32)
    for column in rows.T:
        crcs = CRC32C_TABLE[(crcs ^ column) & 0xFF] ^ (crcs >> 8)
    return crcs ^ np.uint32(0xFFFFFFFF)


def _masked_bytes(crcs):
    """`masked_crc32c(crcs)` of (N,) CRC32C values as (N, 4) little-endian bytes."""
    return masked_crc32c(np.asarray(crcs, np.uint32).reshape(-1)).astype("<u4").view(np.uint8).reshape(-1, 4)


def fill_checksums(framed, first=0):
    """Compute the CRC32C fields of the records `first`, ... of `framed` in place: those of the 8-byte lengths
    with numpy (`crc32c_rows`), those of the records with `CRC32C` (which must be installed)."""
    starts, ends = framed.record_starts[first:-1], framed.record_starts[first + 1 :]
    buffer, columns = framed.buffer, np.arange(4)
    buffer[starts[:, None] + 8 + columns] = _masked_bytes(crc32c_rows(buffer[starts[:, None] + np.arange(8)]))
    crcs = [CRC32C(buffer[start:end]) for start, end in zip((starts + FRAME_HEAD).tolist(),
                                                            (ends - FRAME_TAIL).tolist(), strict=True)]
    buffer[ends[:, None] - FRAME_TAIL + columns] = _masked_bytes(crcs)


def frame_record(record):
    """The TFRecord frame (bytes) of one serialized record (`CRC32C` must be installed)."""
    length = struct.pack("<Q", len(record))
    crcs = masked_crc32c([CRC32C(length), CRC32C(record)]).astype("<u4").tobytes()
    return b"".join([length, crcs[:4], record, crcs[4:]])


def write_framed_records(path, framed, first_record=None):
    """Write the records of `framed` to the TFRecord file `path`, atomically; `first_record` (serialized bytes),
    when given, replaces the first of them (a header record). With `google_crc32c` installed, the checksums are
    computed over the buffer and the file written at once; otherwise through `tf.io.TFRecordWriter`, one record at
    a time (several times slower, the same bytes)."""
    first = 0 if first_record is None else 1
    with atomic_path(path) as temporary:
        if CRC32C is None:
            records = (framed.example(index) for index in range(first, len(framed)))
            with tf.io.TFRecordWriter(os.fspath(temporary)) as writer:
                for record in itertools.chain([first_record] * first, records):
                    writer.write(record)
            return
        fill_checksums(framed, first)
        with open(temporary, "wb") as file:
            file.write(frame_record(first_record) if first else b"")
            file.write(framed.buffer[framed.record_starts[first] :])


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


IMAGE_LABEL_SPEC = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


def image_label_header(path):
    """The files of an (image, label) TFRecord path or glob pattern of shards, and what their first records
    say: `(files, total records of all files, classes)` (classes: the largest of the files' values)."""
    files, total, classes = tfrecord_files(path), 0, 0
    for file in files:
        features = first_example(file).features.feature
        if "image" not in features or "classes" not in features:
            raise ValueError(f"{file}: not an (image, label) TFRecord (first record lacks 'image' / 'classes')")
        total += features["total"].int64_list.value[0]
        classes = max(classes, features["classes"].int64_list.value[0])
    return files, int(total), int(classes)


def parse_image_labels(serialized):
    """Serialized (image, label) records, any shape `S` → `(encoded images S, int64 labels S)`."""
    parsed = tf.io.parse_example(serialized, IMAGE_LABEL_SPEC)
    return parsed["image"], parsed["label"]


def read_tfrecord_dataset(path):
    """Open an (image, label) TFRecord (or shards of one: a glob pattern; each shard's first record holds its own
    `total`).

    Returns:
        `(dataset of (encoded image bytes, int64 label), total, classes)`.
    """
    files, total, classes = image_label_header(path)
    records = tf.data.TFRecordDataset(files, num_parallel_reads=AUTOTUNE)
    return records.map(parse_image_labels, num_parallel_calls=AUTOTUNE), total, classes


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
