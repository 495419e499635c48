"""Heads, model rewriters, mixed precision and the MACs counter of GhostFaceNets.py, on small models."""

import logging
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import layers

import GhostFaceNets


def small_model(output_layer="GDC", activation="relu", dropout=0, **kwargs):
    """A width-0.3 GhostFaceNetV1 on 32x32 inputs with random, non-trivial BN statistics."""
    model = GhostFaceNets.buildin_models("ghostnetv1", width=0.3, strides=2, input_shape=(32, 32, 3), emb_shape=16,
                                         dropout=dropout, output_layer=output_layer, activation=activation, **kwargs)
    randomise_batchnorm(model, seed=1)
    return model


def randomise_batchnorm(model, seed):
    """Give every BN layer moving statistics that change the output (fresh ones are 0/1)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32") if "variance" in w.path or
                               "gamma" in w.path else rng.normal(0, 0.1, w.shape).astype("float32")
                               for w in layer.weights])


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")


def embed(model, images, training=False):
    return np.asarray(model(images, training=training))


def test_replace_relu_with_prelu_keeps_every_weight(images):
    model = small_model()
    before = embed(model, images)
    relu_count = sum(GhostFaceNets.is_relu_layer(layer) for layer in model.layers)
    converted = GhostFaceNets.replace_ReLU_with_PReLU(model)
    prelus = [layer for layer in converted.layers if isinstance(layer, layers.PReLU)]
    assert len(prelus) == relu_count == 41
    assert not any(GhostFaceNets.is_relu_layer(layer) for layer in converted.layers)
    assert converted.get_layer("stack4_se_prelu").get_weights()[0].flat[0] == pytest.approx(0.25)
    for prelu in prelus:  # with zero slopes a PReLU is a ReLU: the output must not change at all
        prelu.set_weights([np.zeros_like(prelu.get_weights()[0])])
    np.testing.assert_array_equal(embed(converted, images), before)


def test_replace_relu_with_a_named_activation():
    converted = GhostFaceNets.replace_ReLU_with_PReLU(small_model(), target_activation="swish")
    assert "stem_swish" in [layer.name for layer in converted.layers]
    assert converted.get_layer("stem_swish").activation is keras.activations.swish


def test_replace_relu_with_prelu_logs_one_summary_line(caplog, capsys):
    model = small_model()
    with caplog.at_level(logging.INFO, logger="GhostFaceNets"):
        GhostFaceNets.replace_ReLU_with_PReLU(model)
    records = [record for record in caplog.records if record.name == "GhostFaceNets"]
    assert len(records) == 1
    assert "41 ReLU layers" in records[0].getMessage() and "prelu" in records[0].getMessage()
    assert capsys.readouterr().out == ""


def test_l2_regularizer_keeps_weights_and_penalises_the_right_kernels(images):
    model = small_model()
    before = embed(model, images)
    weight_decay = 5e-4
    same = GhostFaceNets.add_l2_regularizer_2_model(model, weight_decay)
    assert same is model
    np.testing.assert_array_equal(embed(model, images), before)
    kernels = [layer.kernel for layer in model.layers
               if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.Dense))]
    assert len(model.losses) == len(kernels) == 54 + 42
    expected = sum(weight_decay / 2 * np.sum(np.square(np.asarray(k))) for k in kernels)
    assert float(sum(np.asarray(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-5)
    config = model.get_layer("stack2_down_dw_conv").get_config()
    assert config["depthwise_regularizer"]["config"]["l2"] == pytest.approx(weight_decay / 2)


def test_l2_regularizer_on_batchnorm_prelu_and_bias():
    model = GhostFaceNets.replace_ReLU_with_PReLU(small_model(use_bias=True))
    GhostFaceNets.add_l2_regularizer_2_model(model, 1e-3, apply_to_batch_normal=True, apply_to_bias=True)
    regularised = {w.path for layer in model.layers for w in layer.weights if w.regularizer is not None}
    assert "GDC_conv/bias" in regularised
    assert "stem_bn/gamma" in regularised and "stem_bn/beta" in regularised
    assert "stem_prelu/alpha" in regularised
    assert "stem_bn/moving_mean" not in regularised


def test_regularised_and_converted_model_survives_a_keras_save(tmp_path, images):
    model = GhostFaceNets.add_l2_regularizer_2_model(GhostFaceNets.replace_ReLU_with_PReLU(small_model()), 5e-4)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = GhostFaceNets.load_model(path)
    np.testing.assert_allclose(embed(loaded, images), embed(model, images), atol=1e-6)
    assert len(loaded.losses) == len(model.losses)


def test_v2_round_trips_through_keras_and_legacy_h5_formats(tmp_path):
    model = GhostFaceNets.buildin_models("ghostnetv2", width=0.3, strides=1, input_shape=(28, 28, 3), emb_shape=8,
                                         dropout=0)
    randomise_batchnorm(model, seed=2)
    x = np.random.default_rng(3).normal(size=(2, 28, 28, 3)).astype("float32")
    for name in ("v2.keras", "v2.h5"):
        model.save(tmp_path / name)
        np.testing.assert_allclose(embed(GhostFaceNets.load_model(tmp_path / name), x), embed(model, x), atol=1e-6)


def test_mixed_float16_conversion_computes_in_half_and_keeps_outputs():
    fixtures = Path(__file__).parent / "fixtures"
    golden = np.load(fixtures / "ghostnetv2_w0.5_reference.npz")
    model = GhostFaceNets.load_model(fixtures / "ghostnetv2_w0.5_reference.h5")
    mixed = GhostFaceNets.convert_to_mixed_float16(model)
    assert mixed.get_layer("stack2_ghost_1_prim_conv").compute_dtype == "float16"
    assert mixed.get_layer("stack2_ghost_1_prim_conv").variable_dtype == "float32"
    assert mixed.get_layer("stem_bn").compute_dtype == "float32"
    assert mixed.get_layer("embedding").compute_dtype == "float32"
    output = np.asarray(mixed(golden["inputs"], training=False))
    assert output.dtype == np.float32
    reference = golden["embeddings"]
    np.testing.assert_allclose(output, reference, atol=0.01 * np.abs(reference).max())
    cosine = np.sum(output * reference, axis=1) / np.linalg.norm(output, axis=1) / np.linalg.norm(reference, axis=1)
    assert cosine.min() > 0.9999
    restored = GhostFaceNets.convert_mixed_float16_to_float32(mixed)
    assert all(layer.compute_dtype == "float32" for layer in restored.layers)
    np.testing.assert_allclose(np.asarray(restored(golden["inputs"], training=False)), reference,
                               atol=1e-4 * np.abs(reference).max())


@pytest.mark.parametrize(("output_layer", "head_layers"), [
    ("E", ["E_batchnorm", "E_flatten", "E_dense"]),
    ("GAP", ["GAP_batchnorm", "GAP_pool", "GAP_dense"]),
    ("GNAP", ["GNAP_batchnorm", "GNAP_pool", "GNAP_dense"]),
])
def test_other_heads_build_embeddings(images, output_layer, head_layers):
    model = small_model(output_layer=output_layer, dropout=0.4)
    names = [layer.name for layer in model.layers]
    assert all(name in names for name in head_layers)
    assert f"{output_layer}_dropout" in names
    assert embed(model, images).shape == (4, 16)


def test_gnap_equals_its_formula_on_a_crafted_map():
    features = np.zeros((1, 2, 2, 2), dtype="float32")
    features[0, 0, 0] = [3, 4]  # norm 5
    features[0, 0, 1] = [1, 0]  # norm 1
    features[0, 1, 0] = [0, 2]  # norm 2
    features[0, 1, 1] = [0, 0]  # norm 0: stays zero
    norms = np.array([5, 1, 2, 0], dtype="float64")
    mean_norm = norms.mean()
    flat = features[0].reshape(4, 2).astype("float64")
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.nansum(flat * (mean_norm / norms)[:, None], axis=0) / 4
    pooled = np.asarray(GhostFaceNets.GlobalNormAwarePooling()(features))
    np.testing.assert_allclose(pooled[0], expected, rtol=1e-3)  # epsilon 1e-6 under the square root


def test_dropout_only_between_zero_and_one():
    for dropout, expected in ((0, False), (1, False), (0.2, True)):
        model = small_model(dropout=dropout)
        has_dropout = any(isinstance(layer, layers.Dropout) for layer in model.layers)
        assert has_dropout is expected, dropout


@pytest.mark.parametrize(("add_pointwise_conv", "filters"), [(True, 512), (-1, 76), (128, 128)])
def test_pointwise_block_sizes(add_pointwise_conv, filters):
    model = small_model(add_pointwise_conv=add_pointwise_conv, pointwise_conv_act="prelu")
    assert model.get_layer("pw_conv").filters == filters
    assert isinstance(model.get_layer("pw_prelu"), layers.PReLU)


def test_custom_stem_model_gets_head_and_bn_settings_in_place(images):
    inputs = keras.Input((32, 32, 3))
    nn = layers.Conv2D(8, 3, strides=2, padding="same")(inputs)
    nn = layers.BatchNormalization()(nn)
    stem = keras.Model(inputs, layers.ReLU()(nn), name="tiny")
    kernel = np.asarray(stem.layers[1].kernel).copy()
    model = GhostFaceNets.buildin_models(stem, dropout=0, emb_shape=8, input_shape=(32, 32, 3),
                                         bn_momentum=0.9, bn_epsilon=1e-5)
    assert model.name == "tiny" and model.output_shape == (None, 8)
    assert stem.layers[2].momentum == 0.9 and stem.layers[2].epsilon == 1e-5
    np.testing.assert_array_equal(np.asarray(model.layers[1].kernel), kernel)


def test_macs_of_a_hand_checkable_model():
    inputs = keras.Input((8, 8, 3))
    nn = layers.Conv2D(4, 3, padding="same")(inputs)  # 64 positions x 3*3*3*4 = 6,912
    nn = layers.DepthwiseConv2D(3, strides=2, padding="same")(nn)  # 16 positions x 3*3*4 = 576
    nn = layers.Flatten()(nn)
    outputs = layers.Dense(5)(nn)  # 64 x 5 = 320
    stats = GhostFaceNets.model_params_and_macs(keras.Model(inputs, outputs))
    assert stats["macs"] == 6912 + 576 + 320
    assert stats["total_params"] == (108 + 4) + (36 + 4) + (320 + 5)
