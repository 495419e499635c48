"""gen_megaface.py: the devkit feature file layout, paths, embedding, noise removal and the CLI."""

import struct

import cv2
import numpy as np
import pytest

import gen_megaface


def test_feature_file_round_trip_and_exact_bytes(tmp_path):
    feature = np.array([0.5, -0.25, 1.0], dtype=np.float32)
    path = tmp_path / "sub" / "x_algo.bin"
    gen_megaface.write_feature(str(path), feature)
    data = path.read_bytes()
    assert len(data) == 16 + 3 * 4
    assert struct.unpack("<4i", data[:16]) == (3, 1, 4, 5)
    assert struct.unpack("<3f", data[16:]) == (0.5, -0.25, 1.0)
    np.testing.assert_array_equal(gen_megaface.read_feature(str(path)), feature)

    path.write_bytes(struct.pack("<4i", 4, 1, 4, 5) + feature.tobytes())  # header says 4 values, file has 3
    with pytest.raises(ValueError, match="x_algo"):
        gen_megaface.read_feature(str(path))


def test_feature_paths_follow_the_devkit_layout():
    assert gen_megaface.feature_path("out", "facescrub", "Adam_Brody/Adam_Brody_1.png", "gfn") == \
        "out/facescrub/Adam_Brody/Adam_Brody_1.png_gfn.bin"
    assert gen_megaface.feature_path("out", "megaface", "x/123/45/678.jpg", "gfn") == \
        "out/megaface/123/45/678.jpg_gfn.bin"


def write_images(root, names, size, seed=0):
    """Random BGR images at `root/<name>` of `size` pixels; returns them by name."""
    rng = np.random.default_rng(seed)
    images = {}
    for name in names:
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), image)
        images[name] = image
    return images


def channel_means(images):
    """A stand-in model: RGB channel means plus 1 (uint8 (B, H, W, 3) → (B, 3))."""
    assert images.dtype == np.uint8 and images.shape[1:] == (112, 112, 3)
    return images.reshape(len(images), -1, 3).mean(axis=1) + 1.0


def test_generate_features_writes_normalised_embeddings(tmp_path, caplog):
    names = ["P1/a.png", "P1/b.png", "P2/c.png"]
    images = write_images(tmp_path / "fs", names, 112)
    write_images(tmp_path / "fs", ["P2/big.png"], 120, seed=1)
    (tmp_path / "fs_lst").write_text("\n".join([*names, "P2/big.png"]) + "\n")
    count = gen_megaface.generate_features(channel_means, str(tmp_path / "fs_lst"), str(tmp_path / "fs"),
                                           str(tmp_path / "out"), "facescrub", "t", batch_size=2)
    assert count == 4
    for name in names:
        expected = images[name][:, :, ::-1].reshape(-1, 3).mean(axis=0) + 1.0
        feature = gen_megaface.read_feature(str(tmp_path / "out" / "facescrub" / f"{name}_t.bin"))
        np.testing.assert_allclose(feature, expected / np.linalg.norm(expected), rtol=1e-6)
    assert "1 of 4 images were resized" in caplog.text

    (tmp_path / "bad_lst").write_text("P9/none.png\n")
    with pytest.raises(FileNotFoundError, match="none"):
        gen_megaface.generate_features(channel_means, str(tmp_path / "bad_lst"), str(tmp_path / "fs"),
                                       str(tmp_path / "out"), "facescrub")


def test_remove_noises_on_crafted_features(tmp_path):
    features_in, features_out = tmp_path / "in", tmp_path / "out"
    facescrub = {"A/a1.png": [1.0, 0.0], "A/a2.png": [0.0, 1.0], "A/a3.png": [-1.0, 0.0], "B/b1.png": [0.6, 0.8]}
    megaface = {"m/1/2/x.jpg": [1.0, 0.0], "m/1/2/y.jpg": [0.0, 1.0]}
    for dataset, items in (("facescrub", facescrub), ("megaface", megaface)):
        for name, value in items.items():
            gen_megaface.write_feature(gen_megaface.feature_path(str(features_in), dataset, name, "t"), value)
    (tmp_path / "fs_lst").write_text("\n".join(facescrub) + "\n")
    (tmp_path / "mf_lst").write_text("\n".join(megaface) + "\n")
    (tmp_path / "fs_noise").write_text("# noisy FaceScrub images\na3.png\n")
    (tmp_path / "mf_noise").write_text("0\t1/2/y.jpg\n")
    replaced, marked = gen_megaface.remove_noises(str(features_in), str(features_out), str(tmp_path / "fs_lst"),
                                                  str(tmp_path / "mf_lst"), "t", str(tmp_path / "fs_noise"),
                                                  str(tmp_path / "mf_noise"))
    assert (replaced, marked) == (1, 1)

    def out(dataset, name):
        return gen_megaface.read_feature(gen_megaface.feature_path(str(features_out), dataset, name, "t"))

    np.testing.assert_array_equal(out("facescrub", "A/a1.png"), [1, 0, 0])
    np.testing.assert_array_equal(out("facescrub", "B/b1.png"), np.float32([0.6, 0.8, 0]))
    # a3 is replaced by the sum of A's clean features [1, 1, 0] plus U(±0.001) noise, normalised.
    np.testing.assert_allclose(out("facescrub", "A/a3.png"), [0.5**0.5, 0.5**0.5, 0], atol=1e-3)
    assert out("facescrub", "A/a3.png")[2] == 0 and abs(np.linalg.norm(out("facescrub", "A/a3.png")) - 1) < 1e-6
    np.testing.assert_array_equal(out("megaface", "m/1/2/x.jpg"), [1, 0, 0])
    np.testing.assert_array_equal(out("megaface", "m/1/2/y.jpg"), [0, 1, 100])

    replaced, marked = gen_megaface.remove_noises(str(features_in), str(tmp_path / "plain"),
                                                  str(tmp_path / "fs_lst"), algo="t")
    assert (replaced, marked) == (0, 0)
    np.testing.assert_array_equal(
        gen_megaface.read_feature(gen_megaface.feature_path(str(tmp_path / "plain"), "facescrub", "A/a3.png", "t")),
        [-1, 0, 0])


def test_cli_with_a_model_file(tmp_path, monkeypatch):
    # The original's main() raised UnboundLocalError before loading any model.
    import keras

    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    keras.Model(inputs, keras.layers.Dense(4)(pooled)).save(tmp_path / "m.keras")
    write_images(tmp_path / "fs", ["P1/a.png"], 112)
    write_images(tmp_path / "mf", ["d/0/1/z.jpg"], 100)
    (tmp_path / "fs_lst").write_text("P1/a.png\n")
    (tmp_path / "mf_lst").write_text("d/0/1/z.jpg\n")
    (tmp_path / "mf_noise").write_text("0/1/z.jpg\n")
    monkeypatch.chdir(tmp_path)
    gen_megaface.main(["--model", "m.keras", "--facescrub-lst", "fs_lst", "--facescrub-root", "fs",
                       "--megaface-lst", "mf_lst", "--megaface-root", "mf", "--output", "out", "--algo", "k",
                       "--megaface-noises", "mf_noise", "--output-clean", "clean"])
    feature = gen_megaface.read_feature("out/facescrub/P1/a.png_k.bin")
    assert feature.shape == (4,) and abs(np.linalg.norm(feature) - 1) < 1e-5
    assert gen_megaface.read_feature("out/megaface/0/1/z.jpg_k.bin").shape == (4,)
    assert gen_megaface.read_feature("clean/megaface/0/1/z.jpg_k.bin")[-1] == 100
