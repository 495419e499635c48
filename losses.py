"""Every loss of the original Keras_insightface / GhostFaceNets toolkit, on Keras 3.

Notation used in the docstrings: `x` are the cosine logits of a `NormDense` head (batch, classes), `y` the
(one-hot, label-smoothed or mixup) targets, `θ = acos(x)` and `s` the scale. A margin loss replaces the logits of
every non-zero target entry (so both classes of a mixup sample get the margin, as in the original), multiplies
all logits by `s` and applies categorical cross-entropy with `label_smoothing`.

Conventions shared by all classes here:

- `call` returns one loss per sample; Keras applies the reduction (mean over the batch by default) and, under
  `tf.distribute`, its own division by the number of replicas. Nothing here divides by the replica count again.
- Margins are computed in float32 whatever the dtype policy; cosines are clipped before `acos`, so neither the
  value nor the gradient is NaN for |x| >= 1.
- Running values (AdaCos' scale, AdaFace's batch mean / std, CurricularFace's `t`, MagFace's mean margin...)
  live in non-trainable `keras.Variable`s, readable at any time with `loss.running_values()` or logged each epoch
  by the `LossRunningValuesLogger` callback; nothing is printed during training.
- State is saved twice: scalar state is part of `get_config()` (so `from_config` restores it, as the original
  did), and every state variable, CenterLoss centres included, is written into a `.keras` model file next to the
  model weights and read back by `keras.models.load_model`. CenterLoss also keeps its `initial_file`
  (`<stem>_centers.npy`) workflow.
- Everything is registered under the package name "keras_insightface", so models saved by the original or by
  this library load without `custom_objects`.

The heads (`NormDense`, `NormDenseVPL`, `VPLUpdateQueue`) are defined in `heads.py` and re-exported here.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import math
import os

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from atomic_io import save_npy_atomic
from heads import NormDense, NormDenseVPL, VPLUpdateQueue
from preprocess import l2_normalize

__all__ = [
    "AcrTripLoss",
    "AdaCosLoss",
    "AdaFaceLoss",
    "AirFaceLoss",
    "ArcBatchHardTripletLoss",
    "ArcfaceLoss",
    "ArcfaceLossSimple",
    "BatchAllTripletLoss",
    "BatchHardTripletLoss",
    "BatchHardTripletLossEuclidean",
    "BatchHardTripletLossEuclideanAutoAlpha",
    "CenterLoss",
    "CenterLossCosine",
    "CosFaceLoss",
    "CurricularFaceLoss",
    "DistillKLDivergenceLoss",
    "LossRunningValuesLogger",
    "MagFaceLoss",
    "MarginSoftmax",
    "NormDense",
    "NormDenseVPL",
    "OfflineArcTripletLoss",
    "OfflineTripletLoss",
    "Save_Numpy_Callback",
    "TripletLossWapper",
    "VPLUpdateQueue",
    "combined_margin",
    "distiller_loss_cosine",
    "distiller_loss_euclidean",
    "flatten_losses",
]

register = keras.saving.register_keras_serializable(package="keras_insightface")

# Cosines are clipped to [-1 + eps, 1 - eps] before acos: acos'(±1) is infinite, and 1 - 1e-7 is the float32
# number just below 1, so values inside (-1, 1) are untouched.
COSINE_CLIP_EPSILON = 1e-7


# ----------------------------------------------------------------------------------------------------------------
# Shared formulas
# ----------------------------------------------------------------------------------------------------------------
def angle(cosine, epsilon=COSINE_CLIP_EPSILON):
    """`acos(x)` in radians with `x` clipped to [-1 + epsilon, 1 - epsilon] (finite value and gradient)."""
    return ops.arccos(ops.clip(cosine, -1.0 + epsilon, 1.0 - epsilon))


def combined_margin(cosine, margin1=1.0, margin2=0.0, margin3=0.0):
    """InsightFace's combined margin `cos(m1·θ + m2) - m3`, made monotonic in θ.

    Beyond `θ > (π - m2) / m1` (that is `x <= cos((π - m2) / m1)`) the value would rise again, so it is replaced
    by `2·(-1 - m3) - value`, which keeps decreasing and is continuous at the threshold.
    Margins (1, 0, 0) return `x` unchanged. Shapes are those of `cosine`; margins may be tensors that broadcast.
    """
    if margin1 == 1.0 and margin2 == 0.0 and margin3 == 0.0:
        return cosine
    value = ops.cos(angle(cosine) * margin1 + margin2) - margin3
    threshold = math.cos((math.pi - margin2) / margin1)
    theta_min = (-1.0 - margin3) * 2
    return ops.where(cosine > threshold, value, theta_min - value)


def target_mask(y_true):
    """Boolean mask of the target entries: every non-zero entry of `y_true` (both classes of a mixup sample)."""
    return ops.not_equal(y_true, 0)


def replace_targets(y_true, logits, target_logits):
    """`target_logits` where `y_true != 0`, `logits` elsewhere."""
    return ops.where(target_mask(y_true), target_logits, logits)


def masked_mean(values, mask):
    """Mean of `values` over the entries where `mask` is true (0 when there are none)."""
    mask = ops.cast(mask, values.dtype)
    return ops.sum(values * mask) / ops.maximum(ops.sum(mask), 1.0)


def hard_labels(y_true):
    """Integer class of every sample: the arg-max of its (possibly soft) target row, shape (batch,)."""
    return ops.argmax(y_true, axis=-1)


def split_norm_column(y_pred):
    """Split a `NormDense(append_norm=True)` output into cosines (batch, classes) and the norm ||f|| (batch,)."""
    return y_pred[:, :-1], -y_pred[:, -1]


def state_variable(value, name, dtype="float32", aggregation="mean"):
    """A non-trainable `keras.Variable` holding loss state (create the loss inside `strategy.scope()`)."""
    return keras.Variable(value, dtype=dtype, trainable=False, aggregation=aggregation, name=name)


# ----------------------------------------------------------------------------------------------------------------
# Base classes
# ----------------------------------------------------------------------------------------------------------------
class InsightfaceLoss(keras.losses.Loss):
    """Base of every loss here: float32 inputs, legacy config keys, state variables saved with the model.

    Subclasses define `compute_loss(y_true, y_pred)`, the per-sample loss of shape (batch,) from float32 inputs,
    and list their state in `state_variables()`; those are written into `.keras` model files through
    `save_own_variables` / `load_own_variables` and reported by `running_values()`.
    """

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if reduction == "auto":  # configs written by tf.keras 2
            reduction = "sum_over_batch_size"
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def state_variables(self):
        """The loss's non-trainable state as a dict name -> keras.Variable (empty for stateless losses)."""
        return {}

    def running_values(self):
        """Current value of every state variable of at most 16 entries, as Python floats or lists."""
        values = {}
        for name, variable in self.state_variables().items():
            if int(np.prod(variable.shape)) <= 16:
                value = keras.ops.convert_to_numpy(variable)
                values[name] = value.tolist() if value.ndim else float(value)
        return values

    def save_own_variables(self, store):
        """Write the state variables into a Keras weights store (called by `model.save`)."""
        for name, variable in self.state_variables().items():
            store[name] = keras.ops.convert_to_numpy(variable)

    def load_own_variables(self, store):
        """Read back what `save_own_variables` wrote (called by `keras.models.load_model`)."""
        for name, variable in self.state_variables().items():
            if name not in store:
                raise ValueError(f"{type(self).__name__} '{self.name}': no saved value for state '{name}'")
            variable.assign(store[name])

    def call(self, y_true, y_pred):
        return self.compute_loss(ops.cast(y_true, "float32"), ops.cast(y_pred, "float32"))



class MarginLossBase(InsightfaceLoss):
    """Cosine-logit loss: subclasses turn cosines into scaled margin logits, this applies the cross-entropy.

    Args:
        scale: the logit scale `s`.
        from_logits: passed to `keras.losses.categorical_crossentropy`.
        label_smoothing: passed to `keras.losses.categorical_crossentropy`.
        **kwargs: `name`, `reduction`, `dtype` of `keras.losses.Loss`.

    Subclasses define `margin_logits(y_true, cosine)`: the scaled logits with the margin applied to the target
    entries, shape (batch, classes).

    `build(batch_size)` (used with `NormDenseVPL`) makes the loss keep each batch's integer labels in
    `batch_labels_back_up`, which `VPLUpdateQueue` reads.
    """

    def __init__(self, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(**kwargs)
        self.scale, self.from_logits, self.label_smoothing = scale, from_logits, label_smoothing
        self.batch_labels_back_up = None

    def build(self, batch_size):
        """Create `batch_labels_back_up`, an int64 (batch_size,) variable receiving the labels of each batch."""
        self.batch_labels_back_up = state_variable(
            np.zeros([batch_size], "int64"), "batch_labels_back_up", dtype="int64", aggregation="only_first_replica"
        )

    def compute_loss(self, y_true, y_pred):
        if self.batch_labels_back_up is not None:
            self.batch_labels_back_up.assign(hard_labels(y_true))
        logits = self.margin_logits(y_true, y_pred)
        return keras.losses.categorical_crossentropy(
            y_true, logits, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update({"scale": self.scale, "from_logits": self.from_logits, "label_smoothing": self.label_smoothing})
        return config


# ----------------------------------------------------------------------------------------------------------------
# Softmax-family margin losses
# ----------------------------------------------------------------------------------------------------------------
@register
class MarginSoftmax(InsightfaceLoss):
    """Margin on softmax **probabilities** (for a `Dense` + softmax head, not `NormDense`).

    The target probability `p` becomes `p**power` when `scale == 0`, `p*scale` when `power == 1`, otherwise
    `(p**power + p*scale) / 2`; all probabilities are then multiplied by `scale_all` and fed to the cross-entropy
    (`from_logits=False` by default).
    """

    def __init__(self, power=2, scale=0.4, scale_all=1.0, from_logits=False, label_smoothing=0, **kwargs):
        super().__init__(**kwargs)
        self.power, self.scale, self.scale_all = power, scale, scale_all
        self.from_logits, self.label_smoothing = from_logits, label_smoothing

    def margined_probability(self, prob):
        """The target transformation chosen by `power` and `scale`."""
        if self.power != 1 and self.scale == 0:
            return prob**self.power
        if self.power == 1 and self.scale != 0:
            return prob * self.scale
        return (prob**self.power + prob * self.scale) / 2

    def compute_loss(self, y_true, y_pred):
        logits = replace_targets(y_true, y_pred, self.margined_probability(y_pred)) * self.scale_all
        return keras.losses.categorical_crossentropy(
            y_true, logits, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "power": self.power,
                "scale": self.scale,
                "scale_all": self.scale_all,
                "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing,
            }
        )
        return config


@register
class ArcfaceLoss(MarginLossBase):
    """Combined-margin ArcFace: target logit `cos(m1·θ + m2) - m3` (with the monotonic fallback), times `scale`.

    Defaults are ArcFace (m2 = 0.5); (1, 0, 0.35) is CosFace, (1, 0, 0) the plain normalised softmax
    `CE(y, s·x)` (the original's former `scale_softmax`). The usual schedule is `scale=32` for the first epoch,
    then `scale=64`.
    """

    def __init__(self, margin1=1.0, margin2=0.5, margin3=0.0, scale=64.0, from_logits=True, label_smoothing=0,
                 **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin1, self.margin2, self.margin3 = margin1, margin2, margin3
        self.threshold = math.cos((math.pi - margin2) / margin1)
        self.theta_min = (-1 - margin3) * 2

    def margin_logits(self, y_true, cosine):
        target = combined_margin(cosine, self.margin1, self.margin2, self.margin3)
        return replace_targets(y_true, cosine, target) * self.scale

    def get_config(self):
        config = super().get_config()
        config.update({"margin1": self.margin1, "margin2": self.margin2, "margin3": self.margin3})
        return config


@register
class ArcfaceLossSimple(MarginLossBase):
    """ArcFace with one additive angular margin: target `cos(θ + margin)` (monotonic fallback beyond π - margin).

    Base class of CurricularFace, AirFace, CosFace, MagFace and AdaFace, as in the original.
    """

    def __init__(self, margin=0.5, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin = margin
        self.threshold = math.cos(math.pi - margin)
        self.theta_min = -2

    def margin_logits(self, y_true, cosine):
        return replace_targets(y_true, cosine, combined_margin(cosine, 1.0, self.margin)) * self.scale

    def get_config(self):
        config = super().get_config()
        config["margin"] = self.margin
        return config


@register
class CurricularFaceLoss(ArcfaceLossSimple):
    """CurricularFace (Huang et al., CVPR 2020): ArcFace target plus re-weighted hard negatives.

    Each call first updates `t ← 0.01·mean(target cosines) + 0.99·t` (variable `hard_scale`, initial value
    `hard_scale`), then every non-target cosine `x_j` above its row's margined target `cos(θ_y + m)` becomes
    `x_j·(t + x_j)`. For soft labels the row's reference target is that of its largest label.
    """

    def __init__(self, margin=0.5, scale=64.0, from_logits=True, label_smoothing=0, hard_scale=0, **kwargs):
        super().__init__(margin, scale, from_logits, label_smoothing, **kwargs)
        self.hard_scale = state_variable(float(hard_scale), "hard_scale")

    def state_variables(self):
        return {"hard_scale": self.hard_scale}

    def margin_logits(self, y_true, cosine):
        is_target = target_mask(y_true)
        target = combined_margin(cosine, 1.0, self.margin)
        self.hard_scale.assign(0.01 * masked_mean(cosine, is_target) + 0.99 * self.hard_scale)
        row_target = ops.take_along_axis(target, ops.expand_dims(hard_labels(y_true), 1), axis=1)
        hard_t = ops.cast(self.hard_scale, cosine.dtype)
        modulated = ops.where(cosine > row_target, cosine * (hard_t + cosine), cosine)
        return ops.where(is_target, target, modulated) * self.scale

    def get_config(self):
        config = super().get_config()
        config["hard_scale"] = float(keras.ops.convert_to_numpy(self.hard_scale))
        return config


@register
class AirFaceLoss(ArcfaceLossSimple):
    """AirFace (Li et al., 2019) as in the original: target logit `1 - 2m/π - 2θ/π`, linear in the angle.

    Non-target logits stay raw cosines (the paper linearises them too; the original did not).
    """

    def __init__(self, margin=0.4, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(margin, scale, from_logits, label_smoothing, **kwargs)

    def margin_logits(self, y_true, cosine):
        target = 1 - 2 * self.margin / math.pi - angle(cosine) * (2 / math.pi)
        return replace_targets(y_true, cosine, target) * self.scale


@register
class CosFaceLoss(ArcfaceLossSimple):
    """CosFace / AM-softmax (Wang et al., CVPR 2018): target logit `x - margin`, all logits times `scale`."""

    def __init__(self, margin=0.35, scale=64.0, from_logits=True, label_smoothing=0, **kwargs):
        super().__init__(margin, scale, from_logits, label_smoothing, **kwargs)

    def margin_logits(self, y_true, cosine):
        return replace_targets(y_true, cosine, cosine - self.margin) * self.scale


@register
class MagFaceLoss(ArcfaceLossSimple):
    """MagFace (Meng et al., CVPR 2021). Needs `NormDense(append_norm=True)` (last column `-||f||`).

    Cosines are clipped to ±(1 - 1e-3), the norm `a` to [min_feature_norm, max_feature_norm]; the margin is
    `m(a) = (max_margin - min_margin)/(max_feature_norm - min_feature_norm)·(a - min_feature_norm) + min_margin`,
    the target `min(cos(θ + m(a)), x)` (or `x - m(a)` with `use_cosface_margin`), all logits times `scale`.
    Loss = cross-entropy + `regularizer_loss_lambda·(a / max_feature_norm² + 1/a)`.
    `curricular_hard_scale` is accepted for compatibility with saved configs and, as in the original, unused.
    A gentler fine-tuning set suggested by the original: norms 1..51, margins 0.45..1, lambda 5.
    Running values: `mean_margin`, `mean_feature_norm` of the last batch.
    """

    def __init__(self, min_feature_norm=10.0, max_feature_norm=110.0, min_margin=0.45, max_margin=0.8, scale=64.0,
                 regularizer_loss_lambda=35.0, use_cosface_margin=False, curricular_hard_scale=-1, from_logits=True,
                 label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.min_feature_norm, self.max_feature_norm = min_feature_norm, max_feature_norm
        self.min_margin, self.max_margin = min_margin, max_margin
        self.regularizer_loss_lambda, self.use_cosface_margin = regularizer_loss_lambda, use_cosface_margin
        self.curricular_hard_scale = curricular_hard_scale
        self.margin_slope = (max_margin - min_margin) / (max_feature_norm - min_feature_norm)
        self.epsilon = 1e-3
        self.mean_margin = state_variable(0.0, "mean_margin")
        self.mean_feature_norm = state_variable(0.0, "mean_feature_norm")

    def state_variables(self):
        return {"mean_margin": self.mean_margin, "mean_feature_norm": self.mean_feature_norm}

    def clipped_inputs(self, y_pred):
        """Clipped cosines (batch, classes) and clipped feature norms (batch,)."""
        cosine, feature_norm = split_norm_column(y_pred)
        cosine = ops.clip(cosine, -1 + self.epsilon, 1 - self.epsilon)
        return cosine, ops.clip(feature_norm, self.min_feature_norm, self.max_feature_norm)

    def margin_logits(self, y_true, y_pred):
        cosine, feature_norm = self.clipped_inputs(y_pred)
        margin = self.margin_slope * (feature_norm - self.min_feature_norm) + self.min_margin
        self.mean_margin.assign(ops.mean(margin))
        self.mean_feature_norm.assign(ops.mean(feature_norm))
        margin = ops.expand_dims(margin, 1)
        arc_target = ops.minimum(ops.cos(angle(cosine) + margin), cosine)
        target = cosine - margin if self.use_cosface_margin else arc_target
        return replace_targets(y_true, cosine, target) * self.scale

    def compute_loss(self, y_true, y_pred):
        _, feature_norm = self.clipped_inputs(y_pred)
        regularizer = feature_norm / self.max_feature_norm**2 + 1.0 / feature_norm
        return super().compute_loss(y_true, y_pred) + self.regularizer_loss_lambda * regularizer

    def get_config(self):
        config = super().get_config()
        config.pop("margin")
        config.update(
            {
                "min_feature_norm": self.min_feature_norm,
                "max_feature_norm": self.max_feature_norm,
                "min_margin": self.min_margin,
                "max_margin": self.max_margin,
                "regularizer_loss_lambda": self.regularizer_loss_lambda,
                "use_cosface_margin": self.use_cosface_margin,
                "curricular_hard_scale": self.curricular_hard_scale,
            }
        )
        return config


@register
class AdaFaceLoss(ArcfaceLossSimple):
    """AdaFace (Kim et al., CVPR 2022). Needs `NormDense(append_norm=True)` (last column `-||f||`).

    The norm is clipped to [0.001, 100] and cosines to ±(1 - 1e-3). Running batch mean μ and standard deviation sd
    (n - 1 divisor) of the norm are updated with momentum `mean_std_alpha` from μ = 20, sd = 100. With
    `ŝ = clip(margin_alpha·(‖f‖ - μ)/(sd + 1e-3), -1, 1)` and `g = margin·ŝ` (no gradient), the target logit is
    `cos(clip(θ - g, 1e-3, π - 1e-3)) - (margin + g)`; all logits are multiplied by `scale`.

    Running values: `batch_mean`, `batch_std` (saved in the config as `_batch_mean_` / `_batch_std_`) and
    `margin_histogram`, the fraction of samples whose `g` falls in the low / middle / high third of
    [-margin, margin] (the original printed this histogram).
    """

    def __init__(self, margin=0.4, margin_alpha=0.333, mean_std_alpha=0.01, scale=64.0, from_logits=True,
                 label_smoothing=0, **kwargs):
        super().__init__(scale=scale, from_logits=from_logits, label_smoothing=label_smoothing, **kwargs)
        self.margin, self.margin_alpha, self.mean_std_alpha = margin, margin_alpha, mean_std_alpha
        self.min_feature_norm, self.max_feature_norm, self.epsilon = 0.001, 100.0, 1e-3
        self.batch_mean = state_variable(20.0, "batch_mean")
        self.batch_std = state_variable(100.0, "batch_std")
        self.margin_histogram = state_variable(np.zeros([3], "float32"), "margin_histogram")

    def state_variables(self):
        return {"batch_mean": self.batch_mean, "batch_std": self.batch_std, "margin_histogram": self.margin_histogram}

    def scaled_margin(self, feature_norm):
        """Update the running norm statistics and return `g = margin·ŝ`, shape (batch, 1), without gradient."""
        feature_norm = ops.stop_gradient(feature_norm)
        norm_mean = ops.mean(feature_norm)
        samples = ops.cast(ops.maximum(ops.shape(feature_norm)[0] - 1, 1), "float32")
        norm_std = ops.sqrt(ops.sum(ops.square(feature_norm - norm_mean)) / samples)
        self.batch_mean.assign(self.mean_std_alpha * norm_mean + (1.0 - self.mean_std_alpha) * self.batch_mean)
        self.batch_std.assign(self.mean_std_alpha * norm_std + (1.0 - self.mean_std_alpha) * self.batch_std)
        standardized = (feature_norm - self.batch_mean) / (self.batch_std + self.epsilon)
        margin = self.margin * ops.clip(standardized * self.margin_alpha, -1, 1)
        third = self.margin / 3
        low, high = ops.mean(ops.cast(margin < -third, "float32")), ops.mean(ops.cast(margin > third, "float32"))
        self.margin_histogram.assign(ops.stack([low, 1.0 - low - high, high]))
        return ops.expand_dims(margin, 1)

    def margin_logits(self, y_true, y_pred):
        cosine, feature_norm = split_norm_column(y_pred)
        cosine = ops.clip(cosine, -1 + self.epsilon, 1 - self.epsilon)
        feature_norm = ops.clip(feature_norm, self.min_feature_norm, self.max_feature_norm)
        margin = self.scaled_margin(feature_norm)
        target_angle = ops.clip(angle(cosine) - margin, self.epsilon, math.pi - self.epsilon)
        target = ops.cos(target_angle) - (self.margin + margin)
        return replace_targets(y_true, cosine, target) * self.scale

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "margin_alpha": self.margin_alpha,
                "mean_std_alpha": self.mean_std_alpha,
                "_batch_mean_": float(keras.ops.convert_to_numpy(self.batch_mean)),
                "_batch_std_": float(keras.ops.convert_to_numpy(self.batch_std)),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        batch_mean, batch_std = config.pop("_batch_mean_", 20.0), config.pop("_batch_std_", 100.0)
        loss = cls(**config)
        loss.batch_mean.assign(batch_mean)
        loss.batch_std.assign(batch_std)
        return loss


@register
class AdaCosLoss(InsightfaceLoss):
    """AdaCos (Zhang et al., CVPR 2019): no margin, an adaptive scale `s` (variable `scale`).

    Initial `s = sqrt(2)·log(num_classes - 1)` when `scale == 0`. Each call, with `θ_med` the
    `(batch // 2 - 1)`-th smallest target angle and `B_avg` the batch mean of `Σ_{j non-target} exp(s·x_j)`,
    `s ← log(B_avg) / cos(min(max_median, θ_med))`; the logits are `s·x`. Target angles are taken from each row's
    two largest target entries (mixup makes at most two), so the computation has static shapes.
    """

    def __init__(self, num_classes=1000, scale=0, max_median=np.pi / 4, from_logits=True, label_smoothing=0,
                 **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.max_median = num_classes, max_median
        self.from_logits, self.label_smoothing = from_logits, label_smoothing
        if scale == 0:
            scale = math.sqrt(2.0) * math.log(num_classes - 1)
        self.scale = state_variable(float(scale), "scale")

    def state_variables(self):
        return {"scale": self.scale}

    def median_target_angle(self, y_true, cosine):
        """The `(batch // 2 - 1)`-th smallest target angle of the batch (index clipped at 0)."""
        masked_angles = ops.where(target_mask(y_true), angle(cosine), 2 * math.pi)
        per_row = -ops.top_k(-masked_angles, k=min(2, masked_angles.shape[-1]))[0]  # two smallest per row
        position = ops.maximum(ops.shape(cosine)[0] // 2 - 1, 0)
        return ops.take(ops.sort(ops.reshape(per_row, [-1])), position)

    def compute_loss(self, y_true, y_pred):
        theta_med = self.median_target_angle(y_true, y_pred)
        non_target_exp = ops.where(target_mask(y_true), 0.0, ops.exp(self.scale * y_pred))
        b_avg = ops.mean(ops.sum(non_target_exp, axis=1))
        self.scale.assign(ops.log(b_avg) / ops.cos(ops.minimum(self.max_median, theta_med)))
        return keras.losses.categorical_crossentropy(
            y_true, y_pred * self.scale, from_logits=self.from_logits, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "scale": float(keras.ops.convert_to_numpy(self.scale)),
                "max_median": self.max_median,
                "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing,
            }
        )
        return config


# ----------------------------------------------------------------------------------------------------------------
# Center loss
# ----------------------------------------------------------------------------------------------------------------
class Save_Numpy_Callback(keras.callbacks.Callback):  # noqa: N801 (the original's name)
    """Save a variable to `<splitext(save_file)[0]>.npy` at the end of every epoch (CenterLoss centres).

    The file is written atomically: a reader or a resumed run sees the previous epoch's array or the new one.
    """

    def __init__(self, save_file, save_tensor):
        super().__init__()
        self.save_file = os.path.splitext(save_file)[0]
        self.save_tensor = save_tensor

    def on_epoch_end(self, epoch=0, logs=None):
        save_npy_atomic(self.save_file + ".npy", keras.ops.convert_to_numpy(self.save_tensor))


def gather_replicas(tensor):
    """`tensor` concatenated along axis 0 over the replicas of the current `tf.distribute` strategy (or itself)."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return tensor
    return context.all_gather(tensor, axis=0)


def load_centers(initial_file, num_classes, emb_shape):
    """Read a (num_classes, emb_shape) float32 `.npy` of centres, with an error naming the file if it does not fit."""
    try:
        centers = np.load(initial_file, allow_pickle=False)
    except (OSError, ValueError) as error:
        raise ValueError(f"{initial_file}: not a readable .npy array of centres ({error})") from error
    if centers.shape != (num_classes, emb_shape):
        raise ValueError(
            f"{initial_file}: centres have shape {centers.shape}, expected (num_classes, emb_shape) = "
            f"({num_classes}, {emb_shape})"
        )
    return centers.astype("float32")


@register
class CenterLoss(InsightfaceLoss):
    """Center loss (Wen et al., ECCV 2016) on embeddings: per sample `0.5·||e - c_y||²`.

    `centers` is a non-trainable (num_classes, emb_shape) variable starting at zeros, or read from
    `initial_file` when that file exists; `save_centers_callback` (only with `initial_file`) writes it back there
    every epoch, and `.keras` model files store it as well. Each call moves the centres of the batch's labels:
    `c_y -= alpha·(c_y - e)/(n_y + 1)` for every sample (n_y = count of label y in the global batch;
    duplicates add up). Under `tf.distribute` labels and moves of all replicas are gathered, so the centres
    move exactly as in single-device training on the same global batch.
    """

    def __init__(self, num_classes, emb_shape=512, alpha=0.5, initial_file=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.emb_shape, self.alpha = num_classes, emb_shape, alpha
        self.initial_file = initial_file
        initial = np.zeros([num_classes, emb_shape], "float32")
        if initial_file and os.path.exists(initial_file):
            initial = load_centers(initial_file, num_classes, emb_shape)
        self.centers = state_variable(initial, "centers", aggregation="only_first_replica")
        if initial_file:
            self.save_centers_callback = Save_Numpy_Callback(initial_file, self.centers)

    def state_variables(self):
        return {"centers": self.centers}

    def distance(self, centers_batch, embedding):
        """Per-sample distance between embeddings and their class centres, shape (batch,)."""
        return ops.sum(ops.square(embedding - centers_batch), axis=-1) / 2

    def compute_loss(self, y_true, y_pred):
        labels = hard_labels(y_true)
        centers_batch = ops.take(self.centers, labels, axis=0)
        loss = self.distance(centers_batch, y_pred)

        all_labels = gather_replicas(labels)
        same_label = ops.cast(ops.equal(ops.expand_dims(all_labels, 0), ops.expand_dims(labels, 1)), "float32")
        label_counts = ops.sum(same_label, axis=1, keepdims=True)
        step = ops.stop_gradient(self.alpha * (centers_batch - y_pred) / (label_counts + 1))
        self.centers.value.scatter_sub(tf.IndexedSlices(gather_replicas(step), all_labels))
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "emb_shape": self.emb_shape,
                "alpha": self.alpha,
                "initial_file": self.initial_file,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "feature_dim" in config:  # names used by older Keras_insightface versions
            config["emb_shape"] = config.pop("feature_dim")
        config.pop("factor", None)
        config.pop("logits_loss", None)
        return cls(**config)


@register
class CenterLossCosine(CenterLoss):
    """Center loss with cosine distance: per sample `1 - cos(e, c_y)`; centres are updated as in `CenterLoss`."""

    def distance(self, centers_batch, embedding):
        return 1 - ops.sum(l2_normalize(embedding, axis=1) * l2_normalize(centers_batch, axis=1), axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# Triplet losses: `y_true` is the one-hot label, `y_pred` the embedding
# ----------------------------------------------------------------------------------------------------------------
def cosine_similarities(embeddings):
    """Pairwise cosine similarity matrix (batch, batch) of L2-normalised embeddings."""
    norm_emb = l2_normalize(embeddings, axis=1)
    return ops.matmul(norm_emb, ops.transpose(norm_emb))


def squared_distances(embeddings):
    """Pairwise squared Euclidean distances (batch, batch) of raw embeddings."""
    square_sum = ops.sum(ops.square(embeddings), axis=-1)
    return ops.expand_dims(square_sum, 1) + square_sum - 2 * ops.matmul(embeddings, ops.transpose(embeddings))


def same_label_mask(y_true):
    """(batch, batch) mask of sample pairs with the same label (the diagonal included)."""
    labels = hard_labels(y_true)
    return ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))


def hardest_cosine_pairs(y_true, embeddings):
    """Per anchor: the lowest similarity to a same-label sample (itself included, so 1 for a lone sample) and
    the highest similarity to another label (-1 when there is none). Shapes (batch,), (batch,)."""
    similarity = cosine_similarities(embeddings)
    positive = same_label_mask(y_true)
    hardest_positive = ops.min(ops.where(positive, similarity, 1.0), axis=-1)
    hardest_negative = ops.max(ops.where(positive, -1.0, similarity), axis=-1)
    return hardest_positive, hardest_negative


@register
class TripletLossWapper(InsightfaceLoss):
    """Base of the triplet losses (the original's spelling); `alpha` is the margin. `call(labels, embeddings)`."""

    def __init__(self, alpha=0.35, **kwargs):
        super().__init__(**kwargs)
        self.alpha = alpha

    def get_config(self):
        config = super().get_config()
        config["alpha"] = self.alpha
        return config


@register
class BatchHardTripletLoss(TripletLossWapper):
    """Batch-hard triplet loss on cosine similarity: `max(hardest_neg - hardest_pos + alpha, 0)` per anchor."""

    def compute_loss(self, y_true, y_pred):
        hardest_positive, hardest_negative = hardest_cosine_pairs(y_true, y_pred)
        return ops.maximum(hardest_negative - hardest_positive + self.alpha, 0.0)


@register
class ArcBatchHardTripletLoss(TripletLossWapper):
    """Batch-hard triplet with an angular margin: `max(hardest_neg - cos(acos(hardest_pos) + alpha), 0)`
    (monotonic fallback below `cos(π - alpha)`)."""

    def compute_loss(self, y_true, y_pred):
        hardest_positive, hardest_negative = hardest_cosine_pairs(y_true, y_pred)
        return ops.maximum(hardest_negative - combined_margin(hardest_positive, 1.0, self.alpha), 0.0)


def hardest_euclidean_pairs(y_true, embeddings):
    """Per anchor: largest squared distance to a same-label sample and smallest to another label, plus the
    full distance matrix. Shapes (batch,), (batch,), (batch, batch)."""
    distances = squared_distances(embeddings)
    positive = same_label_mask(y_true)
    hardest_positive = ops.max(ops.where(positive, distances, 0.0), axis=-1)
    hardest_negative = ops.min(ops.where(positive, ops.max(distances), distances), axis=-1)
    return hardest_positive, hardest_negative, distances


@register
class BatchHardTripletLossEuclidean(TripletLossWapper):
    """Batch-hard triplet on squared Euclidean distances: `max(hardest_pos + alpha - hardest_neg, 0)`."""

    def compute_loss(self, y_true, y_pred):
        hardest_positive, hardest_negative, _ = hardest_euclidean_pairs(y_true, y_pred)
        return ops.maximum(hardest_positive + self.alpha - hardest_negative, 0.0)


@register
class BatchHardTripletLossEuclideanAutoAlpha(TripletLossWapper):
    """`BatchHardTripletLossEuclidean` whose margin follows the data (could not be constructed in the original).

    The margin is the variable `auto_alpha` (initially `init_auto_alpha`); after each call it becomes
    `alpha · mean(pairwise squared distances of the batch)`.
    """

    def __init__(self, alpha=0.1, init_auto_alpha=1, **kwargs):
        super().__init__(alpha=alpha, **kwargs)
        self.auto_alpha = state_variable(float(init_auto_alpha), "auto_alpha")

    def state_variables(self):
        return {"auto_alpha": self.auto_alpha}

    def compute_loss(self, y_true, y_pred):
        hardest_positive, hardest_negative, distances = hardest_euclidean_pairs(y_true, y_pred)
        loss = ops.maximum(hardest_positive + ops.cast(self.auto_alpha, "float32") - hardest_negative, 0.0)
        self.auto_alpha.assign(ops.mean(ops.stop_gradient(distances)) * self.alpha)
        return loss

    def get_config(self):
        config = super().get_config()
        config["init_auto_alpha"] = float(keras.ops.convert_to_numpy(self.auto_alpha))
        return config


@register
class BatchAllTripletLoss(TripletLossWapper):
    """The original's "batch-all" loss: `mean over positives (1 - cos)` + `sum(cos of valid negatives) /
    (count + 1)`, where a negative is valid when `hardest_pos - cos < alpha`."""

    def compute_loss(self, y_true, y_pred):
        similarity = cosine_similarities(y_pred)
        positive = same_label_mask(y_true)
        positive_similarity = ops.where(positive, similarity, 1.0)
        positive_loss = ops.sum(1.0 - positive_similarity, -1) / ops.sum(ops.cast(positive, "float32"), -1)
        hardest_positive = ops.min(positive_similarity, axis=-1, keepdims=True)
        valid_negative = ops.logical_and(ops.logical_not(positive), hardest_positive - similarity < self.alpha)
        negative_sum = ops.sum(ops.where(valid_negative, similarity, 0.0), -1)
        return positive_loss + negative_sum / (ops.sum(ops.cast(valid_negative, "float32"), -1) + 1)


def offline_triplet_similarities(embeddings):
    """For a batch laid out as [anchor, positive, negative] triples: cos(a, p) and cos(a, n), shape (batch/3,)."""
    norm_emb = ops.reshape(l2_normalize(embeddings, axis=1), (-1, 3, embeddings.shape[-1]))
    anchor, positive, negative = norm_emb[:, 0], norm_emb[:, 1], norm_emb[:, 2]
    return ops.sum(anchor * positive, -1), ops.sum(anchor * negative, -1)


@register
class OfflineTripletLoss(TripletLossWapper):
    """Offline triplets (batch of consecutive anchor, positive, negative): `max(cos(a,n) - cos(a,p) + alpha, 0)`,
    one value per triple."""

    def compute_loss(self, y_true, y_pred):
        positive, negative = offline_triplet_similarities(y_pred)
        return ops.maximum(negative - positive + self.alpha, 0.0)


@register
class OfflineArcTripletLoss(TripletLossWapper):
    """Offline triplets with an angular margin: `max(cos(a,n) - cos(acos(cos(a,p)) + alpha), 0)` per triple.

    The monotonic fallback is decided on the raw positive cosine, as everywhere else (the original tested the
    already-margined value, which made the loss jump at θ = π - 2·alpha).
    """

    def compute_loss(self, y_true, y_pred):
        positive, negative = offline_triplet_similarities(y_pred)
        return ops.maximum(negative - combined_margin(positive, 1.0, self.alpha), 0.0)


@register
class AcrTripLoss(ArcfaceLossSimple):
    """ArcFace minus a batch-hard triplet term, on `concatenate([embedding, cosine_logits])`.

    The first `emb_shape` columns are the embedding (512 was hard-coded in the original), the rest the cosine
    logits. The arc target becomes `combined_margin(x, 1, margin) - max(hardest_neg - hardest_pos, 0)`.
    """

    def __init__(self, margin=0.5, scale=64.0, from_logits=True, label_smoothing=0, emb_shape=512, **kwargs):
        super().__init__(margin, scale, from_logits, label_smoothing, **kwargs)
        self.emb_shape = emb_shape

    def margin_logits(self, y_true, y_pred):
        embeddings, cosine = y_pred[:, : self.emb_shape], y_pred[:, self.emb_shape :]
        hardest_positive, hardest_negative = hardest_cosine_pairs(y_true, embeddings)
        triplet = ops.expand_dims(ops.maximum(hardest_negative - hardest_positive, 0.0), 1)
        target = combined_margin(cosine, 1.0, self.margin) - triplet
        return replace_targets(y_true, cosine, target) * self.scale

    def get_config(self):
        config = super().get_config()
        config["emb_shape"] = self.emb_shape
        return config


# ----------------------------------------------------------------------------------------------------------------
# Distillation
# ----------------------------------------------------------------------------------------------------------------
@register
def distiller_loss_euclidean(true_emb, pred_emb):
    """Per-sample squared Euclidean distance between teacher and student embeddings, `sum((pred - true)²)`."""
    true_emb, pred_emb = ops.cast(true_emb, "float32"), ops.cast(pred_emb, "float32")
    return ops.sum(ops.square(pred_emb - true_emb), axis=-1)


@register
def distiller_loss_cosine(true_emb, pred_emb):
    """Per-sample `1 - cos(pred, true)` with norms offset by 1e-5; non-finite teacher entries become sqrt(1/D)."""
    true_emb, pred_emb = ops.cast(true_emb, "float32"), ops.cast(pred_emb, "float32")
    true_emb = ops.where(ops.isfinite(true_emb), true_emb, math.sqrt(1.0 / true_emb.shape[-1]))
    true_normed = true_emb / (ops.norm(true_emb, axis=-1, keepdims=True) + 1e-5)
    pred_normed = pred_emb / (ops.norm(pred_emb, axis=-1, keepdims=True) + 1e-5)
    return 1 - ops.sum(pred_normed * true_normed, axis=-1)


@register
class DistillKLDivergenceLoss(InsightfaceLoss):
    """Per-sample `KL(softmax(scale·teacher) ‖ softmax(scale·student))` on cosine logits (a `NormDense` head)."""

    def __init__(self, scale=10, **kwargs):
        super().__init__(**kwargs)
        self.scale = scale

    def compute_loss(self, y_true, y_pred):
        teacher = ops.softmax(y_true * self.scale, axis=1)
        student = ops.softmax(y_pred * self.scale, axis=1)
        return keras.losses.kl_divergence(teacher, student)

    def get_config(self):
        config = super().get_config()
        config["scale"] = self.scale
        return config


# ----------------------------------------------------------------------------------------------------------------
# Reporting
# ----------------------------------------------------------------------------------------------------------------
class LossRunningValuesLogger(keras.callbacks.Callback):
    """Put every loss's `running_values()` into the epoch logs (so History / CSV loggers record them).

    Keys are `<loss name>_<value name>`, e.g. `ada_face_loss_batch_mean`; list values (AdaFace's margin
    histogram) give one key per entry. The same values are kept in `self.history` (dict of lists).
    """

    def __init__(self, losses=None):
        super().__init__()
        self.losses, self.history = losses, {}

    def current_values(self):
        """Flat dict of the running values of all tracked losses."""
        losses = self.losses if self.losses is not None else _model_losses(self.model)
        values = {}
        for loss in losses:
            for key, value in loss.running_values().items():
                if isinstance(value, list):
                    values.update({f"{loss.name}_{key}_{ii}": vv for ii, vv in enumerate(value)})
                else:
                    values[f"{loss.name}_{key}"] = value
        return values

    def on_epoch_end(self, epoch, logs=None):
        values = self.current_values()
        if logs is not None:
            logs.update(values)
        for key, value in values.items():
            self.history.setdefault(key, []).append(value)


def flatten_losses(loss):
    """The loss objects of `model.loss`, which may be one loss, a list or a dict (values in insertion order)."""
    if isinstance(loss, dict):
        return list(loss.values())
    if isinstance(loss, (list, tuple)):
        return list(loss)
    return [loss]


def _model_losses(model):
    """The `InsightfaceLoss` objects among `model.loss` (one loss, a list or a dict)."""
    return [ii for ii in flatten_losses(model.loss) if isinstance(ii, InsightfaceLoss)]
