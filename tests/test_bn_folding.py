"""bn_folding.py: folded models equal the unfolded ones (GhostFaceNetV1 / V2 with non-trivial batch-norm
statistics), the folded kernels and biases equal an independent NumPy computation (Conv2D, DepthwiseConv2D with
a depth multiplier, Dense, no center / scale), pairs that must not fold are left alone, nested models fold, the
original is untouched, and a layer-sharing fold follows the original's weights."""

import keras
import numpy as np
import pytest

import export
import GhostFaceNets
from bn_folding import BatchNormFold, count_batch_norms, fold_batch_norms


def randomize_batch_norms(model, seed=0, images=None):
    """Give every BatchNormalization layer non-trivial weights: random gamma / beta, moving statistics from the
    batch statistics of `images` (sample faces) when given, then moved randomly (mean by ±0.3 std, variance
    times 0.6–1.6), in place."""
    rng = np.random.default_rng(seed)
    norms = [layer for layer in GhostFaceNets.iterate_layers(model)
             if isinstance(layer, keras.layers.BatchNormalization)]
    for layer in norms:
        channels = layer.moving_mean.shape[0]
        if layer.scale:
            layer.gamma.assign(rng.uniform(0.5, 1.5, channels))
        if layer.center:
            layer.beta.assign(rng.normal(0.0, 0.3, channels))
    if images is not None:
        export.set_batchnorm_statistics(model, images)
    for layer in norms:
        channels = layer.moving_mean.shape[0]
        std = np.sqrt(np.asarray(layer.moving_variance) + 0.1)
        layer.moving_mean.assign(np.asarray(layer.moving_mean) + rng.normal(0.0, 0.3, channels) * std)
        layer.moving_variance.assign(np.asarray(layer.moving_variance) * rng.uniform(0.6, 1.6, channels) + 0.05)
    return model


def relative_difference(model, folded, inputs):
    """max |model(x) − folded(x)| / max |model(x)| in inference mode."""
    expected = np.asarray(model(inputs, training=False), np.float64)
    actual = np.asarray(folded(inputs, training=False), np.float64)
    return float(np.max(np.abs(expected - actual)) / np.max(np.abs(expected)))


def identity_count(model):
    return sum(isinstance(layer, keras.layers.Identity) for layer in model.layers)


@pytest.fixture(scope="module", params=["V1", "V2"])
def ghostfacenet(request):
    """A small GhostFaceNet (width 0.5, 64x64, embedding 32) with non-trivial batch normalisation."""
    keras.utils.set_random_seed(0)
    build = GhostFaceNets.GhostFaceNetV1 if request.param == "V1" else GhostFaceNets.GhostFaceNetV2
    model = build(width=0.5, strides=2, input_shape=(64, 64, 3), emb_shape=32, weight_decay=0)
    return randomize_batch_norms(model, images=export.sample_faces(16, 64))


def test_ghostfacenet_folds_to_equal_outputs(ghostfacenet):
    original_weights = [np.array(weight) for weight in ghostfacenet.get_weights()]
    norms = count_batch_norms(ghostfacenet)
    folded = fold_batch_norms(ghostfacenet)
    inputs = export.normalize(export.sample_faces(6, 64, seed=1))
    assert relative_difference(ghostfacenet, folded, inputs) < 1e-5
    # every normalisation after a conv folds; only the one after Flatten (pre_embedding) is left
    remaining = [layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert remaining == ["pre_embedding"] and norms > 50
    assert identity_count(folded) == norms - 1
    assert [layer.name for layer in folded.layers] == [layer.name for layer in ghostfacenet.layers]
    for before, after in zip(original_weights, ghostfacenet.get_weights(), strict=True):
        np.testing.assert_array_equal(before, after)  # the original is untouched
    assert not {id(weight) for weight in folded.weights} & {id(weight) for weight in ghostfacenet.weights}


def numpy_affine(norm):
    """(scale, shift) float64 of a BatchNormalization layer, computed here from its weights."""
    mean, variance = np.asarray(norm.moving_mean, np.float64), np.asarray(norm.moving_variance, np.float64)
    gamma = np.asarray(norm.gamma, np.float64) if norm.scale else 1.0
    beta = np.asarray(norm.beta, np.float64) if norm.center else 0.0
    scale = gamma / np.sqrt(variance + norm.epsilon)
    return scale, beta - mean * scale


def single_pair_model(producer, norm, input_shape):
    inputs = keras.Input(input_shape)
    model = keras.Model(inputs, norm(producer(inputs)))
    return randomize_batch_norms(model, seed=3)


def test_depthwise_multiplier_two_against_numpy():
    producer = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, padding="same", use_bias=True,
                                            bias_initializer="random_normal")
    model = single_pair_model(producer, keras.layers.BatchNormalization(epsilon=1e-3), (5, 5, 3))
    folded = fold_batch_norms(model)
    scale, shift = numpy_affine(model.layers[2])
    kernel, bias = (np.asarray(weight, np.float64) for weight in producer.get_weights())
    expected_kernel = kernel.copy()
    for channel in range(3):
        for multiple in range(2):  # output channel channel * 2 + multiple
            expected_kernel[:, :, channel, multiple] *= scale[channel * 2 + multiple]
    folded_kernel, folded_bias = folded.layers[1].get_weights()
    np.testing.assert_allclose(folded_kernel, expected_kernel, rtol=1e-6)
    np.testing.assert_allclose(folded_bias, bias * scale + shift, rtol=1e-5, atol=1e-6)
    inputs = np.random.default_rng(0).normal(size=(2, 5, 5, 3)).astype(np.float32)
    assert relative_difference(model, folded, inputs) < 1e-6
    assert count_batch_norms(folded) == 0


def test_dense_against_numpy():
    producer = keras.layers.Dense(4, use_bias=False)
    model = single_pair_model(producer, keras.layers.BatchNormalization(), (6,))
    folded = fold_batch_norms(model)
    scale, shift = numpy_affine(model.layers[2])
    inputs = np.random.default_rng(1).normal(size=(3, 6))
    expected = inputs @ np.asarray(producer.kernel, np.float64) * scale + shift
    np.testing.assert_allclose(folded(inputs.astype(np.float32)), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(folded.layers[1].get_weights()[0], np.asarray(producer.kernel) * scale, rtol=1e-6)


def test_batch_norm_without_center_and_scale():
    producer = keras.layers.Conv2D(5, 1, use_bias=False)
    norm = keras.layers.BatchNormalization(center=False, scale=False)
    model = single_pair_model(producer, norm, (4, 4, 2))
    folded = fold_batch_norms(model)
    scale, shift = numpy_affine(norm)
    np.testing.assert_allclose(1 / np.sqrt(np.asarray(norm.moving_variance) + norm.epsilon), scale)
    kernel, bias = folded.layers[1].get_weights()
    np.testing.assert_allclose(kernel, np.asarray(producer.kernel) * scale, rtol=1e-6)
    np.testing.assert_allclose(bias, shift, rtol=1e-5, atol=1e-6)
    inputs = np.random.default_rng(2).normal(size=(2, 4, 4, 2)).astype(np.float32)
    assert relative_difference(model, folded, inputs) < 1e-6


def test_pairs_that_must_not_fold_are_kept():
    inputs = keras.Input((6, 6, 3))
    shared = keras.layers.Conv2D(4, 3, padding="same", name="shared_conv")(inputs)  # also feeds the Add
    added = keras.layers.Add()([keras.layers.BatchNormalization(name="after_shared")(shared), shared])
    activated = keras.layers.Conv2D(4, 1, activation="relu", name="relu_conv")(added)  # non-linear activation
    normalized = keras.layers.BatchNormalization(name="after_relu")(activated)
    flat = keras.layers.BatchNormalization(name="after_flatten")(keras.layers.Flatten()(normalized))
    folded_here = keras.layers.BatchNormalization(name="folds")(keras.layers.Dense(3, name="dense")(flat))
    model = randomize_batch_norms(keras.Model(inputs, folded_here), seed=4)
    folded = fold_batch_norms(model)
    remaining = {layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)}
    assert remaining == {"after_shared", "after_relu", "after_flatten"}
    assert isinstance(folded.get_layer("folds"), keras.layers.Identity)
    data = np.random.default_rng(3).normal(size=(2, 6, 6, 3)).astype(np.float32)
    assert relative_difference(model, folded, data) < 1e-5


def test_nested_model_folds_recursively():
    inner_input = keras.Input((5, 5, 3))
    inner = keras.Model(inner_input, keras.layers.BatchNormalization()(keras.layers.Conv2D(4, 3)(inner_input)),
                        name="inner")
    outer_input = keras.Input((5, 5, 3))
    after_nested = keras.layers.BatchNormalization(name="after_nested")(inner(outer_input))
    model = randomize_batch_norms(keras.Model(outer_input, after_nested), seed=5)
    folded = fold_batch_norms(model)
    assert count_batch_norms(model) == 2 and count_batch_norms(folded) == 1  # the one after the nested model stays
    data = np.random.default_rng(4).normal(size=(2, 5, 5, 3)).astype(np.float32)
    assert relative_difference(model, folded, data) < 1e-5


def test_shared_fold_follows_the_original_weights():
    producer = keras.layers.Conv2D(3, 3, padding="same")
    norm = keras.layers.BatchNormalization()
    model = single_pair_model(producer, norm, (5, 5, 2))
    fold = BatchNormFold(model, share_layers=True, log=False)
    data = np.random.default_rng(5).normal(size=(2, 5, 5, 2)).astype(np.float32)
    before = np.asarray(fold.model(data))
    norm.moving_mean.assign(np.asarray(norm.moving_mean) + 1.0)
    producer.kernel.assign(np.asarray(producer.kernel) * 2.0)
    assert np.max(np.abs(np.asarray(fold.model(data)) - before)) < 1e-6  # stale until refolded
    fold.refold()
    assert relative_difference(model, fold.model, data) < 1e-6
    assert np.max(np.abs(np.asarray(model(data, training=False)) - before)) > 0.1


def test_export_inference_function_runs_the_folded_model():
    model = single_pair_model(keras.layers.Conv2D(3, 3), keras.layers.BatchNormalization(), (8, 8, 3))
    function = export.inference_function(model)
    assert count_batch_norms(function.inference_model) == 0
    data = np.random.default_rng(6).normal(size=(2, 8, 8, 3)).astype(np.float32)
    expected = np.asarray(model(data, training=False))
    np.testing.assert_allclose(function(data)["embedding"], expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
