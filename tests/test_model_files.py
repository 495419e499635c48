"""Loading files saved by the original Keras-2 GhostFaceNets code, and refusing files of another architecture."""

from pathlib import Path

import numpy as np
import pytest

import GhostFaceNets

FIXTURES = Path(__file__).parent / "fixtures"
V1_STEM = "reference_models/v1_w1.3_s1_bias_seed1234"


def original_v1_recipe(width=1.3):
    """GhostFaceNetV1 built with the calls the original README uses, at stem stride 1 with a GDC bias."""
    model = GhostFaceNets.buildin_models("ghostnetv1", width=width, strides=1, use_bias=True, dropout=0,
                                         emb_shape=512, output_layer="GDC", bn_momentum=0.9, bn_epsilon=1e-5,
                                         scale=True)
    model = GhostFaceNets.add_l2_regularizer_2_model(model, 5e-4)
    return GhostFaceNets.replace_ReLU_with_PReLU(model)


def assert_golden(model, golden):
    """Embeddings (plain and flipped) within 1e-4 of the largest golden magnitude."""
    tolerance = 1e-4 * np.abs(golden["embeddings"]).max()
    np.testing.assert_allclose(np.asarray(model(golden["inputs"], training=False)), golden["embeddings"],
                               atol=tolerance, rtol=0)
    flipped = golden["inputs"][:, :, ::-1]
    np.testing.assert_allclose(np.asarray(model(flipped, training=False)), golden["embeddings_flip"],
                               atol=tolerance, rtol=0)


@pytest.fixture(scope="module")
def v1_golden(shared_dir):
    return dict(np.load(shared_dir / "fixtures" / f"{V1_STEM}_golden.npz"))


def test_original_v1_weights_file_reproduces_golden_embeddings(shared_dir, v1_golden):
    model = original_v1_recipe()
    assert model.count_params() == 4_088_812
    GhostFaceNets.load_weights(model, shared_dir / "fixtures" / f"{V1_STEM}_keras2_weights.h5")
    assert_golden(model, v1_golden)


def test_original_v1_whole_model_file_opens_without_custom_objects(shared_dir, v1_golden):
    model = GhostFaceNets.load_model(shared_dir / "fixtures" / f"{V1_STEM}_keras2_model.h5")
    assert model.count_params() == 4_088_812 and len(model.layers) == 298
    assert model.get_layer("stem_conv").strides == (1, 1)
    assert_golden(model, v1_golden)


def test_original_v2_weights_load_by_name_and_reproduce_kecam_embeddings():
    golden = dict(np.load(FIXTURES / "ghostnetv2_w0.5_reference.npz"))
    model = GhostFaceNets.buildin_models("ghostnetv2", width=0.5, strides=1, use_bias=False, dropout=0,
                                         emb_shape=128, output_layer="GDC", bn_momentum=0.9, bn_epsilon=1e-5)
    model = GhostFaceNets.replace_ReLU_with_PReLU(GhostFaceNets.add_l2_regularizer_2_model(model, 5e-4))
    assert model.count_params() == int(golden["total_params"])
    GhostFaceNets.load_weights(model, FIXTURES / "ghostnetv2_w0.5_reference.h5")
    assert_golden(model, golden)


def test_original_v2_whole_model_file_is_rebuilt():
    golden = dict(np.load(FIXTURES / "ghostnetv2_w0.5_reference.npz"))
    model = GhostFaceNets.load_model(FIXTURES / "ghostnetv2_w0.5_reference.h5")
    assert model.name == "ghostnetv2" and model.output_shape == (None, 128)
    assert_golden(model, golden)


def test_wrong_architecture_names_the_first_mismatching_layer_and_changes_nothing(shared_dir):
    model = original_v1_recipe(width=1.0)
    before = [np.asarray(w).copy() for w in model.weights[:3]]
    with pytest.raises(ValueError, match=r"weighted layer #0 of the model, 'stem_conv' \[\(3, 3, 3, 16\)\].*"
                                         r"'conv2d' \[\(3, 3, 3, 20\)\].*different architecture"):
        GhostFaceNets.load_weights(model, shared_dir / "fixtures" / f"{V1_STEM}_keras2_weights.h5")
    for weight, old in zip(model.weights[:3], before, strict=True):
        np.testing.assert_array_equal(np.asarray(weight), old)


def test_v1_weights_refused_by_a_v2_model():
    model = GhostFaceNets.buildin_models("ghostnetv1", width=0.5, strides=1, emb_shape=128, dropout=0,
                                         bn_momentum=0.9, bn_epsilon=1e-5)
    with pytest.raises(ValueError, match="different architecture"):
        GhostFaceNets.load_weights(model, FIXTURES / "ghostnetv2_w0.5_reference.h5")


def test_missing_and_non_hdf5_files_have_clear_errors(tmp_path):
    model = GhostFaceNets.buildin_models("ghostnetv1", width=0.3, input_shape=(32, 32, 3), emb_shape=8)
    with pytest.raises(FileNotFoundError, match=r"nothing_here\.h5"):
        GhostFaceNets.load_weights(model, tmp_path / "nothing_here.h5")
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match=r"bogus\.h5: not an HDF5 file"):
        GhostFaceNets.load_weights(model, bogus)
