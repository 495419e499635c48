"""GhostNetV1/V2 backbones and GhostFaceNet models: sizes, shapes, options and the published configurations."""

import numpy as np
import pytest
from keras import layers

import backbones
import GhostFaceNets

# (builder kwargs, parameters of the original, conv/dense MACs of the original in millions or None)
PUBLISHED = {
    "v1_w1.3_s1_bias": (dict(version="v1", width=1.3, strides=1, use_bias=True), 4_088_812, 211.9),
    "v1_w1.3_s2_bias": (dict(version="v1", width=1.3, strides=2, use_bias=True), 4_066_900, 59.3),
    "v1_w1.0_s2": (dict(version="v1", width=1.0, strides=2, use_bias=False), 2_496_336, None),
    "v2_w1.3_s1": (dict(version="v2", width=1.3, strides=1, use_bias=False), 6_880_288, 267.1),
    "v2_w1.3_s2": (dict(version="v2", width=1.3, strides=2, use_bias=False), 6_839_104, None),
}


@pytest.fixture(scope="module")
def published_models():
    """The published configurations, built once for the module."""
    models = {}
    for key, (kwargs, _, _) in PUBLISHED.items():
        kwargs = dict(kwargs)
        preset = GhostFaceNets.GhostFaceNetV1 if kwargs.pop("version") == "v1" else GhostFaceNets.GhostFaceNetV2
        models[key] = preset(**kwargs)
    return models


@pytest.mark.parametrize("key", list(PUBLISHED))
def test_published_parameter_counts_equal_the_original(published_models, key):
    _, expected_params, expected_macs = PUBLISHED[key]
    stats = GhostFaceNets.model_params_and_macs(published_models[key])
    assert stats["total_params"] == expected_params
    if expected_macs is not None:
        assert stats["macs"] / 1e6 == pytest.approx(expected_macs, rel=0.02)


@pytest.mark.parametrize(("key", "gdc_kernel"), [
    ("v1_w1.3_s1_bias", (7, 7, 664, 1)),
    ("v1_w1.3_s2_bias", (4, 4, 664, 1)),
    ("v2_w1.3_s1", (7, 7, 1248, 1)),
    ("v2_w1.3_s2", (4, 4, 1248, 1)),
])
def test_gdc_kernel_covers_the_final_feature_map(published_models, key, gdc_kernel):
    model = published_models[key]
    assert tuple(model.get_layer("GDC_dw").kernel.shape) == gdc_kernel
    assert model.output_shape == (None, 512)
    assert model.get_layer("embedding").dtype_policy.name == "float32"


def test_published_v1_has_the_original_layer_census(published_models):
    model = published_models["v1_w1.3_s1_bias"]
    census = {}
    for layer in model.layers:
        census[layer.__class__.__name__] = census.get(layer.__class__.__name__, 0) + 1
    assert len(model.layers) == 298
    assert census["Conv2D"] == 53 + 1 and census["DepthwiseConv2D"] == 41 + 1
    assert census["PReLU"] == 41 and census["Add"] == 16
    assert model.get_layer("GDC_conv").use_bias


def test_make_divisible_matches_the_original_rounding():
    assert backbones.make_divisible(16 * 1.3) == 20
    assert backbones.make_divisible(512 * 1.3) == 664
    assert backbones.make_divisible(960 * 1.3) == 1248
    assert backbones.make_divisible(1.0) == 4  # never below the divisor
    assert backbones.make_divisible(9, 8) == 16  # 8 would lose more than 10 %, so one divisor is added


def test_scaled_block_table_at_width_1_3():
    settings = backbones.ghostnet_block_settings(1.3, head_channels=512)
    expansions = [row[1] for row in settings]
    outputs = [row[2] for row in settings]
    assert expansions == [20, 64, 92, 92, 156, 312, 260, 240, 240, 624, 872, 872, 1248, 1248, 1248, 664]
    assert outputs == [20, 32, 32, 52, 52, 104, 104, 104, 104, 144, 144, 208, 208, 208, 208, 208]


@pytest.mark.parametrize(("strides", "expected_map"), [(1, 4), (2, 2)])
def test_width_and_stride_overrides(strides, expected_map):
    model = GhostFaceNets.buildin_models("ghostnetv1", width=0.5, strides=strides, input_shape=(64, 64, 3),
                                         emb_shape=32, dropout=0)
    assert model.get_layer("stem_conv").filters == backbones.make_divisible(16 * 0.5)
    assert model.get_layer("stem_conv").strides == (strides, strides)
    assert model.get_layer("GDC_dw").kernel.shape[:2] == (expected_map, expected_map)
    assert model.get_layer("pre_conv").filters == backbones.make_divisible(512 * 0.5)


def test_v2_accepts_the_original_stem_strides_keyword():
    model = GhostFaceNets.buildin_models("GhostNetV2", stem_strides=2, width_mul=0.5, input_shape=(64, 64, 3),
                                         emb_shape=16, dropout=0)
    assert model.get_layer("stem_conv").strides == (2, 2)
    assert model.get_layer("pre_conv").filters == backbones.make_divisible(960 * 0.5)
    assert model.get_layer("stem_bn").momentum == 0.9  # V2's own BN defaults are kept with Keras-default args


def test_v2_dfc_stacks_follow_num_ghost_module_v1_stacks():
    model = backbones.GhostNetV2(width=0.3, strides=2, input_shape=(64, 64, 3), num_ghost_module_v1_stacks=4)
    names = {layer.name for layer in model.layers}
    assert "stack4_ghost_1_short_1_conv" not in names
    assert "stack5_ghost_1_short_1_conv" in names
    none = backbones.GhostNetV2(width=0.3, strides=2, input_shape=(32, 32, 3), num_ghost_module_v1_stacks=-1)
    assert not any("short_resize" in layer.name for layer in none.layers)


def test_activation_option_applies_everywhere():
    model = backbones.GhostNetV1(width=0.3, strides=2, input_shape=(32, 32, 3), activation="swish")
    swish = [layer for layer in model.layers if layer.name.endswith("_swish")]
    assert len(swish) == 41  # stem, 32 ghost modules, 7 SE, final
    assert not any(isinstance(layer, layers.PReLU) for layer in model.layers)


def test_se_gates_are_the_originals_hard_sigmoids():
    x = np.array([-4.0, -1.0, 0.0, 1.0, 4.0], dtype="float32")
    v1 = backbones.GhostNetV1(width=0.3, strides=2, input_shape=(32, 32, 3)).get_layer("stack4_se_gate")
    v2 = backbones.GhostNetV2(width=0.3, strides=2, input_shape=(64, 64, 3)).get_layer("stack4_se_gate")
    np.testing.assert_allclose(np.asarray(v1(x)), np.clip(0.2 * x + 0.5, 0, 1), atol=1e-7)
    np.testing.assert_allclose(np.asarray(v2(x)), np.clip(x / 6 + 0.5, 0, 1), atol=1e-7)


def test_classifier_top_gives_class_scores():
    model = backbones.GhostNetV1(width=0.3, strides=2, input_shape=(32, 32, 3), num_classes=10)
    scores = np.asarray(model(np.zeros((2, 32, 32, 3), "float32"), training=False))
    assert scores.shape == (2, 10)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-5)


def test_invalid_arguments_have_clear_errors():
    with pytest.raises(ValueError, match="Unknown backbone name"):
        GhostFaceNets.buildin_models("resnet50")
    with pytest.raises(ValueError, match="strides"):
        backbones.GhostNetV1(strides=3)
    with pytest.raises(ValueError, match="width"):
        backbones.GhostNetV1(width=0)
    with pytest.raises(ValueError, match="at least 2x2"):
        backbones.GhostNetV2(strides=2, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="output_layer"):
        GhostFaceNets.buildin_models("ghostnetv1", output_layer="XYZ")


def test_print_buildin_models_lists_names_and_heads(capsys):
    GhostFaceNets.print_buildin_models()
    printed = capsys.readouterr().out
    for name in ("ghostnetv1", "ghostnetv2", "GDC", "E", "GNAP", "GhostFaceNetV1"):
        assert name in printed


def test_command_line_summary_prints_params_and_macs(capsys):
    GhostFaceNets.main(["--summary", "ghostnetv1", "--width", "1.3", "--strides", "2"])
    printed = capsys.readouterr().out
    assert "total params: 4,066,900" in printed
    assert "MACs (conv/dense): 59.3" in printed


def conv_kernels(seed):
    import keras

    keras.utils.set_random_seed(seed)
    model = backbones.GhostNetV1(input_shape=(32, 32, 3), width=0.5)
    return [keras.ops.convert_to_numpy(layer.kernel) for layer in model.layers if isinstance(layer, layers.Conv2D)]


def test_conv_kernels_are_drawn_per_layer_and_follow_the_seed():
    first, again, other = conv_kernels(0), conv_kernels(0), conv_kernels(1)
    for kernel, repeat in zip(first, again, strict=True):
        np.testing.assert_array_equal(kernel, repeat)  # the same seed builds the same model
    assert not np.array_equal(first[0], other[0])
    by_shape = {}
    for kernel in first:
        by_shape.setdefault(kernel.shape, []).append(kernel)
    same_shape = next(kernels for kernels in by_shape.values() if len(kernels) > 1)
    assert not np.array_equal(same_shape[0], same_shape[1])  # layers of one shape draw different values


@pytest.mark.parametrize("key", ["v1_w1.3_s1_bias", "v2_w1.3_s1"])
def test_published_models_use_the_fused_batch_norm_and_l2(published_models, key):
    import fused_ops

    model = published_models[key]
    batch_norms = [layer for layer in GhostFaceNets.iterate_layers(model)
                   if isinstance(layer, layers.BatchNormalization)]
    assert len(batch_norms) > 80
    assert all(type(layer) is fused_ops.BatchNormalization for layer in batch_norms)
    assert {layer.__class__.__name__ for layer in batch_norms} == {"BatchNormalization"}  # weight-file keys unchanged
    regularizers = [layer.kernel_regularizer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert regularizers and all(type(regularizer) is fused_ops.L2 for regularizer in regularizers)
    assert regularizers[0].l2 == pytest.approx(2.5e-4)
