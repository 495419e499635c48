"""data_drop_top_k.py on a crafted NormDense weight matrix and solid-colour images with known embedding directions."""

import os

import keras
import numpy as np
import pytest
from PIL import Image

import data_drop_top_k as ddk
from heads import NormDense

X, Y, Z = np.eye(3)
# Images are solid colours; the embedding is the mean normalised pixel (x − 127.5) / 128, so a pixel value of 128
# gives ~0 and 255 gives ~1: (255, 128, 128) points along X, (192, 239, 128) at ~60° from X, (150, 253, 128) at ~80°.
CLASS_IMAGES = {
    "0": {"x1": (255, 128, 128), "x2": (250, 128, 128), "x3": (255, 130, 128), "x60deg": (192, 239, 128),
          "x80deg": (150, 253, 128), "y": (128, 255, 128), "z": (128, 128, 255)},
    "1": {"z1": (128, 128, 255), "z2": (128, 128, 250)},
    "2": {"y1": (128, 255, 128), "y2": (128, 250, 128), "z": (128, 128, 255)},
}
# Sub-centers (K=2): class 0 → (X, Y), class 1 → (X, Y) (its Z images are 90° from both), class 2 → (Z, Y).
CENTERS = [[X, Y], [X, Y], [Z, Y]]


def write_dataset(root):
    for class_name, images in CLASS_IMAGES.items():
        os.makedirs(root / class_name)
        for image_name, colour in images.items():
            Image.fromarray(np.full((2, 2, 3), colour, dtype=np.uint8)).save(root / class_name / f"{image_name}.png")


def crafted_training_model():
    inputs = keras.Input((2, 2, 3))
    embedding = keras.layers.GlobalAveragePooling2D(name="embedding")(inputs)
    head = NormDense(units=3, loss_top_k=2, name="head")
    model = keras.Model(inputs, head(embedding))
    # Kernel (emb, classes*K), column c*K + j = sub-center j of class c; scaled to check that columns get normalised.
    kernel = np.stack([3.0 * center for class_centers in CENTERS for center in class_centers], axis=1)
    head.w.assign(kernel.astype(np.float32))
    return model


def kept_by_class(npz_path):
    with np.load(npz_path) as loaded:
        names, classes = loaded["image_names"].astype(str), loaded["image_classes"]
    kept = {}
    for name, class_id in zip(names, classes, strict=True):
        kept.setdefault(int(class_id), set()).add(os.path.splitext(os.path.basename(name))[0])
    return kept


def test_keep_near_dominant_hand_computed():
    cosines = np.array([[0.9, 0.1], [0.8, 0.3], [0.2, 0.7], [0.3, 0.25], [0.1, 0.95], [0.2, 0.9], [0.99, 0.0]])
    classes = np.array([0, 0, 0, 0, 1, 1, 1])
    keep, dominant = ddk.keep_near_dominant(cosines, classes, deg_thresh=75)  # cos 75° = 0.2588
    assert dominant == {0: 0, 1: 1}
    np.testing.assert_array_equal(keep, [True, True, False, True, True, True, False])


def test_data_drop_top_k_on_crafted_sub_centers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "faces")
    dest = ddk.data_drop_top_k(crafted_training_model(), str(tmp_path / "faces"), deg_thresh=75, seed=0,
                               cache_dir=str(tmp_path / "cache"))
    assert dest == "faces_topK2_deg75.npz" and os.path.isfile(tmp_path / dest)
    # Class 0: dominant X; the 80°, Y and Z images are dropped. Class 1: nothing within 75° → class removed.
    # Class 2: dominant Y (2 votes against 1); its Z image is dropped. Class 2 is renumbered 1.
    assert kept_by_class(tmp_path / dest) == {0: {"x1", "x2", "x3", "x60deg"}, 1: {"y1", "y2"}}


def test_data_drop_top_k_limit_and_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "faces")
    model_path = str(tmp_path / "full.keras")
    crafted_training_model().save(model_path)
    dest = ddk.main(["-M", model_path, "-D", str(tmp_path / "faces"), "-d", str(tmp_path / "clean.npz"),
                     "-t", "65", "-L", "1"])
    assert dest == str(tmp_path / "clean.npz")
    # Only class 0; at 65° (cos 0.4226) the 60° image (cos ~0.5) is still kept.
    assert kept_by_class(dest) == {0: {"x1", "x2", "x3", "x60deg"}}
    dest = ddk.main(["-M", model_path, "-D", str(tmp_path / "faces"), "-d", str(tmp_path / "tight.npz"),
                     "-t", "45", "-L", "1"])
    assert kept_by_class(dest) == {0: {"x1", "x2", "x3"}}


def test_basic_model_is_refused():
    inputs = keras.Input((2, 2, 3))
    basic = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    with pytest.raises(ValueError, match="no NormDense layer"):
        ddk.data_drop_top_k(basic, "unused")


def test_non_finite_embeddings_give_a_clear_error(tmp_path, monkeypatch):
    from evals import NonFiniteEmbeddingsError

    monkeypatch.chdir(tmp_path)
    write_dataset(tmp_path / "faces")
    inputs = keras.Input((2, 2, 3))
    embedding = keras.layers.Dense(3, name="embedding")(keras.layers.GlobalAveragePooling2D()(inputs))
    model = keras.Model(inputs, NormDense(units=3, loss_top_k=2, name="head")(embedding))
    model.get_layer("embedding").kernel.assign(np.full((3, 3), np.nan, dtype=np.float32))
    with pytest.raises(NonFiniteEmbeddingsError, match="non-finite"):
        ddk.data_drop_top_k(model, str(tmp_path / "faces"), cache_dir=str(tmp_path / "cache"))
