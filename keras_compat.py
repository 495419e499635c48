"""Every private Keras / TensorFlow access of the project, in one place: each function names the Keras version it
was checked on; tests/test_keras_compat.py fails loudly when an upgrade removes one."""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import contextlib
import functools

import keras
import tensorflow as tf
from keras.src import backend as keras_backend
from keras.src.models.functional import Functional

CHECKED_KERAS_VERSION = "3.15.1"


# ----------------------------------------------------------------------------------------------------------------
# Models, heads, losses and runtime settings (GhostFaceNets.py, heads.py, groupface.py, runtime_setup.py)
# ----------------------------------------------------------------------------------------------------------------
def all_sublayers(layer):
    """Every layer inside `layer` (a model or layer), nested ones included, `layer` itself excluded, each once.

    Checked on Keras 3.15.1: `Layer._flatten_layers(include_self, recursive)`, which also reaches layers held by
    other layers (where a model's public `layers` stops at its top level).
    """
    return list(layer._flatten_layers(include_self=False, recursive=True))


def set_variable_regularizer(variable, regularizer):
    """Make `regularizer` (a callable weight -> scalar loss) count in the owning layer's `losses`, in place.

    Checked on Keras 3.15.1: `Layer.losses` adds `variable.regularizer(variable)` for every trainable variable whose
    (undocumented) `regularizer` attribute is set, the attribute `add_weight(regularizer=...)` writes.
    """
    variable.regularizer = regularizer


class EagerReadableLosses:
    """Layer mixin: `model.losses` read eagerly skips the graph tensors `add_loss` left behind inside a `tf.function`.

    A call traced inside a `tf.function` (every `fit` step) leaves a graph tensor in the layer's own losses; it
    cannot be read once the step has run, so an eager read (as `myCallbacks.My_history` does at each epoch end)
    would raise. Put it before the Keras layer class in the bases: `class GroupFace(EagerReadableLosses, Layer)`.

    Checked on Keras 3.15.1: `Layer._get_own_losses()`, which `Layer.losses` calls on the layer and its sublayers.
    """

    def _get_own_losses(self):
        own = super()._get_own_losses()
        if tf.executing_eagerly():
            return [loss for loss in own if not tf.is_symbolic_tensor(loss)]
        return own


def onednn_enabled():
    """Whether this process runs TensorFlow's oneDNN (MKL) CPU kernels.

    Checked on Keras 3.15.1 with TensorFlow 2.21: `tensorflow.python.util._pywrap_util_port.IsMklEnabled()`.
    """
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


# ----------------------------------------------------------------------------------------------------------------
# Training (train.py)
# ----------------------------------------------------------------------------------------------------------------
def optimizer_tracks(optimizer, variables):
    """Whether the built `optimizer` already has state (slots) for every variable of `variables`.

    Checked on Keras 3.15.1: `Optimizer._trainable_variables` (the variables `build` was given) and
    `Optimizer._var_key(variable)` (the key its slots are stored under).
    """
    built_for = {optimizer._var_key(variable) for variable in optimizer._trainable_variables}
    return {optimizer._var_key(variable) for variable in variables} <= built_for


def optimizer_slots(optimizer, variable):
    """The optimizer's state variables for one model `variable`: `{"momentum": m}` for SGD with momentum (empty
    without), `{"momentum": m, "velocity": v}` for Adam / AdamW.

    Checked on Keras 3.15.1: `Optimizer._get_variable_index(variable)`, `SGD.momentums`, `Adam._momentums` and
    `Adam._velocities` (lists in the order of the variables `build` was given).
    """
    index = optimizer._get_variable_index(variable)
    if isinstance(optimizer, keras.optimizers.Adam):
        return {"momentum": optimizer._momentums[index], "velocity": optimizer._velocities[index]}
    if isinstance(optimizer, keras.optimizers.SGD):
        return {"momentum": optimizer.momentums[index]} if optimizer.momentum != 0 else {}
    raise TypeError(f"no known slots for optimizer {type(optimizer).__name__}")


def uses_weight_decay(optimizer, variable):
    """Whether `optimizer` applies its `weight_decay` to `variable` (not excluded by `exclude_from_weight_decay`).

    Checked on Keras 3.15.1: `Optimizer._use_weight_decay(variable)`.
    """
    return optimizer.weight_decay is not None and optimizer._use_weight_decay(variable)


def loss_tracker(model):
    """The compiled model's running-mean metric of the training loss (the `loss` entry of the logs).

    Checked on Keras 3.15.1: `Trainer._loss_tracker`.
    """
    return model._loss_tracker


def call_with_layer_replaced(model, inputs, layer, replacement, training):
    """The outputs (a list) of the functional `model` on `inputs`, with `layer` computed by `replacement(*args,
    **kwargs)` instead (the other layers are called as `model(inputs, training=training)` would call them).

    Checked on Keras 3.15.1: `Function._run_through_graph(inputs, operation_fn)` and
    `keras.src.models.functional.operation_fn(op, training=...)` (injects `training` into the ops taking it).
    """
    from keras.src.models.functional import operation_fn

    def operation(op):
        return replacement if op is layer else operation_fn(op, training=training)

    return keras.tree.flatten(model._run_through_graph(keras.tree.flatten(inputs), operation_fn=operation))


def symbolic_build(model, data_batch):
    """Create a compiled model's optimizer slots and loss / metric state from `data_batch` (a structure of
    `tf.TensorSpec`, e.g. `dataset.element_spec`), as `fit` does under a distribution strategy.

    Keras' own pre-build runs the whole model symbolically to learn the shapes of its predictions; a built
    functional model already knows them (`model.output`), so for one the losses, metrics and optimizer are built
    from those shapes directly (the same state, without a forward pass through every layer). Any other model goes
    through Keras' pre-build.

    Checked on Keras 3.15.1: `Trainer._symbolic_build(iterator=None, data_batch=None)`, whose steps after the
    forward pass are `compute_output_spec` of `compute_metrics` and of `_compute_loss` when `_compile_metrics` /
    `_compile_loss` are not built (`keras.src.backend.compute_output_spec`), `optimizer.build(trainable_variables)`,
    then `_post_build()`.
    """
    y_pred_spec = functional_prediction_spec(model, data_batch)
    if y_pred_spec is None:
        model._symbolic_build(data_batch=data_batch)
        return
    symbolic_batch = keras.tree.map_structure(symbolic_tensor, data_batch)
    x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(symbolic_batch)
    if model._compile_metrics is not None and not model._compile_metrics.built:
        keras_backend.compute_output_spec(model.compute_metrics, x, y, y_pred_spec, sample_weight=sample_weight)
    if model._compile_loss is not None and not model._compile_loss.built:
        keras_backend.compute_output_spec(model._compute_loss, x, y, y_pred_spec, sample_weight=sample_weight,
                                          training=False)
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model._post_build()


def symbolic_tensor(spec):
    """A `keras.KerasTensor` of the shape and dtype of `spec` (a `tf.TensorSpec`), None for None."""
    return None if spec is None else keras.KerasTensor(spec.shape, keras.backend.standardize_dtype(spec.dtype))


def functional_prediction_spec(model, data_batch):
    """`KerasTensor`s shaped as `model`'s predictions for a batch of `data_batch`'s size, or None when `model` is
    not a built functional model, whose outputs are known (for others only a forward pass tells).

    Checked on Keras 3.15.1: `keras.src.models.functional.Functional`, whose `call` unwraps a one-output list.
    """
    if not isinstance(model, Functional) or not model.built:
        return None
    inputs = keras.tree.flatten(keras.utils.unpack_x_y_sample_weight(data_batch)[0])
    batch_size = inputs[0].shape[0] if inputs else None
    outputs = model.output
    if isinstance(outputs, list | tuple) and len(outputs) == 1:
        outputs = outputs[0]  # a functional model's call returns its one output unwrapped
    return keras.tree.map_structure(
        lambda output: keras.KerasTensor((batch_size, *output.shape[1:]), output.dtype), outputs)


def mean_over_replicas(values, strategy, reduction="auto", keras_reduce=None):
    """`keras_reduce` (Keras' `reduce_per_replica`) for the per-step logs, except that "auto" averages every value
    over all replicas (`strategy.reduce("MEAN", value, axis=None)`), which also works for scalars."""
    if reduction != "auto":
        return keras_reduce(values, strategy, reduction)
    return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)


@contextlib.contextmanager
def multi_worker_fit_patches(model):
    """Make one `model.fit` work under a multi-worker strategy, where Keras 3.15 fails twice (keras-team/keras#20585,
    tensorflow/tensorflow#72388): the per-step logs are averaged by `mean_over_replicas` (Keras' `reduce(MEAN,
    axis=0)` raises on scalars), and the pre-build that all-reduces a whole input batch is skipped (build the
    model with `symbolic_build` before). Both are restored on exit.

    Checked on Keras 3.15.1: `keras.src.backend.tensorflow.trainer.reduce_per_replica(values, strategy,
    reduction)` and `Trainer._maybe_symbolic_build(iterator=None, data_batch=None)`.
    """
    from keras.src.backend.tensorflow import trainer as tf_trainer

    keras_reduce = tf_trainer.reduce_per_replica
    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    tf_trainer.reduce_per_replica = functools.partial(mean_over_replicas, keras_reduce=keras_reduce)
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = keras_reduce
        del model._maybe_symbolic_build


# ----------------------------------------------------------------------------------------------------------------
# Model files
# ----------------------------------------------------------------------------------------------------------------
# tf-keras class paths in a .keras archive's config.json, and the Keras 3 modules that hold those classes
# (checked on Keras 3.15.1: the `module` field of a Keras 3 config names these private modules).
TF_KERAS_MODULES = {"tf_keras.src.engine.functional": "keras.src.models.functional",
                    "tf_keras.src.engine.sequential": "keras.src.models.sequential",
                    "tf_keras.src.engine.training": "keras.src.models.model"}


def keras3_module_of_tf_keras(module):
    """The Keras 3 module name for a tf-keras `module` of a saved config (`tf_keras.src.engine.functional` →
    `keras.src.models.functional`; other `tf_keras.src.X` → `keras.X`). Checked on Keras 3.15.1."""
    return TF_KERAS_MODULES.get(module, "keras" + module[len("tf_keras"):].replace(".src", "", 1))
