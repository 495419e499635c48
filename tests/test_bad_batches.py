"""Issue 17, items 4 and 10: a batch whose images are all unreadable is skipped (counted, reported) and training
goes on; a JPEG damaged in the middle (valid header, broken entropy data) is named and only that image is left
out of its batch."""

import logging

import cv2
import keras
import numpy as np
import pytest
from conftest import build_tiny_embedding_model

import data

BATCH = 8
SIZE = 32


def write_class_folders(root, corrupt):
    """Classes "0", "1", "2" of `BATCH` JPEGs each (class value in the pixels); `corrupt(path, encoded)` may
    replace the bytes of class 1's files."""
    for index in range(3):
        folder = root / str(index)
        folder.mkdir(parents=True)
        for k in range(BATCH):
            image = np.full((SIZE, SIZE, 3), 40 + 80 * index, np.uint8)
            image[:, : SIZE // 2] += np.uint8(k)  # not flat, so the JPEG has entropy data to damage
            encoded = cv2.imencode(".jpg", image)[1].tobytes()
            path = folder / f"{k:02d}.jpg"
            path.write_bytes(corrupt(path, encoded) if index == 1 else encoded)
    return root


def damaged_in_the_middle(encoded):
    """The JPEG with a marker the decoder refuses written into its entropy-coded data (header and end intact)."""
    middle = encoded.index(b"\xff\xda") + 20
    return encoded[:middle] + b"\xff\xc5\x00\x10" + encoded[middle + 4 :]


def in_scan_order(root, skipped, random_status=-1, **options):
    """The dataset of `root` without shuffling (a buffer of 1), so batch i holds files 8i..8i+7."""
    return data.prepare_dataset(root, batch_size=BATCH, img_shape=(SIZE, SIZE), random_status=random_status,
                                shuffle_buffer_size=1, cache_dir=root.parent, skipped_images=skipped, **options)


def test_a_batch_of_only_unreadable_images_is_skipped_and_the_epoch_goes_on(tmp_path, caplog):
    root = write_class_folders(tmp_path / "faces", lambda path, encoded: encoded[: len(encoded) // 2])
    skipped = data.SkippedImages()
    ds, steps = in_scan_order(root, skipped)
    assert steps == 3
    assert [len(labels) for _, labels in ds.take(6)] == [BATCH] * 6  # before: a (0, 32, 32, 3) batch every epoch
    model = keras.Sequential([build_tiny_embedding_model(size=SIZE, embedding_size=8, pool=4),
                              keras.layers.Dense(3, activation="softmax")])
    model.compile("sgd", "categorical_crossentropy")
    with caplog.at_level(logging.WARNING):
        history = model.fit(ds, steps_per_epoch=steps, epochs=2, verbose=0)
    assert len(history.history["loss"]) == 2 and np.isfinite(history.history["loss"]).all()
    # Class 1's batch, in each epoch (prefetching may have read one more).
    assert skipped.batches >= 2 and skipped.count % BATCH == 0 and skipped.count >= BATCH * skipped.batches
    assert {path.split("/")[-2] for path in skipped.files} == {"1"} and len(skipped.files) == BATCH
    assert any("no readable image" in record.getMessage() for record in caplog.records)
    labels = [np.argmax(y, axis=1) for _, y in ds.take(4)]
    assert [sorted(set(batch.tolist())) for batch in labels] == [[0], [2], [0], [2]]


@pytest.mark.parametrize("bad_files", [1, BATCH])
def test_a_jpeg_damaged_in_the_middle_is_named_and_only_it_is_left_out(tmp_path, caplog, bad_files):
    def corrupt(path, encoded):
        return damaged_in_the_middle(encoded) if int(path.stem) < bad_files else encoded

    root = write_class_folders(tmp_path / "faces", corrupt)
    skipped = data.SkippedImages()
    ds, _ = in_scan_order(root, skipped, is_train=False)
    with caplog.at_level(logging.WARNING):
        batches = [(images.numpy(), np.argmax(labels.numpy(), axis=1)) for images, labels in ds]
    sizes = [len(labels) for _, labels in batches]
    assert sizes == ([BATCH, BATCH] if bad_files == BATCH else [BATCH, BATCH - 1, BATCH])
    assert skipped.count == bad_files and skipped.batches == (bad_files == BATCH)
    named = {path.split("/")[-1] for path in skipped.files}
    assert named == {f"{k:02d}.jpg" for k in range(bad_files)}
    assert any("00.jpg" in record.getMessage() and "corrupt" in record.getMessage() for record in caplog.records)
    if bad_files == 1:  # the other images of the batch come out as they would without the damaged one
        images, labels = batches[1]
        assert (labels == 1).all()
        clean = write_class_folders(tmp_path / "clean", lambda path, encoded: encoded)
        clean_ds, _ = in_scan_order(clean, data.SkippedImages(), is_train=False)
        np.testing.assert_array_equal(images, list(clean_ds)[1][0].numpy()[1:])


def test_decode_failures_in_a_training_batch_keep_the_rest_of_the_batch(tmp_path):
    root = write_class_folders(tmp_path / "faces", lambda path, encoded: (
        damaged_in_the_middle(encoded) if path.stem == "03" else encoded))
    skipped = data.SkippedImages()
    ds, _ = in_scan_order(root, skipped, random_status=0, seed=1)
    sizes = [len(labels) for _, labels in ds.take(6)]
    assert sizes == [BATCH, BATCH - 1, BATCH] * 2 and skipped.count >= 2  # prefetching may read ahead
    assert {path.split("/")[-1] for path in skipped.files} == {"03.jpg"}


def test_a_damaged_record_of_a_tfrecord_is_named_by_file_and_size(tmp_path):
    root = write_class_folders(tmp_path / "faces", lambda path, encoded: (
        damaged_in_the_middle(encoded) if path.stem == "05" else encoded))
    path, total, _ = data.write_tfrecord_from_folder(root, tmp_path / "faces.tfrecord", cache_dir=tmp_path)
    skipped = data.SkippedImages()
    ds, _ = data.prepare_dataset(str(path), batch_size=BATCH, img_shape=(SIZE, SIZE), is_train=False,
                                 skipped_images=skipped)
    assert sum(len(labels) for _, labels in ds) == total - 1
    assert skipped.count == 1 and all(name.startswith(str(path)) and "bytes" in name for name in skipped.files)
