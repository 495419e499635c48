"""RandAugment / AutoAugment ops against independent NumPy / PIL formulas, and inside tf.data."""

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps

import augment


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    base = rng.integers(40, 200, (16, 20, 3)).astype(np.uint8)
    base[:4] = 250
    return base


def test_pixel_ops_match_formulas(image):
    t = tf.constant(image)
    assert np.array_equal(augment.invert(t), 255 - image)
    assert np.array_equal(augment.solarize(t, 128), np.where(image < 128, image, 255 - image))
    added = np.clip(image.astype(int) + 30, 0, 255).astype(np.uint8)
    assert np.array_equal(augment.solarize_add(t, 30, 128), np.where(image < 128, added, image))
    assert np.array_equal(augment.posterize(t, 3), image & 0b11100000)
    assert np.array_equal(augment.brightness(t, 0.5), (image * 0.5).astype(np.uint8))
    for op in (augment.color, augment.contrast, augment.brightness, augment.sharpness):
        assert np.array_equal(op(t, 1.0), image), op.__name__  # factor 1 is the identity


def test_equalize_and_autocontrast_match_pil(image):
    t = tf.constant(image)
    assert np.array_equal(augment.equalize(t), np.asarray(ImageOps.equalize(Image.fromarray(image))))
    low, high = image.min((0, 1)), image.max((0, 1))
    expected = np.clip((image - low) * (255.0 / (high - low)), 0, 255).astype(np.uint8)
    assert np.abs(augment.autocontrast(t).numpy().astype(int) - expected).max() <= 1


def test_geometric_ops_fill_with_grey(image):
    t = tf.constant(image)
    shifted = augment.translate_x(t, 5.0).numpy()
    assert np.array_equal(shifted[:, 5:], image[:, :-5]) and (shifted[:, :5] == 128).all()
    shifted = augment.translate_y(t, -3.0).numpy()
    assert np.array_equal(shifted[:-3], image[3:]) and (shifted[-3:] == 128).all()
    assert np.array_equal(augment.rotate(t, 0.0), image)
    assert np.array_equal(
        np.rot90(augment.rotate(tf.constant(np.zeros((9, 9, 3), np.uint8) + 7), 90.0).numpy()), np.zeros((9, 9, 3)) + 7
    )
    cut = augment.cutout(t, 3, 128).numpy()
    assert 9 <= (cut != image).any(-1).sum() <= 36 and set(np.unique(cut[(cut != image).any(-1)])) == {128}


def test_level_to_arg_mapping():
    assert augment.level_to_arg("Color", 5, 40, 100) == (1.0,)
    assert augment.level_to_arg("Posterize", 5, 40, 100) == (2,)
    assert augment.level_to_arg("Solarize", 10, 40, 100) == (256,)
    assert augment.level_to_arg("SolarizeAdd", 5, 40, 100) == (55,)
    assert augment.level_to_arg("Cutout", 5, 40, 100) == (20,)
    assert abs(float(augment.level_to_arg("Rotate", 5, 40, 100)[0])) == pytest.approx(15.0)
    assert abs(float(augment.level_to_arg("ShearX", 10, 40, 100)[0])) == pytest.approx(0.3)
    assert abs(float(augment.level_to_arg("TranslateY", 5, 40, 250)[0])) == pytest.approx(125.0)
    with pytest.raises(ValueError, match="unknown augmentation op"):
        augment.level_to_arg("Blur", 5, 40, 100)


def test_policies_and_augmenters_run_inside_tf_data(image):
    assert len(augment.policy_v0()) == 25 and len(augment.policy_simple()) == 13
    assert all(name in augment.NAME_TO_FUNC for sub in augment.policy_v0() for name, _, _ in sub)
    tf.random.set_seed(1)
    augmenters = [augment.RandAugment(magnitude=7), augment.AutoAugment("v0"), augment.AutoAugment("simple")]
    for augmenter in augmenters:
        ds = tf.data.Dataset.from_tensors(tf.cast(image, tf.float32)).repeat(12).map(augmenter.distort)
        outputs = [x.numpy() for x in ds]
        assert all(out.shape == image.shape and out.dtype == np.float32 for out in outputs)
        assert any(not np.array_equal(out, image) for out in outputs)
    fixed = augment.AutoAugment("test").distort(tf.constant(image)).numpy()
    expected = augment.equalize(augment.translate_x(tf.constant(image), 40.0)).numpy()
    mirrored = augment.equalize(augment.translate_x(tf.constant(image), -40.0)).numpy()
    assert np.array_equal(fixed, expected) or np.array_equal(fixed, mirrored)
    with pytest.raises(ValueError, match="unknown AutoAugment policy"):
        augment.AutoAugment("v3")


def test_training_augmentation_and_mixup_live_in_augment():
    import data

    assert data.RandomProcessImage is augment.RandomProcessImage and data.mixup is augment.mixup
    values = tf.constant(np.arange(12, dtype=np.float32).reshape(3, 2, 2))
    weight, partner = tf.constant([1.0, 0.75, 0.5]), tf.constant([2, 0, 1])
    mixed = augment.mix_with_partner(values, weight, partner).numpy()
    expected = values.numpy() * np.reshape([1.0, 0.75, 0.5], (3, 1, 1))
    expected += values.numpy()[[2, 0, 1]] * np.reshape([0.0, 0.25, 0.5], (3, 1, 1))
    np.testing.assert_allclose(mixed, expected)
    tf.random.set_seed(1)
    weight, partner = augment.mixup_weights(64, 0.4)
    weight = weight.numpy()
    assert ((weight >= 0.5) & (weight <= 1)).all() and not ((weight > 0.9) & (weight < 1)).any()
    assert sorted(partner.numpy().tolist()) == list(range(64))
