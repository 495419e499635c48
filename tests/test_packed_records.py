"""packed_records: an insightface .rec (and a class-folder tree) packed into TFRecord shards in one streaming pass
(bytes and labels round-trip, bad records reported and skipped, no per-image file, resume after a kill gives the
same shards), and the shard reader of `data.prepare_dataset` / `train.Train` (seeded order repeats, `initial_epoch`
resumes exactly)."""

import os
import warnings

import cv2
import numpy as np
import pytest
import tensorflow as tf
from test_recordio import write_insightface_rec

import data
import packed_records
import prepare_data
import tfrecords
from preprocess import denormalize

IMAGES, CLASSES = 40, 5
NOT_AN_IMAGE_KEY, BAD_LABEL_KEY, TRUNCATED_KEY = 8, 13, IMAGES  # record keys start at 1
BAD_KEYS = {NOT_AN_IMAGE_KEY, BAD_LABEL_KEY, TRUNCATED_KEY}


def flat_jpeg(index, size=16):
    """A JPEG of one flat grey level that tells image `index` apart after decoding (level 6·index)."""
    return cv2.imencode(".jpg", np.full((size, size, 3), 6 * index, np.uint8))[1].tobytes()


def write_rec(folder):
    """train.rec / train.idx: IMAGES flat JPEGs, label index % CLASSES; one record is not an image, one has a
    negative label and the last one is cut short. Returns `{image bytes: label}` of the good records."""
    images = [(float(index % CLASSES), flat_jpeg(index)) for index in range(IMAGES)]
    images[NOT_AN_IMAGE_KEY - 1] = (1.0, b"these bytes are not an image")
    images[BAD_LABEL_KEY - 1] = (-1.0, images[BAD_LABEL_KEY - 1][1])
    write_insightface_rec(folder, images, truncate_last=10)
    return {image: int(label) for key, (label, image) in enumerate(images, start=1) if key not in BAD_KEYS}


@pytest.fixture
def rec_dir(tmp_path):
    folder = tmp_path / "faces_rec"
    folder.mkdir()
    return folder, write_rec(folder)


def read_shard_records(path):
    """`(list of (image bytes, label), first record's features)` of one shard."""
    rows = [tfrecords.parse_image_labels(record) for record in tf.data.TFRecordDataset(str(path))]
    return [(image.numpy(), int(label)) for image, label in rows], tfrecords.first_example(path).features.feature


def pack_quietly(*arguments, **options):
    """`packed_records.rec_to_tfrecord` with its skip warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return packed_records.rec_to_tfrecord(*arguments, **options)


# ----------------------------------------------------------------------------------------------------------------
# Conversion


def test_rec_round_trips_bytes_and_labels_and_reports_the_bad_records(rec_dir, tmp_path):
    folder, expected = rec_dir
    output = tmp_path / "out" / "faces.tfrecord"
    with pytest.warns(UserWarning) as caught:
        report = packed_records.rec_to_tfrecord(folder, output, shards=3)
    assert sorted(os.listdir(output.parent)) == [f"faces-0000{i}-of-00003.tfrecord" for i in range(3)]
    rows, totals = [], []
    for path in report.paths:
        records, header = read_shard_records(path)
        rows += records
        totals.append(header["total"].int64_list.value[0])
        assert header["classes"].int64_list.value[0] == CLASSES and len(records) == totals[-1]
    assert len(rows) == len(expected) == IMAGES - 3 and dict(rows) == expected  # every good image once, its label
    assert [image for image, _ in rows] != list(expected)  # written in a shuffled order
    assert sum(totals) == report.written == 37 and min(totals) >= 13 - 3 and report.classes == CLASSES
    problems = dict(report.problems)
    assert set(problems) == BAD_KEYS
    rec_path = str(folder / "train.rec")
    assert f"{rec_path} key {BAD_LABEL_KEY}: label -1.0 is not a non-negative integer" in problems[BAD_LABEL_KEY]
    assert f"{rec_path}: truncated record" in problems[TRUNCATED_KEY]
    assert "not an image" in problems[NOT_AN_IMAGE_KEY]
    messages = "\n".join(str(warning.message) for warning in caught)
    assert all(f"{rec_path}: skipping {key}:" in messages for key in BAD_KEYS)


def test_conversion_writes_no_file_per_image(rec_dir, tmp_path, monkeypatch):
    """While each shard is written, the output folder holds only finished shards and the shard being written,
    and the temporary-file folder stays empty; nothing else appears anywhere under tmp_path."""
    import tempfile

    folder, _ = rec_dir
    temp_dir, output = tmp_path / "tmp", tmp_path / "out" / "faces.tfrecord"
    temp_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_dir))
    listings, write = [], tfrecords.write_framed_records

    def listing_write(path, framed, first_record):
        write(path, framed, first_record)
        listings.append((sorted(os.listdir(output.parent)), os.listdir(temp_dir)))

    monkeypatch.setattr(tfrecords, "write_framed_records", listing_write)
    pack_quietly(folder, output, shards=4)
    shards = [f"faces-0000{i}-of-00004.tfrecord" for i in range(4)]
    assert listings == [(shards[: index + 1], []) for index in range(4)]
    files = sorted(os.path.relpath(os.path.join(root, name), tmp_path)
                   for root, _, names in os.walk(tmp_path) for name in names)
    assert files == sorted(["faces_rec/train.idx", "faces_rec/train.rec", *(f"out/{name}" for name in shards)])


def test_resume_after_a_kill_gives_the_shards_of_an_uninterrupted_run(rec_dir, tmp_path, monkeypatch):
    folder, _ = rec_dir
    full = pack_quietly(folder, tmp_path / "full" / "faces.tfrecord", shards=4)
    killed_output = tmp_path / "killed" / "faces.tfrecord"
    writes, write = [], tfrecords.write_framed_records

    def killed_at_the_third_shard(path, framed, first_record):
        writes.append(path)
        if len(writes) == 3:
            raise KeyboardInterrupt("simulated kill")
        write(path, framed, first_record)

    monkeypatch.setattr(tfrecords, "write_framed_records", killed_at_the_third_shard)
    with pytest.raises(KeyboardInterrupt), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed_records.rec_to_tfrecord(folder, killed_output, shards=4)
    assert sorted(os.listdir(killed_output.parent)) == [f"faces-0000{i}-of-00004.tfrecord" for i in range(2)]
    monkeypatch.setattr(tfrecords, "write_framed_records", write)
    resumed = pack_quietly(folder, killed_output, shards=4)
    assert resumed.finished_shards == resumed.paths[:2] and resumed.written + resumed.resumed == full.written
    assert {key for key, _ in resumed.problems} <= BAD_KEYS
    for full_path, resumed_path in zip(full.paths, resumed.paths, strict=True):
        with open(full_path, "rb") as full_file, open(resumed_path, "rb") as resumed_file:
            assert full_file.read() == resumed_file.read(), resumed_path


def test_a_shard_of_another_conversion_is_refused(rec_dir, tmp_path):
    folder, _ = rec_dir
    output = tmp_path / "faces.tfrecord"
    pack_quietly(folder, output, shards=2, shuffle_seed=0)
    with pytest.raises(ValueError, match=r"faces-00000-of-00002\.tfrecord belongs to another conversion"):
        pack_quietly(folder, output, shards=2, shuffle_seed=1)


def test_folder_tree_packs_with_its_labels_and_class_names(tmp_path):
    root = tmp_path / "faces"
    expected = {}
    for index in range(12):
        class_dir = root / f"id{index % 3}"
        class_dir.mkdir(parents=True, exist_ok=True)
        (class_dir / f"{index}.jpg").write_bytes(flat_jpeg(index))
        expected[flat_jpeg(index)] = index % 3
    (root / "id1" / "empty.jpg").write_bytes(b"")
    output = tmp_path / "out" / "faces.tfrecord"
    with pytest.warns(UserWarning, match=r"skipping .*empty\.jpg: truncated, empty or not an image"):
        report = packed_records.folder_to_tfrecord(root, output, shards=2)
    rows = [row for path in report.paths for row in read_shard_records(path)[0]]
    assert dict(rows) == expected and len(rows) == 12 and report.classes == 3
    assert [key for key, _ in report.problems] == [str(root / "id1" / "empty.jpg")]
    assert (tmp_path / "out" / "faces_classes.txt").read_text() == "id0\nid1\nid2\n"


def test_cli_packs_a_rec_and_prints_a_summary(rec_dir, tmp_path, capsys):
    folder, _ = rec_dir
    output = tmp_path / "faces.tfrecord"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert prepare_data.main(["-D", str(folder), "--tfrecord", str(output), "--shards", "2"]) == 0
    printed = capsys.readouterr().out
    assert "2 shards (0 already finished), 37 records written, 0 in finished shards, 3 unreadable items skipped, " \
           "5 classes" in printed
    assert f"skipped {BAD_LABEL_KEY}: " in printed
    assert f"Train(data_path='{tmp_path}/faces-*-of-00002.tfrecord', ...)" in printed
    assert prepare_data.main(["-D", str(folder), "--tfrecord", str(output), "--shards", "2"]) == 0
    assert "2 shards (2 already finished), 0 records written, 37 in finished shards" in capsys.readouterr().out


def test_default_shard_count_and_runs():
    assert [packed_records.default_shard_count(images) for images in (0, 1, 50_000, 50_001)] == [1, 1, 1, 2]
    members = packed_records.shard_members(10, 3, None)
    assert [run.tolist() for run in members] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]
    shuffled = np.concatenate(packed_records.shard_members(10, 3, 0))
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))


# ----------------------------------------------------------------------------------------------------------------
# Reading shards


@pytest.fixture
def shard_pattern(tmp_path):
    """40 flat 16x16 JPEGs (image i has grey level 6·i, class i % 5) packed into 4 shards; their glob pattern."""
    root = tmp_path / "faces"
    for index in range(IMAGES):
        (root / str(index % CLASSES)).mkdir(parents=True, exist_ok=True)
        (root / str(index % CLASSES) / f"{index}.jpg").write_bytes(flat_jpeg(index))
    packed_records.folder_to_tfrecord(root, tmp_path / "shards" / "faces.tfrecord", shards=4)
    return str(tmp_path / "shards" / "faces-*-of-00004.tfrecord")


def image_ids(ds, batches):
    """The image index (grey level / 6) of every image of the first `batches` batches, one list per batch."""
    iterator = iter(ds)
    ids = []
    for _ in range(batches):
        images, labels = next(iterator)
        ids.append([round(level / 6) for level in denormalize(images.numpy()).mean(axis=(1, 2, 3))])
        assert [index % CLASSES for index in ids[-1]] == np.argmax(labels.numpy(), axis=1).tolist()
    return ids


def shard_dataset(pattern, **options):
    """`data.prepare_dataset` of the shards: batches of 8 16x16 images, flips, window of 16 records."""
    return data.prepare_dataset(pattern, batch_size=8, img_shape=(16, 16), random_status=0, shuffle_buffer_size=16,
                                **options)


def test_seeded_shard_reading_repeats_and_resumes_at_an_epoch(shard_pattern):
    ds, steps = shard_dataset(shard_pattern, seed=3)
    assert steps == IMAGES // 8
    three_epochs = image_ids(ds, 3 * steps)
    assert image_ids(shard_dataset(shard_pattern, seed=3)[0], 3 * steps) == three_epochs
    epochs = [np.concatenate(three_epochs[epoch * steps : (epoch + 1) * steps]).tolist() for epoch in range(3)]
    assert all(sorted(epoch) == list(range(IMAGES)) for epoch in epochs)  # every image once per epoch
    assert epochs[0] != epochs[1] != epochs[2]  # a new order every epoch
    resumed, _ = shard_dataset(shard_pattern, seed=3, initial_epoch=2)
    assert image_ids(resumed, steps) == three_epochs[2 * steps :]
    first_batch = next(iter(resumed))[0].numpy()
    assert np.array_equal(first_batch, next(iter(shard_dataset(shard_pattern, seed=3, initial_epoch=2)[0]))[0])
    assert image_ids(shard_dataset(shard_pattern, seed=4)[0], steps) != three_epochs[:steps]


def test_unseeded_and_evaluation_reading(shard_pattern):
    ds, steps = shard_dataset(shard_pattern)
    ids = image_ids(ds, 2 * steps)
    assert steps == 5 and all(len(set(batch)) == 8 for batch in ids)
    assert sorted(set(np.concatenate(ids).tolist())) == list(range(IMAGES))
    evaluation, eval_steps = data.prepare_dataset(shard_pattern, batch_size=16, img_shape=(16, 16), is_train=False)
    ids = np.concatenate(image_ids(evaluation, eval_steps)).tolist()
    assert eval_steps == 3 and sorted(ids) == list(range(IMAGES))


def test_train_runs_from_a_shard_pattern(tmp_path):
    import keras

    import losses
    import synthetic_faces
    import train

    train_dir, _ = synthetic_faces.build_demo(tmp_path / "demo", train_ids=6, images_per_id=8, test_ids=4,
                                              test_images_per_id=6, num_pairs=10, workers=1)
    packed_records.folder_to_tfrecord(train_dir, tmp_path / "shards" / "faces.tfrecord", shards=3)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(16, name="embedding")(features), name="tiny")
    tt = train.Train(str(tmp_path / "shards" / "faces-*-of-00003.tfrecord"), "tiny.h5", basic_model=model,
                     batch_size=16, checkpoint_dir=tmp_path / "checkpoints", jit_compile=False, verbose=0, seed=0,
                     random_status=0)
    assert tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2,
                      "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}]) == 2
    history = tt.my_history.history
    assert tt.classes == 6 and tt.steps_per_epoch == 3 and len(history["loss"]) == 2
    assert np.all(np.isfinite(history["loss"]))


def test_numpy_image_check_agrees_with_image_decode():
    from image_decode import looks_like_complete_image

    jpeg, png = flat_jpeg(3), cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()
    samples = [b"", b"\xff", b"\xff\xd8", b"\xff\xd8\xff", b"\xff\xd8\xff\xd9", jpeg, jpeg[:-2], jpeg + bytes(10),
               jpeg + bytes(40), png, png[:-12], png + b"x", b"GIF89a", b"GIF", b"BM", b"B", b"RIFF\0\0", b"\xff\x0a",
               b"\x00\x00\x00\x0c", b"\x00\x00\x00", b"\x89PNG" + bytes(40) + b"IEND", b"these bytes are not an image"]
    lengths = np.array([len(sample) for sample in samples])
    starts = np.cumsum(lengths) - lengths
    buffer = np.frombuffer(b"".join(samples), np.uint8)
    expected = looks_like_complete_image(tf.constant(samples)).numpy()
    assert packed_records.complete_images(buffer, starts, lengths).tolist() == expected.tolist()
    assert 0 < expected.sum() < len(samples) - 5


def test_split_and_multi_label_records_are_packed_in_order(tmp_path):
    from recordio import MAGIC_BYTES

    split_image = b"\xff\xd8\xff\xe0" + bytes(16) + MAGIC_BYTES + b"tail" + MAGIC_BYTES + b"\xff\xd9"
    images = [(0.0, flat_jpeg(1)), (1.0, split_image), ([2.0, 0.5], flat_jpeg(3)), (3.0, flat_jpeg(4))]
    write_insightface_rec(tmp_path, images)
    report = packed_records.rec_to_tfrecord(tmp_path, tmp_path / "out" / "faces.tfrecord", shards=1,
                                            shuffle_seed=None)
    rows, header = read_shard_records(report.paths[0])
    assert rows == [(flat_jpeg(1), 0), (split_image, 1), (flat_jpeg(3), 2), (flat_jpeg(4), 3)]
    assert header["total"].int64_list.value[0] == 4 and header["classes"].int64_list.value[0] == 4
    assert report.problems == []
