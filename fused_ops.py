"""Training-speed versions of two Keras 3 building blocks, equal in value to the ones they replace.

- `BatchNormalization`: Keras 3's batch normalisation computes the batch moments, the normalisation and the
  moving-average updates as separate graph ops (about 20 per layer in a training step); for 4-D float32 NHWC
  inputs this layer runs TensorFlow's one fused kernel (``FusedBatchNormV3``) instead, and otherwise defers to
  Keras. Its Python class name is ``BatchNormalization`` on purpose: Keras 3 stores a layer's weights in
  ``.keras`` / ``.weights.h5`` files under the snake-cased class name (``batch_normalization_3``), so the files
  of models built with it keep the layout of plain Keras models and load into either.
- `L2`: Keras 3's L2 regulariser is three ops per kernel (square, sum, multiply); this one is
  ``2 · l2 · tf.nn.l2_loss(x)``, the same value from TensorFlow's one ``L2Loss`` op and a multiply.
- `SGD`, `Adam`, `AdamW`: Keras 3 optimizers whose per-variable update is TensorFlow's one fused kernel
  (``ResourceApplyKerasMomentum``, ``ResourceApplyAdam``: the kernels tf-keras used) instead of 6–12 separate
  ops, with the same formulas. `use_fused_update` turns a plain Keras optimizer object into its fused class in
  place (same object, same state), which is how `train.Train` uses them.

All are registered (package ``keras_insightface``), so saved models rebuild them; models saved with the plain
Keras classes still load (same weights, same config keys).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
import tensorflow as tf

import keras_compat


def fused_batch_norm_training(inputs, gamma, beta, epsilon):
    """Batch normalisation of NHWC ``inputs`` (N, H, W, C) with the statistics of this batch, in one fused op.

    Args:
        inputs: float32 tensor (N, H, W, C).
        gamma: scale, float32 (C,).
        beta: offset, float32 (C,).
        epsilon: added to the variance before the square root.

    Returns:
        ``(outputs, mean, variance)``: the normalised (N, H, W, C) tensor and the per-channel batch mean and
        biased variance (divided by N·H·W, as Keras 3 computes it; the fused op returns the variance divided by
        N·H·W − 1, which is rescaled here).
    """
    outputs, mean, corrected_variance, _, _, _ = tf.raw_ops.FusedBatchNormV3(
        x=inputs, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=epsilon,
        data_format="NHWC", is_training=True)
    return outputs, mean, corrected_variance * variance_correction(inputs)


def variance_correction(inputs):
    """``(n − 1) / n`` for the ``n = N·H·W`` values per channel of NHWC ``inputs``: a Python float when the shape
    is static (no graph ops), else a float32 scalar tensor."""
    if None not in inputs.shape[:3]:
        count = float(inputs.shape[0] * inputs.shape[1] * inputs.shape[2])
    else:
        count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
    return (count - 1.0) / count


@keras.saving.register_keras_serializable(package="keras_insightface")
class BatchNormalization(keras.layers.BatchNormalization):
    """`keras.layers.BatchNormalization` whose training-mode call runs TensorFlow's fused kernel.

    Fused when training (and trainable) on a 4-D float32 input, channels last, with the default options
    (``center`` and ``scale`` on, no renorm, not synchronised, no mask); every other call (inference, other
    ranks, dtypes or options) is Keras 3's own. The moving mean and variance are updated as Keras 3 does,
    ``moving = moving · momentum + batch statistic · (1 − momentum)`` with the biased batch variance, so weights
    after any number of steps equal those of the plain layer to float tolerance. Same config, same weights.
    """

    def fusable(self, inputs):
        """True when a training call on ``inputs`` can run the fused kernel (see the class docstring)."""
        return (keras.backend.backend() == "tensorflow" and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and keras.backend.standardize_dtype(inputs.dtype) == "float32" and self.compute_dtype == "float32"
                and self.center and self.scale and not self.renorm and not self.synchronized)

    def call(self, inputs, training=None, mask=None):
        """Normalise ``inputs``; in training, with the batch statistics and updating the moving ones."""
        if not (training and self.trainable and mask is None and self.fusable(inputs)):
            return super().call(inputs, training=training, mask=mask)
        outputs, mean, variance = fused_batch_norm_training(inputs, self.gamma, self.beta, self.epsilon)
        self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
        self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        return outputs


@keras.saving.register_keras_serializable(package="keras_insightface")
class L2(keras.regularizers.L2):
    """`keras.regularizers.L2` computed as ``2 · l2 · tf.nn.l2_loss(x)`` (= ``l2 · sum(x²)``) in two graph ops."""

    def __call__(self, x):
        """The penalty ``l2 · sum(x²)`` of weight ``x`` (any shape), a scalar."""
        return tf.nn.l2_loss(x) * (2.0 * self.l2)


def fusable_update(gradient, variable):
    """True when a fused TensorFlow kernel can apply ``gradient`` to ``variable``: the TensorFlow backend, a dense
    gradient (not `tf.IndexedSlices`) and a floating-point variable."""
    return (keras.backend.backend() == "tensorflow" and not isinstance(gradient, tf.IndexedSlices)
            and variable.dtype.is_floating)


def resource_handle(variable):
    """The resource handle of a Keras or TensorFlow variable (the current device's copy inside a
    `tf.distribute` update)."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle


@keras.saving.register_keras_serializable(package="keras_insightface")
class SGD(keras.optimizers.SGD):
    """`keras.optimizers.SGD` whose momentum update is one ``ResourceApplyKerasMomentum`` op per variable:
    ``m = momentum · m − lr · g``, then ``w += m`` (Nesterov: ``w += momentum · m − lr · g``), Keras 3's formulas.
    Without momentum, or for a sparse gradient, the update is Keras' own."""

    def update_step(self, gradient, variable, learning_rate):
        """Apply ``gradient`` (the variable's shape) to ``variable`` at ``learning_rate``."""
        if self.momentum == 0 or not fusable_update(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        momentum = keras_compat.optimizer_slots(self, variable)["momentum"]
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=resource_handle(variable), accum=resource_handle(momentum), lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype), momentum=tf.cast(self.momentum, dtype), use_nesterov=self.nesterov)


def fused_adam_step(optimizer, gradient, variable, learning_rate):
    """One ``ResourceApplyAdam`` op: Keras 3's Adam update of ``variable`` (``m += (g − m)(1 − β1)``,
    ``v += (g² − v)(1 − β2)``, ``w −= α · m / (√v + ε)`` with ``α = lr · √(1 − β2ᵗ) / (1 − β1ᵗ)``)."""
    dtype = variable.dtype
    slots = keras_compat.optimizer_slots(optimizer, variable)
    step = tf.cast(optimizer.iterations + 1, dtype)
    beta_1, beta_2 = tf.cast(optimizer.beta_1, dtype), tf.cast(optimizer.beta_2, dtype)
    tf.raw_ops.ResourceApplyAdam(
        var=resource_handle(variable), m=resource_handle(slots["momentum"]), v=resource_handle(slots["velocity"]),
        beta1_power=tf.pow(beta_1, step), beta2_power=tf.pow(beta_2, step), lr=tf.cast(learning_rate, dtype),
        beta1=beta_1, beta2=beta_2, epsilon=tf.cast(optimizer.epsilon, dtype), grad=tf.cast(gradient, dtype),
        use_nesterov=False)


class FusedAdamUpdate:
    """Mixin of `Adam` and `AdamW`: the update is one ``ResourceApplyAdam`` op per variable (`fused_adam_step`);
    with ``amsgrad`` or a sparse gradient, the Keras optimizer's own."""

    def update_step(self, gradient, variable, learning_rate):
        """Apply ``gradient`` (the variable's shape) to ``variable`` at ``learning_rate``."""
        if self.amsgrad or not fusable_update(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        fused_adam_step(self, gradient, variable, learning_rate)


@keras.saving.register_keras_serializable(package="keras_insightface")
class Adam(FusedAdamUpdate, keras.optimizers.Adam):
    """`keras.optimizers.Adam` with the fused update of `FusedAdamUpdate`."""


@keras.saving.register_keras_serializable(package="keras_insightface")
class AdamW(FusedAdamUpdate, keras.optimizers.AdamW):
    """`keras.optimizers.AdamW` with the fused update of `FusedAdamUpdate`; the decoupled weight decay is applied
    by Keras before it, as in the plain class."""


FUSED_OPTIMIZERS = {keras.optimizers.SGD: SGD, keras.optimizers.Adam: Adam, keras.optimizers.AdamW: AdamW}


def use_fused_update(optimizer):
    """Give a plain Keras `SGD`, `Adam` or `AdamW` object (or the inner optimizer of a `LossScaleOptimizer`) the
    fused update of this module, in place: its class becomes the fused subclass, which adds no state, so the
    object, its variables and every reference to it stay as they are. Other optimizers are left alone.

    Returns:
        ``optimizer``.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    fused_class = FUSED_OPTIMIZERS.get(type(inner))
    if fused_class is not None:
        inner.__class__ = fused_class
    return optimizer
