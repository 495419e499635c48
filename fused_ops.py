"""Training-speed versions of two Keras 3 building blocks, equal in value to the ones they replace.

- `BatchNormalization`: Keras 3's batch normalisation computes the batch moments, the normalisation and the
  moving-average updates as separate graph ops (about 20 per layer in a training step); for 4-D float32 NHWC
  inputs this layer runs TensorFlow's one fused kernel (``FusedBatchNormV3``) instead, and otherwise defers to
  Keras. Its Python class name is ``BatchNormalization`` on purpose: Keras 3 stores a layer's weights in
  ``.keras`` / ``.weights.h5`` files under the snake-cased class name (``batch_normalization_3``), so the files
  of models built with it keep the layout of plain Keras models and load into either.
- `L2`: Keras 3's L2 regulariser is three ops per kernel (square, sum, multiply); this one is
  ``2 · l2 · tf.nn.l2_loss(x)``, the same value from TensorFlow's one ``L2Loss`` op and a multiply.

Both are registered (package ``keras_insightface``), so saved models rebuild them; models saved with the plain
Keras classes still load (same weights, same config keys).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import keras
import tensorflow as tf


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
    count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
    return outputs, mean, corrected_variance * ((count - 1.0) / count)


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
