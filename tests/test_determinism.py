"""Issue 17, item 11: with a seed, training data and training runs repeat exactly. Every augmentation draw (flip,
brightness/contrast/saturation, crop, RandAugment, cutout mask, mixup) is a stateless op seeded from the seed
and the batch's index, so two builds give bitwise-equal batches, and a build resumed at epoch e gives the
batches of epoch e on."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf

import augment
import data

REPO_ROOT = Path(__file__).resolve().parents[1]
BATCH = 8
SIZE = 32
CLASSES = 6


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """6 classes of 8 noisy 32x32 JPEGs around a random colour pattern per class."""
    root = tmp_path_factory.mktemp("determinism") / "faces"
    rng = np.random.default_rng(0)
    for index in range(CLASSES):
        (root / str(index)).mkdir(parents=True)
        pattern = rng.integers(0, 255, (SIZE, SIZE, 3))
        for k in range(8):
            image = np.clip(pattern + rng.normal(0, 25, pattern.shape), 0, 255).astype(np.uint8)
            cv2.imwrite(str(root / str(index) / f"{k}.jpg"), image)
    return root


def training_batches(root, seed, epochs=2, initial_epoch=0, **options):
    """`epochs` epochs of the seeded training dataset of `root`, as NumPy arrays."""
    ds, steps = data.prepare_dataset(root, batch_size=BATCH, img_shape=(SIZE, SIZE), seed=seed,
                                     initial_epoch=initial_epoch, cache_dir=root.parent, **options)
    return [(images.numpy(), labels.numpy()) for images, labels in ds.take(epochs * steps)], steps


AUGMENTATIONS = {
    "levels 3, crop, mask, mixup": dict(random_status=3, random_crop=(28, 28, 3), random_cutout_mask_area=0.5,
                                        mixup_alpha=0.4),
    "RandAugment and mixup": dict(random_status=100, mixup_alpha=0.4),
}


@pytest.mark.parametrize("augmentation", sorted(AUGMENTATIONS))
def test_two_builds_with_the_same_seed_give_bitwise_equal_batches(faces, augmentation):
    options = AUGMENTATIONS[augmentation]
    tf.random.set_seed(1)  # the global generators do not matter
    first, steps = training_batches(faces, 0, **options)
    tf.random.set_seed(2)
    np.random.seed(2)
    second, _ = training_batches(faces, 0, **options)
    assert len(first) == len(second) == 2 * steps
    for (images, labels), (images_again, labels_again) in zip(first, second, strict=True):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)
    assert (np.concatenate([labels for _, labels in first]).max(axis=1) < 1).any()  # mixup mixed something
    other, _ = training_batches(faces, 1, **options)
    assert not all(np.array_equal(a[0], b[0]) for a, b in zip(first, other, strict=True))
    resumed, _ = training_batches(faces, 0, epochs=1, initial_epoch=1, **options)
    for (images, labels), (images_again, labels_again) in zip(first[steps:], resumed, strict=True):
        np.testing.assert_array_equal(images, images_again)
        np.testing.assert_array_equal(labels, labels_again)


def test_augmentation_functions_repeat_with_a_seed_and_vary_without():
    images = tf.constant(np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype(np.float32))
    augmenter = augment.RandomProcessImage((16, 16), random_status=3, random_crop=(12, 12, 3),
                                           random_cutout_mask_area=0.5)
    seed = tf.constant([5, 7], tf.int64)
    repeated = [augmenter.process_batch(images, seed).numpy() for _ in range(2)]
    np.testing.assert_array_equal(*repeated)
    unseeded = [augmenter.process_batch(images).numpy() for _ in range(2)]
    assert not np.array_equal(*unseeded)
    weights = [augment.mixup_weights(16, 0.4, seed)[0].numpy() for _ in range(2)]
    np.testing.assert_array_equal(*weights)
    randaugment = augment.RandAugment(magnitude=9)
    image = tf.cast(images[0], tf.uint8)
    np.testing.assert_array_equal(randaugment.distort(image, seed), randaugment.distort(image, seed))


def train_losses(faces, run_dir):
    """The per-epoch losses `python train.py --seed 0 --epochs 2` records in its history file, on a small model
    and data set. (The progress bar's intermediate readings depend on timing, so the history file is compared.)"""
    command = [sys.executable, "train.py", "--seed", "0", "--epochs", "2", "--data_path", str(faces),
               "--batch_size", str(BATCH), "--input_size", str(SIZE), "--width", "0.1", "--emb_shape", "16",
               "--random_status", "2", "--save_path", str(run_dir / "run.h5"), "--checkpoint_dir", str(run_dir)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((run_dir / "run_hist.json").read_text())["loss"]


@pytest.mark.slow
def test_two_seeded_train_py_runs_record_the_same_losses(faces, tmp_path):
    first = train_losses(faces, tmp_path / "a")
    second = train_losses(faces, tmp_path / "b")
    assert len(first) == 2 and all(np.isfinite(first)) and first == second
