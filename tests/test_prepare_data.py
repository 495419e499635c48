"""prepare_data.py command line: -D (RecordIO to folders, resumable, --limit) and --synthetic."""

import os

import numpy as np
import pytest
from test_recordio import fake_jpeg, write_insightface_rec

import data
import prepare_data
import tfrecords


def test_cli_converts_with_limit_then_resumes(tmp_path, capsys):
    write_insightface_rec(tmp_path, [(float(i % 3), fake_jpeg(i)) for i in range(9)])
    (tmp_path / "property").write_text("3,112,112")
    out = tmp_path / "folders"
    prepare_data.main(["-D", str(tmp_path), "-S", str(out), "--limit", "4"])
    assert "3 classes" in capsys.readouterr().out
    assert sum(len(files) for _, _, files in os.walk(out)) == 4
    prepare_data.main(["-D", str(tmp_path), "-S", str(out)])
    assert "5 written, 4 already present" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["0", "1", "2"]


def test_cli_requires_a_source():
    with pytest.raises(SystemExit):
        prepare_data.parse_arguments([])


@pytest.mark.slow
def test_cli_synthetic_demo_feeds_the_pipeline(tmp_path):
    demo = tmp_path / "demo"
    prepare_data.main(
        [
            "--synthetic",
            str(demo),
            "--train_ids",
            "8",
            "--images_per_id",
            "4",
            "--test_ids",
            "5",
            "--pairs",
            "10",
            "--workers",
            "1",
        ]
    )
    ds, steps = data.prepare_dataset(demo / "train", batch_size=16, random_status=2, cache_dir=tmp_path)
    images, labels = next(iter(ds))
    assert steps == 2 and images.shape == (16, 112, 112, 3) and labels.shape == (16, 8)
    bins, issame = data.load_bin(demo / "val.bin")
    assert len(bins) == 40 and len(issame) == 20 and np.abs(images.numpy()).max() <= 1


# ---------------------------------------------------------------------------------------------------------------
# --json: bad entries are reported and skipped, absurd labels refused, the final files written atomically


def write_face_images(root, names):
    """A 40x40 PNG for each name in `names` under `root`."""
    import cv2

    root.mkdir(exist_ok=True)
    for index, name in enumerate(names):
        cv2.imwrite(str(root / name), np.full((40, 40, 3), 20 * index, dtype=np.uint8))


def entry(label, x1=5, y1=5, x2=35, y2=35):
    return f'{{"label": {label}, "x1": {x1}, "y1": {y1}, "x2": {x2}, "y2": {y2}}}'


def test_json_empty_image_and_nan_or_infinite_coordinates_are_reported_and_skipped(tmp_path):
    root = tmp_path / "images"
    write_face_images(root, ["good.png", "nan.png", "inf.png", "huge.png"])
    (root / "empty.jpg").write_bytes(b"")
    json_text = ("{" + ", ".join([
        f'"good.png": {entry(0)}', f'"empty.jpg": {entry(1)}', f'"nan.png": {entry(0, x1="NaN")}',
        f'"inf.png": {entry(1, x2="Infinity")}', f'"huge.png": {entry(1, y2="-Infinity")}',
    ]) + "}")
    (tmp_path / "list.json").write_text(json_text)
    output = tmp_path / "faces.tfrecord"
    paths, report = prepare_data.json_to_tfrecord(tmp_path / "list.json", root, output, size=16)
    assert paths == [str(output)] and report.written == 1
    problems = dict(report.problems)
    assert sorted(problems) == ["empty.jpg", "huge.png", "inf.png", "nan.png"]
    assert "empty image file" in problems["empty.jpg"] and str(root / "empty.jpg") in problems["empty.jpg"]
    for key in ("nan.png", "inf.png", "huge.png"):
        assert "NaN, infinite or out-of-range" in problems[key]
    assert sorted(os.listdir(tmp_path)) == ["faces.tfrecord", "images", "list.json"]  # no .part or temporary file


def test_json_label_of_10_to_the_12_is_refused_naming_the_key(tmp_path):
    root = tmp_path / "images"
    write_face_images(root, ["a.png", "b.png"])
    (tmp_path / "list.json").write_text(f'{{"a.png": {entry(0)}, "b.png": {entry(10**12)}}}')
    with pytest.raises(ValueError, match=r"list\.json: b\.png has label 1000000000000, which would make "
                                         r"1000000000001 classes \(at most 16777216\)"):
        prepare_data.json_to_tfrecord(tmp_path / "list.json", root, tmp_path / "faces.tfrecord")
    assert sorted(os.listdir(tmp_path)) == ["images", "list.json"]


def test_json_negative_and_nan_labels_are_reported_with_their_key(tmp_path):
    root = tmp_path / "images"
    write_face_images(root, ["a.png", "neg.png", "nan.png"])
    (tmp_path / "list.json").write_text(f'{{"a.png": {entry(0)}, "neg.png": {entry(-3)}, "nan.png": {entry("NaN")}}}')
    _, report = prepare_data.json_to_tfrecord(tmp_path / "list.json", root, tmp_path / "faces.tfrecord")
    problems = dict(report.problems)
    assert "label -3 is neither" in problems["neg.png"] and "label nan is neither" in problems["nan.png"]
    assert report.written == 1 and report.classes == 1


def test_json_shard_is_written_atomically_and_a_rerun_finishes_the_others(tmp_path, monkeypatch):
    import tensorflow as tf

    root = tmp_path / "images"
    write_face_images(root, ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "list.json").write_text("{" + ", ".join(f'"{name}": {entry(index % 2)}' for index, name in
                                                        enumerate(["a.png", "b.png", "c.png", "d.png"])) + "}")
    output = tmp_path / "out" / "faces.tfrecord"
    real_writer, writers = tf.io.TFRecordWriter, []

    class KilledWhileWritingTheSecondShard(real_writer):
        """A TFRecord writer that dies after one record of the second file it writes."""

        def __init__(self, path, *arguments):
            super().__init__(path, *arguments)
            writers.append(path)
            self.records = 0

        def write(self, record):
            if len(writers) == 2 and self.records == 1:
                raise RuntimeError("simulated kill")
            super().write(record)
            self.records += 1

    monkeypatch.setattr(tfrecords, "CRC32C", None)  # write through tf.io.TFRecordWriter, made to fail here
    monkeypatch.setattr(tf.io, "TFRecordWriter", KilledWhileWritingTheSecondShard)
    with pytest.raises(RuntimeError, match="simulated kill"):
        prepare_data.json_to_tfrecord(tmp_path / "list.json", root, output, size=16, shards=2)
    assert sorted(os.listdir(output.parent)) == ["faces-00000-of-00002.tfrecord"]  # no partial or temporary file
    monkeypatch.setattr(tf.io, "TFRecordWriter", real_writer)
    paths, report = prepare_data.json_to_tfrecord(tmp_path / "list.json", root, output, size=16, shards=2)
    assert [os.path.basename(path) for path in paths] == ["faces-00000-of-00002.tfrecord",
                                                          "faces-00001-of-00002.tfrecord"]
    assert report.written == 4 and data.read_tfrecord_dataset(output.parent / "faces-*-of-00002.tfrecord")[1:] == (4, 2)
