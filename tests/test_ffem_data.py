"""prepare_data.json_to_tfrecord (FFEM image list with boxes -> TFRecord): crops against NumPy, the per-item
report of bad entries, string / integer labels, shards, and reading the result with data.py."""

import json

import cv2
import numpy as np
import pytest
import tensorflow as tf

import data
import prepare_data


def smooth_image(height, width, period):
    """A uint8 (H, W, 3) image of smooth waves (periods of about `period` pixels), so crops at other offsets differ
    while JPEG (4:2:0 chroma) stays close to exact."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = [np.sin(2 * np.pi * (x / (1.2 * period) + c / 3)) * np.cos(2 * np.pi * (y / period + c / 5))
                for c in range(3)]
    return np.clip(127.5 + 100 * np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def numpy_bilinear(image, height, width):
    """Bilinear resize with pixel centres aligned and edges clamped (the convention of cv2.INTER_LINEAR)."""
    def axis(out_size, in_size):
        source = np.clip((np.arange(out_size) + 0.5) * in_size / out_size - 0.5, 0, in_size - 1)
        low = np.floor(source).astype(int)
        return low, np.minimum(low + 1, in_size - 1), source - low

    y0, y1, wy = axis(height, image.shape[0])
    x0, x1, wx = axis(width, image.shape[1])
    image = image.astype(np.float64)
    rows = image[y0] * (1 - wy)[:, None, None] + image[y1] * wy[:, None, None]
    return rows[:, x0] * (1 - wx)[None, :, None] + rows[:, x1] * wx[None, :, None]


def numpy_halve(image):
    """2x2 block means: pixel-area resampling to half size."""
    height, width, channels = image.shape
    return image.astype(np.float64).reshape(height // 2, 2, width // 2, 2, channels).mean(axis=(1, 3))


def read_records(path):
    """(images decoded as BGR uint8, labels, first record's features) of a TFRecord, parsed independently."""
    images, labels, first = [], [], None
    for record in tf.data.TFRecordDataset(str(path)):
        features = tf.train.Example.FromString(record.numpy()).features.feature
        first = first or features
        encoded = np.frombuffer(features["image"].bytes_list.value[0], np.uint8)
        images.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR))
        labels.append(features["label"].int64_list.value[0])
    return images, labels, first


JSON_TEXT = """{
  "a/one.png": {"label": "id10", "x1": 60, "y1": 50, "x2": 100, "y2": 90},
  "b/two.png": {"label": "id2", "x1": 100, "y1": 100, "x2": 212, "y2": 212},
  "a/one.png": {"label": "id2", "x1": 0, "y1": 0, "x2": 10, "y2": 10},
  "a/edge.png": {"label": "alice", "x1": -10, "y1": 20, "x2": 50, "y2": 80},
  "missing/x.png": {"label": "alice", "x1": 0, "y1": 0, "x2": 10, "y2": 10},
  "a/flat.png": {"label": "alice", "x1": 50, "y1": 50, "x2": 50, "y2": 90},
  "a/away.png": {"label": "alice", "x1": 250, "y1": 10, "x2": 300, "y2": 60},
  "a/text.png": {"label": "zed", "x1": "left", "y1": 0, "x2": 10, "y2": 10},
  "bad/corrupt.jpg": {"label": "id10", "x1": 0, "y1": 0, "x2": 10, "y2": 10}
}"""


@pytest.fixture
def image_root(tmp_path):
    root = tmp_path / "images"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    (root / "bad").mkdir()
    first, second = smooth_image(160, 200, period=30), smooth_image(320, 320, period=60)
    for name in ("one", "edge", "flat", "away", "text"):
        cv2.imwrite(str(root / "a" / f"{name}.png"), first)
    cv2.imwrite(str(root / "b" / "two.png"), second)
    (root / "bad" / "corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "image_list.json").write_text(JSON_TEXT)
    return root, first, second


def test_round_trip_crops_labels_and_report(tmp_path, image_root):
    root, first, second = image_root
    output = tmp_path / "faces.tfrecord"
    paths, report = prepare_data.json_to_tfrecord(tmp_path / "image_list.json", root, output, margin=0.5, size=112)

    assert paths == [str(output)]
    images, labels, header = read_records(output)
    # margin 0.5 grows each box by half its size on every side, then the crop is clipped to the image
    expected = [
        numpy_bilinear(first[30:110, 40:120], 112, 112),  # (60,50,100,90) -> 80x80, enlarged
        numpy_halve(second[44:268, 44:268]),  # (100,100,212,212) -> 224x224, halved
        numpy_bilinear(first[0:110, 0:80], 112, 112),  # (-10,20,50,80) -> (-40,-10,80,110), clipped
    ]
    assert len(images) == 3
    for name, image, target in zip(["one", "two", "edge"], images, expected, strict=True):
        error = np.abs(image.astype(np.float64) - target)
        assert image.shape == (112, 112, 3)
        assert error.mean() < 2.0 and error.max() < 16, (name, error.mean(), error.max())
    shifted = numpy_bilinear(first[34:114, 44:124], 112, 112)  # the same crop 4 pixels off
    assert np.abs(images[0] - shifted).mean() > 10

    assert report.class_names == ["alice", "id2", "id10"]  # natural order: id2 before id10
    assert labels == [2, 1, 0]
    assert header["classes"].int64_list.value[0] == 3 and header["total"].int64_list.value[0] == 3
    assert (tmp_path / "faces_classes.txt").read_text() == "alice\nid2\nid10\n"
    assert report.written == 3 and report.clipped == ["a/edge.png"]
    problems = dict(report.problems)
    assert sorted(problems) == ["a/away.png", "a/flat.png", "a/one.png", "a/text.png", "bad/corrupt.jpg",
                                "missing/x.png"]
    assert "duplicate key with a different entry" in problems["a/one.png"]
    assert "missing file" in problems["missing/x.png"] and "unreadable image" in problems["bad/corrupt.jpg"]
    assert "zero area" in problems["a/flat.png"] and "outside the 200x160 image" in problems["a/away.png"]
    assert "not numbers" in problems["a/text.png"]
    assert not list(tmp_path.glob("*.part"))


def test_data_reads_the_file_and_cli_prints_the_report(tmp_path, image_root, capsys):
    root, _, _ = image_root
    output = tmp_path / "cli.tfrecord"
    prepare_data.main(["--json", str(tmp_path / "image_list.json"), "--root", str(root), "--output", str(output),
                       "--size", "32"])
    printed = capsys.readouterr().out
    assert "3 images written, 6 entries with problems, 1 boxes clipped" in printed
    assert "missing/x.png: missing file" in printed
    _, total, classes = data.read_tfrecord_dataset(output)
    assert (total, classes) == (3, 3)
    ds, steps = data.prepare_dataset(str(output), batch_size=3, img_shape=(32, 32), is_train=False)
    images, labels = next(iter(ds))
    assert steps == 1 and images.shape == (3, 32, 32, 3) and labels.shape == (3, 3)
    np.testing.assert_array_equal(np.argmax(labels, axis=-1), [2, 1, 0])


def test_integer_labels_shards_and_shuffle(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    entries = {}
    for index in range(7):
        image = np.full((40, 40, 3), 30 * index, dtype=np.uint8)
        cv2.imwrite(str(root / f"{index}.png"), image)
        entries[f"{index}.png"] = {"label": index % 3 + 2, "x1": 5, "y1": 5, "x2": 35, "y2": 35}
    (tmp_path / "list.json").write_text(json.dumps(entries))
    paths, report = prepare_data.json_to_tfrecord(tmp_path / "list.json", root, tmp_path / "s.tfrecord", size=16,
                                                  shards=3, shuffle_seed=1)
    assert [path.rsplit("/", 1)[-1] for path in paths] == [f"s-0000{i}-of-00003.tfrecord" for i in range(3)]
    assert report.classes == 5 and report.class_names is None and report.problems == []
    seen = []
    for path in paths:
        images, labels, header = read_records(path)
        assert header["total"].int64_list.value[0] == len(labels) and header["classes"].int64_list.value[0] == 5
        seen += [(round(image.mean() / 30), label) for image, label in zip(images, labels, strict=True)]
    assert sorted(len(read_records(path)[1]) for path in paths) == [2, 2, 3]
    assert sorted(seen) == [(index, index % 3 + 2) for index in range(7)]  # every image once, with its label
    assert [index for index, _ in seen] != list(range(7))

    records, total, classes = data.read_tfrecord_dataset(tmp_path / "s-*-of-00003.tfrecord")  # all shards at once
    assert (total, classes) == (7, 5)
    assert sorted(int(label) for _, label in records) == sorted(index % 3 + 2 for index in range(7))
    with pytest.raises(FileNotFoundError, match="no TFRecord file matches"):
        data.read_tfrecord_dataset(tmp_path / "missing-*.tfrecord")


def test_bad_json_is_named(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"broken\.json: not valid JSON"):
        prepare_data.json_to_tfrecord(tmp_path / "broken.json", tmp_path, tmp_path / "x.tfrecord")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list\.json: expected a JSON object"):
        prepare_data.json_to_tfrecord(tmp_path / "list.json", tmp_path, tmp_path / "x.tfrecord")
