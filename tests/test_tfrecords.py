"""tfrecords: files are written atomically (a failed write leaves nothing), headers of (image, label) records."""

import os

import cv2
import numpy as np
import pytest

import tfrecords


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "faces"
    for index in range(2):
        os.makedirs(root / str(index))
        for k in range(3):
            cv2.imwrite(str(root / str(index) / f"{k}.png"), np.full((8, 8, 3), 40 * index + k, np.uint8))
    return root


def test_folder_tfrecord_round_trip_and_failed_write_leaves_nothing(small_folder, tmp_path, monkeypatch):
    output = tmp_path / "out" / "faces.tfrecord"
    path, total, classes = tfrecords.write_tfrecord_from_folder(small_folder, output, cache_dir=tmp_path)
    assert (total, classes) == (6, 2) and os.listdir(output.parent) == ["faces.tfrecord"]
    records, total, classes = tfrecords.read_tfrecord_dataset(path)
    assert (total, classes) == (6, 2) and [int(label) for _, label in records] == [0, 0, 0, 1, 1, 1]
    assert not tfrecords.is_distill_tfrecord(path)
    examples = []

    def failing_example(*args):
        if len(examples) == 3:
            raise OSError("disk full")
        examples.append(args)
        return make_example(*args)

    make_example = tfrecords.image_label_example
    monkeypatch.setattr(tfrecords, "image_label_example", failing_example)
    with pytest.raises(OSError, match="disk full"):
        tfrecords.write_tfrecord_from_folder(small_folder, output, cache_dir=tmp_path)
    assert os.listdir(output.parent) == ["faces.tfrecord"]  # the old file is kept, no temporary file is left
    assert tfrecords.read_tfrecord_dataset(path)[1] == 6


@pytest.mark.parametrize("image_size", [0, 1, 127, 128, 16384, 3_000_000])
@pytest.mark.parametrize("label", [0, 1, 127, 128, 300_000, 2**40])
def test_image_label_record_is_the_protobuf_encoding(image_size, label):
    import tensorflow as tf

    image = np.random.default_rng(image_size).integers(0, 256, image_size, dtype=np.uint8).tobytes()
    encoded = tfrecords.image_label_record(image, label)
    assert tf.train.Example.FromString(encoded) == tfrecords.image_label_example(image, label)
    assert len(encoded) == tfrecords.image_label_example(image, label).ByteSize()
    parsed_image, parsed_label = tfrecords.parse_image_labels(tf.constant([encoded]))
    assert parsed_image.numpy()[0] == image and int(parsed_label[0]) == label


def test_image_label_record_refuses_a_negative_label():
    with pytest.raises(ValueError, match="label -1 is negative"):
        tfrecords.image_label_record(b"\xff\xd8", -1)


def test_shard_headers_add_totals_and_take_the_largest_class_count(tmp_path):
    import tensorflow as tf

    for index, (labels, classes) in enumerate([((3, 1, 2), 5), ((7,), 8)]):
        with tf.io.TFRecordWriter(str(tmp_path / f"s-{index}.tfrecord")) as writer:
            header = tfrecords.image_label_example(b"\xff\xd8", labels[0], classes, len(labels))
            writer.write(header.SerializeToString())
            for label in labels[1:]:
                writer.write(tfrecords.image_label_record(b"\xff\xd8", label))
    files, total, classes = tfrecords.image_label_header(tmp_path / "s-*.tfrecord")
    assert [os.path.basename(file) for file in files] == ["s-0.tfrecord", "s-1.tfrecord"] and (total, classes) == (4, 8)
    records, total, classes = tfrecords.read_tfrecord_dataset(tmp_path / "s-*.tfrecord")
    assert (total, classes) == (4, 8) and sorted(int(label) for _, label in records) == [1, 2, 3, 7]


def test_distill_tfrecord_round_trip(tmp_path):
    embeddings = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tfrecords.write_distill_tfrecord(tmp_path / "d.tfrecord", ["a", "b", "c"], [0, 2, 1], embeddings, True)
    assert tfrecords.is_distill_tfrecord(path)
    records, total, classes = tfrecords.read_distill_tfrecord(path)
    rows = [(name.numpy().decode(), int(label), embedding.numpy()) for name, label, embedding in records]
    assert (total, classes) == (3, 3) and [row[:2] for row in rows] == [("a", 0), ("b", 2), ("c", 1)]
    assert np.array_equal(np.stack([row[2] for row in rows]), embeddings)


def numpy_crc32c(data):
    """CRC32C of bytes-like `data` by `tfrecords.crc32c_rows` (a stand-in for google_crc32c.value)."""
    return int(tfrecords.crc32c_rows(np.frombuffer(bytes(data), np.uint8)[None])[0])


def test_crc32c_rows_gives_the_standard_check_values():
    assert numpy_crc32c(b"123456789") == 0xE3069283 and numpy_crc32c(b"") == 0
    rows = np.frombuffer(b"123456789" + bytes(9), np.uint8).reshape(2, 9)
    assert tfrecords.crc32c_rows(rows).tolist() == [0xE3069283, numpy_crc32c(bytes(9))]


@pytest.mark.parametrize("crc", ["numpy", "google_crc32c"])
@pytest.mark.parametrize("with_header", [True, False])
def test_framed_records_are_the_bytes_tf_writes(tmp_path, monkeypatch, crc, with_header):
    """Checksums over the framed buffer (`CRC32C` set) and `tf.io.TFRecordWriter` (`CRC32C` None) write the same
    file, which TensorFlow reads back: every image and label, the header record first."""
    import tensorflow as tf

    crc_function = numpy_crc32c if crc == "numpy" else pytest.importorskip("google_crc32c").value
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size, dtype=np.uint8).tobytes() for size in (1, 0, 200, 5000)]
    labels = [3, 127, 128, 2**40]
    header = tfrecords.image_label_example(images[0], labels[0], 9, 4, b"tag").SerializeToString() \
        if with_header else None
    monkeypatch.setattr(tfrecords, "CRC32C", crc_function)
    tfrecords.write_framed_records(tmp_path / "framed.tfrecord", tfrecords.frame_image_label_records(images, labels),
                                   header)
    monkeypatch.setattr(tfrecords, "CRC32C", None)
    tfrecords.write_framed_records(tmp_path / "tf.tfrecord", tfrecords.frame_image_label_records(images, labels),
                                   header)
    assert (tmp_path / "framed.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    records = list(tf.data.TFRecordDataset(str(tmp_path / "framed.tfrecord")))
    parsed = [tfrecords.parse_image_labels(record) for record in records]
    assert [(image.numpy(), int(label)) for image, label in parsed] == list(zip(images, labels, strict=True))
    first = tf.train.Example.FromString(records[0].numpy()).features.feature
    assert ("classes" in first) == with_header
    assert sorted(os.listdir(tmp_path)) == ["framed.tfrecord", "tf.tfrecord"]  # no temporary file left
