"""keras_compat: every private Keras / TensorFlow access the project relies on still exists and still works.

Each test names the keras_compat function to port when a Keras or TensorFlow upgrade removes what it uses."""

import importlib

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_compat


def require_attribute(owner, name, compat_function):
    """Fail with a message naming the missing private attribute and the keras_compat function to port."""
    assert hasattr(owner, name), (
        f"Keras {keras.__version__} no longer has {getattr(owner, '__name__', owner)}.{name} (checked on Keras "
        f"{keras_compat.CHECKED_KERAS_VERSION}): port keras_compat.{compat_function}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Models, heads, losses and runtime settings
# ----------------------------------------------------------------------------------------------------------------
def test_all_sublayers_reaches_nested_layers():
    require_attribute(keras.layers.Layer, "_flatten_layers", "all_sublayers")
    inner = keras.Sequential([keras.layers.Dense(3, name="inner_dense")], name="inner")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, name="outer_dense")(inner(inputs)))
    names = [layer.name for layer in keras_compat.all_sublayers(model)]
    assert "inner_dense" in names and "outer_dense" in names and model.name not in names, (
        f"keras_compat.all_sublayers no longer lists nested layers on Keras {keras.__version__}: {names}"
    )


def test_set_variable_regularizer_counts_in_layer_losses():
    layer = keras.layers.Dense(2, use_bias=False, kernel_initializer="ones")
    layer.build((None, 3))
    keras_compat.set_variable_regularizer(layer.kernel, keras.regularizers.L2(0.5))
    assert len(layer.losses) == 1, (
        f"Keras {keras.__version__} ignores variable.regularizer: port keras_compat.set_variable_regularizer"
    )
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.losses[0]), 0.5 * 6, rtol=1e-6)


class AddsLoss(keras_compat.EagerReadableLosses, keras.layers.Layer):
    def call(self, inputs):
        self.add_loss(keras.ops.mean(inputs))
        return inputs


def test_eager_readable_losses_skips_losses_left_by_a_traced_step():
    require_attribute(keras.layers.Layer, "_get_own_losses", "EagerReadableLosses")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(AddsLoss()(inputs)))
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 2)), np.ones((4, 1)), batch_size=2, epochs=1, verbose=0)
    assert all(not tf.is_symbolic_tensor(loss) for loss in model.losses), (
        f"keras_compat.EagerReadableLosses no longer filters graph losses on Keras {keras.__version__}"
    )


def test_onednn_enabled_reads_tensorflow_build_flags():
    try:
        module = importlib.import_module("tensorflow.python.util._pywrap_util_port")
    except ImportError as error:
        pytest.fail(f"TensorFlow moved _pywrap_util_port ({error}): port keras_compat.onednn_enabled")
    require_attribute(module, "IsMklEnabled", "onednn_enabled")
    assert isinstance(keras_compat.onednn_enabled(), bool)


# ----------------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------------
def test_optimizer_tracks_the_variables_it_was_built_for():
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    require_attribute(optimizer, "_var_key", "optimizer_tracks")
    first, second = keras.Variable(np.ones(2)), keras.Variable(np.ones(3))
    optimizer.build([first])
    require_attribute(optimizer, "_trainable_variables", "optimizer_tracks")
    assert keras_compat.optimizer_tracks(optimizer, [first]), (
        f"keras_compat.optimizer_tracks misses a built variable on Keras {keras.__version__}"
    )
    assert not keras_compat.optimizer_tracks(optimizer, [first, second])


def test_optimizer_slots_are_the_momentum_and_velocity_of_a_variable():
    require_attribute(keras.optimizers.Optimizer, "_get_variable_index", "optimizer_slots")
    variables = [keras.Variable(np.zeros((3, 2), "float32")), keras.Variable(np.ones((4,), "float32"))]
    gradients = [np.ones((3, 2), "float32"), np.full((4,), 2.0, "float32")]
    sgd = keras.optimizers.SGD(0.1, momentum=0.9)
    adam = keras.optimizers.AdamW(0.1, weight_decay=0.01)
    adam.exclude_from_weight_decay(var_list=[variables[0]])
    for optimizer in (sgd, adam):
        optimizer.apply(gradients, variables)
    np.testing.assert_allclose(keras_compat.optimizer_slots(sgd, variables[1])["momentum"], np.full(4, -0.2))
    adam_slots = keras_compat.optimizer_slots(adam, variables[1])
    np.testing.assert_allclose(adam_slots["momentum"], np.full(4, 0.2), rtol=1e-6)  # (1 - beta_1) * g
    np.testing.assert_allclose(adam_slots["velocity"], np.full(4, 0.004), rtol=1e-5)  # (1 - beta_2) * g^2
    plain = keras.optimizers.SGD(0.1)
    plain.build(variables)
    assert keras_compat.optimizer_slots(plain, variables[0]) == {}
    assert keras_compat.uses_weight_decay(adam, variables[1]) and not keras_compat.uses_weight_decay(adam, variables[0])
    assert not keras_compat.uses_weight_decay(sgd, variables[1])


def test_loss_tracker_is_the_logged_training_loss():
    require_attribute(keras.Model(), "_loss_tracker", "loss_tracker")
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer="zeros")(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
    history = model.fit(np.zeros((4, 2)), np.full((4, 1), 3.0), verbose=0)
    assert float(keras_compat.loss_tracker(model).result()) == pytest.approx(history.history["loss"][0]) == 9.0


def test_call_with_layer_replaced_runs_the_graph_around_one_layer():
    inputs = keras.Input((2,))
    hidden = keras.layers.Dense(3, kernel_initializer="ones", name="hidden")
    head = keras.layers.Dense(1, kernel_initializer="ones", name="head")
    dropout = keras.layers.Dropout(0.999, seed=1)
    embedding = hidden(inputs)
    model = keras.Model(inputs, [dropout(embedding), head(embedding)])
    x = np.ones((2, 2), "float32")
    kept, replaced = keras_compat.call_with_layer_replaced(model, x, head, lambda tensor, **_: tensor * 10,
                                                           training=True)
    np.testing.assert_allclose(replaced, np.full((2, 3), 20.0))  # the head's input, times 10
    assert float(np.sum(kept)) != 2 * 3 * 2.0  # dropout ran in training mode
    _, inference = keras_compat.call_with_layer_replaced(model, x, dropout, lambda tensor, **_: tensor,
                                                         training=False)
    np.testing.assert_allclose(inference, np.full((2, 1), 6.0))


def test_symbolic_build_creates_the_optimizer_slots_before_fit():
    require_attribute(keras.Model, "_symbolic_build", "symbolic_build")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse", metrics=["mae"])
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((4, 4)), np.ones((4, 2)))).batch(2)
    keras_compat.symbolic_build(model, dataset.element_spec)
    assert model.optimizer.built and len(model.optimizer.momentums) == 2, (
        f"keras_compat.symbolic_build no longer builds the optimizer on Keras {keras.__version__}"
    )


class CountingDense(keras.layers.Dense):
    """A Dense layer that counts its calls."""

    calls = 0

    def call(self, inputs):
        CountingDense.calls += 1
        return super().call(inputs)


def two_output_model():
    """A compiled functional model with two outputs, a loss and a metric on each, SGD with momentum."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    hidden = CountingDense(3, name="hidden")(inputs)
    model = keras.Model(inputs, [keras.layers.Dense(2, name="a")(hidden), keras.layers.Dense(5, name="b")(hidden)])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), ["mse", "categorical_crossentropy"],
                  metrics=[["mae"], ["accuracy"]])
    return model


def built_state(model):
    """(name, shape) of every metric and optimizer variable of `model`."""
    variables = [v for metric in model.metrics for v in metric.variables] + model.optimizer.variables
    return sorted((v.name, tuple(v.shape)) for v in variables)


def test_symbolic_build_of_a_functional_model_skips_the_forward_pass_and_builds_what_keras_builds():
    for name in ("_compile_metrics", "_compile_loss"):
        require_attribute(two_output_model(), name, "symbolic_build")
    require_attribute(keras.Model, "_compute_loss", "symbolic_build")
    require_attribute(keras.Model, "_post_build", "symbolic_build")
    spec = (tf.TensorSpec((8, 4)), (tf.TensorSpec((8, 2)), tf.TensorSpec((8, 5))))
    shortcut, keras_own = two_output_model(), two_output_model()
    CountingDense.calls = 0
    keras_compat.symbolic_build(shortcut, spec)
    assert CountingDense.calls == 0, "symbolic_build ran the model's layers"
    keras_own._symbolic_build(data_batch=spec)
    assert CountingDense.calls == 1, "Keras' own pre-build no longer runs the model: compare keras_compat anew"
    assert built_state(shortcut) == built_state(keras_own) and len(shortcut.optimizer.variables) > 2
    data = np.random.default_rng(1).normal(size=(8, 4)).astype("float32")
    targets = (data[:, :2], np.eye(5, dtype="float32")[np.arange(8) % 5])
    logs = [model.fit(data, targets, batch_size=8, epochs=2, verbose=0, shuffle=False).history
            for model in (shortcut, keras_own)]
    for key in logs[1]:
        np.testing.assert_allclose(logs[0][key], logs[1][key], rtol=1e-6, err_msg=key)


def test_symbolic_build_unwraps_a_one_output_list_as_keras_call_does():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, [keras.layers.Dense(3, name="only")(inputs)])
    model.compile("sgd", loss=["mse"], metrics=[["mae"]])
    keras_compat.symbolic_build(model, (tf.TensorSpec((None, 4)), tf.TensorSpec((None, 3))))
    assert keras_compat.functional_prediction_spec(model, (tf.TensorSpec((5, 4)),)).shape == (5, 3)
    history = model.fit(np.ones((4, 4), "float32"), np.zeros((4, 3), "float32"), epochs=1, verbose=0)
    assert np.isfinite(history.history["mae"][0])


def test_multi_worker_fit_patches_replace_and_restore_keras_functions():
    try:
        tf_trainer = importlib.import_module("keras.src.backend.tensorflow.trainer")
    except ImportError as error:
        pytest.fail(f"Keras {keras.__version__} moved its TensorFlow trainer ({error}): port "
                    "keras_compat.multi_worker_fit_patches")
    require_attribute(tf_trainer, "reduce_per_replica", "multi_worker_fit_patches")
    require_attribute(keras.Model, "_maybe_symbolic_build", "multi_worker_fit_patches")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    keras_reduce = tf_trainer.reduce_per_replica
    with keras_compat.multi_worker_fit_patches(model):
        assert tf_trainer.reduce_per_replica is not keras_reduce and model._maybe_symbolic_build() is None
        logs = tf_trainer.reduce_per_replica({"loss": tf.constant(2.0)}, tf.distribute.get_strategy())
        assert float(logs["loss"]) == 2.0
    assert tf_trainer.reduce_per_replica is keras_reduce and "_maybe_symbolic_build" not in vars(model)


def test_tf_keras_class_paths_map_to_keras3_modules_that_hold_the_classes():
    for tf_keras_module, keras_module in keras_compat.TF_KERAS_MODULES.items():
        class_name = {"functional": "Functional", "sequential": "Sequential", "training": "Model"}[
            tf_keras_module.rsplit(".", 1)[1]]
        module = importlib.import_module(keras_compat.keras3_module_of_tf_keras(tf_keras_module))
        assert module.__name__ == keras_module
        assert hasattr(module, class_name), (
            f"Keras {keras.__version__} moved {class_name} out of {keras_module}: port keras_compat.TF_KERAS_MODULES")
    assert keras_compat.keras3_module_of_tf_keras("tf_keras.src.layers") == "keras.layers"
