"""fused_ops: the fused BatchNormalization and the one-op L2 regulariser give the values of the Keras 3 layers they
replace (outputs, moving statistics, gradients, weights after SGD steps), keep the file layout, and shrink the
traced training step."""

import contextlib

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_two_logical_cpus

import fused_ops
import GhostFaceNets
import training_heads

SMALL_INPUT = (32, 32, 3)


def small_ghostfacenet(weight_decay=5e-4, input_shape=SMALL_INPUT, **kwargs):
    """A GhostFaceNetV1 at width 0.4, stem stride 2 (32x32 inputs: 1x1 final map), embedding 16, seeded."""
    keras.utils.set_random_seed(3)
    return GhostFaceNets.GhostFaceNetV1(width=0.4, strides=2, emb_shape=16, input_shape=input_shape,
                                        weight_decay=weight_decay, **kwargs)


def plain_twin(model):
    """Copy of `model` with Keras 3's own BatchNormalization and L2 in place of fused_ops', same weights."""

    def rebuild(layer):
        config = layer.get_config()
        for key in ("kernel_regularizer", "depthwise_regularizer"):
            regularizer = getattr(layer, key, None)
            if isinstance(regularizer, fused_ops.L2):
                config[key] = keras.regularizers.L2(regularizer.l2)
        if isinstance(layer, fused_ops.BatchNormalization):
            return keras.layers.BatchNormalization.from_config(config)
        return layer.__class__.from_config(config)

    twin = keras.models.clone_model(model, clone_function=rebuild)
    twin.set_weights(model.get_weights())
    return twin


def count_layers(model, layer_class):
    return sum(isinstance(layer, layer_class) for layer in GhostFaceNets.iterate_layers(model))


def batch_norm_pair(shape, rng):
    """A fused and a plain BatchNormalization (momentum 0.9, eps 1e-5) built for inputs of `shape` with the same
    random weights."""
    channels = shape[-1]
    pair = [fused_ops.BatchNormalization(momentum=0.9, epsilon=1e-5),
            keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)]
    weights = [rng.normal(1, 0.2, channels), rng.normal(0, 0.2, channels), rng.normal(0, 0.5, channels),
               rng.uniform(0.5, 2, channels)]
    for layer in pair:
        layer.build((None, *shape[1:]))
        layer.set_weights([w.astype("float32") for w in weights])
    return pair


def training_call_with_gradients(layer, inputs, cotangent):
    """Training-mode output of `layer` and the gradients of sum(output · cotangent) w.r.t. inputs, gamma, beta."""
    inputs = tf.constant(inputs)
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outputs = layer(inputs, training=True)
        loss = tf.reduce_sum(outputs * cotangent)
    return outputs.numpy(), [g.numpy() for g in tape.gradient(loss, [inputs, layer.gamma, layer.beta])]


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (8, 2, 2, 16), (1, 3, 3, 2), (1, 1, 1, 8), (16, 1, 1, 4)])
def test_training_outputs_moving_statistics_and_gradients_equal_keras(shape):
    rng = np.random.default_rng(sum(shape))
    fused, plain = batch_norm_pair(shape, rng)
    for _ in range(3):
        inputs = rng.normal(0.5, 2.0, shape).astype("float32")
        cotangent = rng.normal(size=shape).astype("float32")
        fused_out, fused_grads = training_call_with_gradients(fused, inputs, cotangent)
        plain_out, plain_grads = training_call_with_gradients(plain, inputs, cotangent)
        np.testing.assert_allclose(fused_out, plain_out, rtol=1e-4, atol=1e-4)
        for fused_grad, plain_grad in zip(fused_grads, plain_grads, strict=True):
            np.testing.assert_allclose(fused_grad, plain_grad, rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(fused.moving_mean.numpy(), plain.moving_mean.numpy(), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(fused.moving_variance.numpy(), plain.moving_variance.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(fused.moving_mean.numpy(), batch_norm_pair(shape, rng)[0].moving_mean.numpy())


def test_unknown_batch_size_gives_the_static_shape_result():
    """Traced with a None batch dimension, the variance correction is computed in the graph: same values."""
    rng = np.random.default_rng(7)
    inputs = rng.normal(0.5, 2.0, (6, 3, 3, 4)).astype("float32")
    static, dynamic = batch_norm_pair(inputs.shape, rng)
    dynamic.set_weights(static.get_weights())
    traced = tf.function(lambda x: dynamic(x, training=True),
                         input_signature=[tf.TensorSpec((None, 3, 3, 4), tf.float32)])
    np.testing.assert_allclose(traced(inputs).numpy(), static(inputs, training=True).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dynamic.moving_variance.numpy(), static.moving_variance.numpy(), rtol=1e-6)
    assert not np.allclose(static.moving_variance.numpy(), batch_norm_pair(inputs.shape, rng)[0].moving_variance)


def test_single_value_per_channel_gives_zero_variance_update():
    fused, _ = batch_norm_pair((1, 1, 1, 3), np.random.default_rng(0))
    before = fused.moving_variance.numpy()
    fused(np.ones((1, 1, 1, 3), "float32"), training=True)
    np.testing.assert_allclose(fused.moving_variance.numpy(), 0.9 * before, rtol=1e-6)


@pytest.mark.parametrize("shape", [(4, 5, 5, 3), (6, 3)])
def test_inference_and_unfused_inputs_are_keras_own(shape):
    rng = np.random.default_rng(1)
    fused, plain = batch_norm_pair(shape, rng)
    inputs = rng.normal(size=shape).astype("float32")
    np.testing.assert_array_equal(fused(inputs, training=False).numpy(), plain(inputs, training=False).numpy())
    assert fused.fusable(tf.zeros(shape)) == (len(shape) == 4)
    if len(shape) != 4:
        np.testing.assert_array_equal(fused(inputs, training=True).numpy(), plain(inputs, training=True).numpy())


def test_options_outside_the_fused_kernel_are_not_fused():
    inputs = tf.zeros((2, 3, 3, 4))
    for options in ({"scale": False}, {"center": False}, {"axis": 1}, {"renorm": True}, {"synchronized": True}):
        layer = fused_ops.BatchNormalization(**options)
        layer.build(inputs.shape)
        assert not layer.fusable(inputs), options
    assert not fused_ops.BatchNormalization(dtype="mixed_float16").fusable(tf.zeros((2, 3, 3, 4), "float16"))


def test_layer_config_round_trips():
    layer = fused_ops.BatchNormalization(momentum=0.9, epsilon=1e-5, name="x_bn")
    restored = keras.layers.deserialize(keras.layers.serialize(layer))
    assert type(restored) is fused_ops.BatchNormalization
    assert restored.get_config() == layer.get_config()


@pytest.mark.parametrize("shape", [(3, 3, 8, 16), (512,), (7, 7, 64, 1)])
def test_regulariser_equals_keras_l2(shape):
    weights = tf.constant(np.random.default_rng(2).normal(size=shape).astype("float32"))
    expected = 2.5e-4 * float(np.sum(np.square(weights.numpy(), dtype="float64")))
    assert float(fused_ops.L2(2.5e-4)(weights)) == pytest.approx(expected, rel=1e-5)
    assert float(fused_ops.L2(2.5e-4)(weights)) == pytest.approx(float(keras.regularizers.L2(2.5e-4)(weights)),
                                                                 rel=1e-5)


def test_regulariser_config_round_trips_and_is_an_l2():
    restored = keras.regularizers.deserialize(keras.regularizers.serialize(fused_ops.L2(2.5e-4)))
    assert type(restored) is fused_ops.L2
    assert restored.l2 == pytest.approx(2.5e-4)
    assert isinstance(restored, keras.regularizers.L2)


@pytest.fixture(scope="module")
def small_model():
    return small_ghostfacenet()


def test_builders_use_the_fused_layer_and_regulariser(small_model):
    assert count_layers(small_model, fused_ops.BatchNormalization) == count_layers(
        small_model, keras.layers.BatchNormalization) > 50
    assert isinstance(small_model.get_layer("GDC_conv").kernel_regularizer, fused_ops.L2)
    assert training_heads.first_l2_factor(small_model) == pytest.approx(2.5e-4)


def train_two_sgd_steps(model, images, targets):
    model.compile(optimizer=keras.optimizers.SGD(0.01, momentum=0.9), loss="mse")
    model.fit(images, targets, batch_size=8, epochs=1, shuffle=False, verbose=0)
    return [weight.numpy() for weight in model.weights]


def test_two_sgd_steps_give_the_weights_of_plain_keras():
    """64x64 inputs at batch 8 (2x2 final maps) and learning rate 0.01: on 1x1 maps of 4 samples, or at 0.1, this
    untrained net amplifies float round-off (relative 1e-3 in one step's gradients) past the tolerance within two
    steps, for the fused and unfused kernels alike."""
    model = small_ghostfacenet(input_shape=(64, 64, 3))
    twin = plain_twin(model)
    assert count_layers(twin, fused_ops.BatchNormalization) == 0
    rng = np.random.default_rng(4)
    images = rng.uniform(-1, 1, (16, 64, 64, 3)).astype("float32")
    targets = rng.normal(size=(16, 16)).astype("float32")
    np.testing.assert_allclose(float(sum(model.losses)), float(sum(twin.losses)), rtol=1e-5)
    start = [weight.numpy() for weight in model.weights]
    fused_weights = train_two_sgd_steps(model, images, targets)
    plain_weights = train_two_sgd_steps(twin, images, targets)
    for fused_weight, plain_weight in zip(fused_weights, plain_weights, strict=True):
        np.testing.assert_allclose(fused_weight, plain_weight, rtol=1e-4, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(fused_weights, start, strict=True)) > 1e-3


def test_saved_files_load_both_ways(small_model, tmp_path):
    images = np.random.default_rng(5).uniform(-1, 1, (2, *SMALL_INPUT)).astype("float32")
    expected = small_model.predict(images, verbose=0)
    small_model.save(tmp_path / "fused.keras")
    restored = keras.saving.load_model(tmp_path / "fused.keras")
    fused_count = count_layers(small_model, fused_ops.BatchNormalization)
    assert count_layers(restored, fused_ops.BatchNormalization) == fused_count
    assert isinstance(restored.get_layer("GDC_conv").kernel_regularizer, fused_ops.L2)
    np.testing.assert_allclose(restored.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    twin = plain_twin(small_model)
    twin.save(tmp_path / "plain.keras")
    old_style = keras.saving.load_model(tmp_path / "plain.keras")
    assert count_layers(old_style, fused_ops.BatchNormalization) == 0
    np.testing.assert_allclose(old_style.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)
    small_model.save_weights(tmp_path / "fused.weights.h5")
    fresh_twin = plain_twin(small_ghostfacenet())
    fresh_twin.load_weights(tmp_path / "fused.weights.h5")
    np.testing.assert_allclose(fresh_twin.predict(images, verbose=0), expected, rtol=1e-5, atol=1e-6)


def test_rewriters_keep_the_fused_layers():
    model = GhostFaceNets.buildin_models("ghostnetv1", width=0.4, strides=2, emb_shape=16, input_shape=SMALL_INPUT,
                                         bn_momentum=0.9, bn_epsilon=1e-5)
    fused_count = count_layers(model, fused_ops.BatchNormalization)
    rewritten = {
        "prelu": GhostFaceNets.replace_ReLU_with_PReLU(model),
        "mixed_float16": GhostFaceNets.convert_to_mixed_float16(model),
        "l2": GhostFaceNets.add_l2_regularizer_2_model(model, 5e-4),
    }
    for name, converted in rewritten.items():
        assert count_layers(converted, fused_ops.BatchNormalization) == fused_count, name
    mixed_bn = rewritten["mixed_float16"].get_layer("stem_bn")
    assert mixed_bn.compute_dtype == "float32"
    assert rewritten["mixed_float16"](np.zeros((2, *SMALL_INPUT), "float32"), training=True).shape == (2, 16)


def traced_step_operations(model):
    """Number of graph ops of one traced training step (forward, L2 losses, gradients) of `model` at batch 4."""

    @tf.function
    def step(images):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(images, training=True))) + tf.add_n(model.losses)
        return tape.gradient(loss, model.trainable_variables)

    return len(step.get_concrete_function(tf.TensorSpec((4, *SMALL_INPUT))).graph.get_operations())


def test_traced_training_step_has_far_fewer_ops(small_model):
    fused_ops_count = traced_step_operations(small_model)
    plain_ops_count = traced_step_operations(plain_twin(small_model))
    assert fused_ops_count < 0.75 * plain_ops_count, (fused_ops_count, plain_ops_count)


OPTIMIZER_SETTINGS = {
    "sgd momentum": (keras.optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.9}),
    "sgd nesterov": (keras.optimizers.SGD, {"learning_rate": 0.01, "momentum": 0.9, "nesterov": True}),
    "sgd no momentum": (keras.optimizers.SGD, {"learning_rate": 0.01}),
    "adam": (keras.optimizers.Adam, {"learning_rate": 1e-3}),
    "adamw": (keras.optimizers.AdamW, {"learning_rate": 1e-3, "weight_decay": 0.05}),
    "adam amsgrad": (keras.optimizers.Adam, {"learning_rate": 1e-3, "amsgrad": True}),
}


def dense_model(seed):
    """A two-layer dense model (8 → 6 → 3), seeded."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    hidden = keras.layers.Dense(6, activation="tanh")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(hidden))


def weights_after_steps(optimizer, steps=4, strategy=None, jit_compile=False):
    """Weights and optimizer variables of `dense_model(0)` after `steps` full-batch fit steps of an MSE loss
    (compiled with XLA when `jit_compile`)."""
    rng = np.random.default_rng(6)
    features = rng.normal(size=(8, 8)).astype("float32")
    targets = rng.normal(size=(8, 3)).astype("float32")
    with strategy.scope() if strategy else contextlib.nullcontext():
        model = dense_model(0)
        model.compile(optimizer=optimizer, loss="mse", jit_compile=jit_compile)
    model.fit(features, targets, batch_size=8, epochs=steps, shuffle=False, verbose=0)
    return [variable.numpy() for variable in model.weights + optimizer.variables]


@pytest.mark.parametrize("name", sorted(OPTIMIZER_SETTINGS))
def test_fused_optimizers_give_the_weights_and_slots_of_keras(name):
    optimizer_class, config = OPTIMIZER_SETTINGS[name]
    fused = fused_ops.use_fused_update(optimizer_class(**config))
    assert type(fused) is fused_ops.FUSED_OPTIMIZERS[optimizer_class]
    plain_values = weights_after_steps(optimizer_class(**config))
    fused_values = weights_after_steps(fused)
    start = [weight.numpy() for weight in dense_model(0).weights]
    # SGD: the kernel evaluates Keras' expressions in the same order, so the weights are bitwise equal; Adam's
    # kernel rounds its bias correction differently (1 ulp).
    tolerance = {"rtol": 0, "atol": 0} if optimizer_class is keras.optimizers.SGD else {"rtol": 1e-6, "atol": 1e-7}
    for fused_value, plain_value in zip(fused_values, plain_values, strict=True):
        np.testing.assert_allclose(fused_value, plain_value, **tolerance)
    assert max(np.abs(a - b).max() for a, b in zip(fused_values, start, strict=False)) > 1e-3


MIRRORED_SCRIPT = """
    import fused_ops
    import test_fused_ops as t

    result = {}
    for name in ("sgd nesterov", "adamw"):
        optimizer_class, config = t.OPTIMIZER_SETTINGS[name]
        with strategy.scope():
            fused = fused_ops.use_fused_update(optimizer_class(**config))
        result[name] = {
            "mirrored fused": [v.tolist() for v in t.weights_after_steps(fused, strategy=strategy)],
            "single plain": [v.tolist() for v in t.weights_after_steps(optimizer_class(**config))],
        }
    print("RESULT" + json.dumps(result))
"""


def test_fused_update_under_mirrored_strategy_equals_single_device():
    """Two logical CPUs, two replicas: the fused update equals single-device training with Keras' own update."""
    result, _ = run_on_two_logical_cpus(MIRRORED_SCRIPT)
    for name, runs in result.items():
        for fused_value, single_value in zip(runs["mirrored fused"], runs["single plain"], strict=True):
            np.testing.assert_allclose(fused_value, single_value, rtol=1e-5, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("name", ["sgd momentum", "adamw"])
def test_fused_update_compiles_with_xla(name):
    optimizer_class, config = OPTIMIZER_SETTINGS[name]
    fused = weights_after_steps(fused_ops.use_fused_update(optimizer_class(**config)), jit_compile=True)
    plain = weights_after_steps(optimizer_class(**config), jit_compile=True)
    for fused_value, plain_value in zip(fused, plain, strict=True):
        np.testing.assert_allclose(fused_value, plain_value, rtol=1e-6, atol=1e-7)


def test_use_fused_update_keeps_the_object_and_skips_others():
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    assert fused_ops.use_fused_update(sgd) is sgd and isinstance(sgd, fused_ops.SGD)
    scaled = keras.optimizers.LossScaleOptimizer(keras.optimizers.Adam())
    fused_ops.use_fused_update(scaled)
    assert type(scaled.inner_optimizer) is fused_ops.Adam
    rmsprop = keras.optimizers.RMSprop()
    assert type(fused_ops.use_fused_update(rmsprop)) is keras.optimizers.RMSprop


def test_fused_optimizer_config_round_trips():
    sgd = fused_ops.use_fused_update(keras.optimizers.SGD(0.05, momentum=0.8, nesterov=True))
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(sgd))
    assert type(restored) is fused_ops.SGD
    assert (restored.momentum, restored.nesterov) == (0.8, True)
    assert float(restored.learning_rate) == pytest.approx(0.05)


def traced_update_operations(optimizer, model):
    """Number of graph ops of one traced `optimizer.apply` on `model`'s trainable variables (gradients of ones)."""
    optimizer.build(model.trainable_variables)

    @tf.function
    def apply():
        optimizer.apply([tf.ones_like(v) for v in model.trainable_variables], model.trainable_variables)

    return len(apply.get_concrete_function().graph.get_operations())


def test_fused_update_traces_far_fewer_ops(small_model):
    plain = traced_update_operations(keras.optimizers.SGD(0.1, momentum=0.9), small_model)
    fused = traced_update_operations(fused_ops.use_fused_update(keras.optimizers.SGD(0.1, momentum=0.9)),
                                     small_model)
    assert fused < 0.6 * plain, (fused, plain)
