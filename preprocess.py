"""The input and output contract every model of the project shares.

In: uint8 RGB images (…, H, W, 3), values 0..255, become the model input `(x − 127.5) · 0.0078125` (that is
`(x − 127.5) / 128`, about [−0.996, 0.996]) with `normalize`; `denormalize` is its inverse.
Out: embeddings are compared after `l2_normalize`.

Training pipelines, evaluation, inference and export all use these functions, so the contract is written once.
"""

import numpy as np
import tensorflow as tf
from keras import ops

NORMALIZE_MEAN = 127.5
NORMALIZE_SCALE = 0.0078125  # 1 / 128
L2_EPSILON = 1e-12  # the floor of the squared norm in `l2_normalize` (tf.nn.l2_normalize's default)


def normalize(images):
    """`(x − 127.5) · 0.0078125` of images with values 0..255 (any shape), as float32.

    NumPy input (or lists) gives a NumPy array; a TensorFlow tensor (eager or inside `tf.data` / `tf.function`)
    gives a tensor.
    """
    if tf.is_tensor(images):
        return (tf.cast(images, tf.float32) - NORMALIZE_MEAN) * NORMALIZE_SCALE
    return (np.asarray(images, dtype=np.float32) - NORMALIZE_MEAN) * NORMALIZE_SCALE


def normalize_uint8(images):
    """`normalize` of a uint8 tensor in one TensorFlow op, bitwise equal to `normalize`.

    A quint8 dequantisation over [−0.99609375, 0.99609375] has the step 0.0078125 exactly; it is cheaper than a
    cast, a subtraction and a multiplication on the readers' hot path.
    """
    low = -NORMALIZE_MEAN * NORMALIZE_SCALE
    high = (255 - NORMALIZE_MEAN) * NORMALIZE_SCALE
    return tf.quantization.dequantize(tf.bitcast(images, tf.quint8), low, high, mode="MIN_COMBINED")


def denormalize(inputs):
    """The inverse of `normalize`: model inputs back to 0..255 values (float32, NumPy or tensor as given)."""
    if tf.is_tensor(inputs):
        return tf.cast(inputs, tf.float32) / NORMALIZE_SCALE + NORMALIZE_MEAN
    return np.asarray(inputs, dtype=np.float32) / NORMALIZE_SCALE + NORMALIZE_MEAN


def l2_normalize(x, axis=-1, epsilon=L2_EPSILON):
    """`x / sqrt(max(sum(x², axis), epsilon))`: unit L2 norm along `axis` (the rule of `tf.nn.l2_normalize`).

    Rows of norm 0 stay 0. A Keras/TensorFlow tensor is normalised with `keras.ops` (inside layers and losses);
    anything else is computed in NumPy and keeps its floating dtype (integers become float64).
    """
    if ops.is_tensor(x) or tf.is_tensor(x):
        square_sum = ops.sum(ops.square(x), axis=axis, keepdims=True)
        return x * ops.rsqrt(ops.maximum(square_sum, epsilon))
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    square_sum = np.sum(np.square(x), axis=axis, keepdims=True)
    return x / np.sqrt(np.maximum(square_sum, epsilon))
