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


def test_copy_records_with_header(tmp_path):
    import tensorflow as tf

    staging = tmp_path / "part.tfrecord"
    with tf.io.TFRecordWriter(str(staging)) as writer:
        for label in (3, 1, 2):
            writer.write(tfrecords.image_label_example(b"\xff\xd8\xff", label).SerializeToString())
    assert tfrecords.copy_records_with_header(staging, tmp_path / "final.tfrecord", classes=5) == 3
    records, total, classes = tfrecords.read_tfrecord_dataset(tmp_path / "final.tfrecord")
    assert (total, classes) == (3, 5) and [int(label) for _, label in records] == [3, 1, 2]


def test_distill_tfrecord_round_trip(tmp_path):
    embeddings = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = tfrecords.write_distill_tfrecord(tmp_path / "d.tfrecord", ["a", "b", "c"], [0, 2, 1], embeddings, True)
    assert tfrecords.is_distill_tfrecord(path)
    records, total, classes = tfrecords.read_distill_tfrecord(path)
    rows = [(name.numpy().decode(), int(label), embedding.numpy()) for name, label, embedding in records]
    assert (total, classes) == (3, 3) and [row[:2] for row in rows] == [("a", 0), ("b", 2), ("c", 1)]
    assert np.array_equal(np.stack([row[2] for row in rows]), embeddings)
