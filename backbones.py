"""GhostNetV1 and GhostNetV2 backbones as Keras 3 functional models, as GhostFaceNets uses them.

Both versions are built by one function from one table of bottleneck settings (:data:`GHOST_BLOCKS`); what
differs between them is a handful of switches collected in `GhostNetSpec`:

- V1 (GhostFaceNetV1, the original's ``ghost_model.GhostNet``): TensorFlow ``"same"`` padding, the Keras-2 hard
  sigmoid ``clip(0.2 x + 0.5, 0, 1)`` in the squeeze-excite gate, and a last expansion of 512 channels.
- V2 (GhostFaceNetV2, the original's kecam ``GhostNetV2``): PyTorch-style symmetric zero padding followed by a
  ``"valid"`` convolution, the gate ``clip(x / 6 + 0.5, 0, 1)`` (Keras 3's ``hard_sigmoid``), a last expansion of
  960 channels and DFC attention in every stack from ``num_ghost_module_v1_stacks`` on.

Layers carry the names of the original V2 code (``stem_conv``, ``stack3_ghost_1_prim_conv``, ...), so weights it
saved load by name; V1 files of the original carry automatic names and load by layer order, which this graph
reproduces exactly (see `model_files`).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import math
from dataclasses import dataclass

import keras
from keras import layers, ops

import fused_ops


def conv_kernel_initializer():
    """He initialisation (fan_out, truncated normal) for one convolution kernel: a new initializer per layer, so that
    every layer draws its own values, seeded by `keras.utils.set_random_seed` (a shared Keras 3 initializer would
    fix one seed at import time and give every kernel of a shape the same values)."""
    return keras.initializers.VarianceScaling(scale=2.0, mode="fan_out", distribution="truncated_normal")


# Bottleneck settings before width scaling: (kernel, expansion, output channels, SE ratio, stride).
# The last row's expansion is replaced by the version's ``head_channels`` (512 for V1, 960 for V2).
GHOST_BLOCKS = (
    (3, 16, 16, 0, 1),
    (3, 48, 24, 0, 2),
    (3, 72, 24, 0, 1),
    (5, 72, 40, 0.25, 2),
    (5, 120, 40, 0.25, 1),
    (3, 240, 80, 0, 2),
    (3, 200, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 184, 80, 0, 1),
    (3, 480, 112, 0.25, 1),
    (3, 672, 112, 0.25, 1),
    (5, 672, 160, 0.25, 2),
    (5, 960, 160, 0, 1),
    (5, 960, 160, 0.25, 1),
    (5, 960, 160, 0, 1),
    (5, None, 160, 0.25, 1),
)
STEM_CHANNELS = 16


def make_divisible(value, divisor=4, min_value=None, limit_round_down=0.9):
    """Round a channel count ``value`` to the nearest multiple of ``divisor`` (at least ``min_value``).

    If rounding lost more than ``1 - limit_round_down`` of the value, one more ``divisor`` is added, as in the
    original GhostNet code. Example: ``make_divisible(16 * 1.3) == 20``, ``make_divisible(512 * 1.3) == 664``.
    """
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < limit_round_down * value:
        rounded += divisor
    return rounded


@keras.saving.register_keras_serializable(package="keras_insightface")
def hard_sigmoid_keras2(x):
    """Keras 2's hard sigmoid ``clip(0.2 x + 0.5, 0, 1)``, the squeeze-excite gate of GhostNetV1.

    Keras 3 redefined ``"hard_sigmoid"`` as ``relu6(x + 3) / 6``; GhostNetV1 weights were trained with this one.
    """
    return ops.clip(0.2 * x + 0.5, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="keras_insightface")
class ResizeLike(layers.Layer):
    """Resize ``inputs[0]`` (N, h, w, C) to the spatial size of ``inputs[1]`` (N, H, W, C').

    ``interpolation`` "bilinear" (half-pixel centres, no antialiasing, as ``tf.image.resize``) or "nearest"; used by
    the DFC attention of GhostNetV2 to bring the pooled attention map back to the feature map size (7 -> 3 -> 7).
    """

    def __init__(self, interpolation="bilinear", **kwargs):
        super().__init__(**kwargs)
        self.interpolation = interpolation

    def call(self, inputs):
        source, reference = inputs
        height, width = reference.shape[1], reference.shape[2]
        if height is None or width is None:
            height, width = ops.shape(reference)[1], ops.shape(reference)[2]
        return ops.image.resize(source, (height, width), interpolation=self.interpolation, antialias=False)

    def compute_output_shape(self, input_shapes):
        source_shape, reference_shape = input_shapes
        return (source_shape[0], reference_shape[1], reference_shape[2], source_shape[3])

    def get_config(self):
        return {**super().get_config(), "interpolation": self.interpolation}


@dataclass(frozen=True)
class GhostNetSpec:
    """What distinguishes the two GhostNet versions; see the module docstring."""

    name: str
    head_channels: int
    symmetric_padding: bool
    se_gate: object
    dfc_from_stack: int | None
    dfc_interpolation: str = "bilinear"


def make_activation(activation, name):
    """A new activation layer named ``name``: PReLU for "prelu" (any case), else ``Activation(activation)``.

    The project's one PReLU: one learned slope per channel, shared over H and W, initialised to 0.25, as in the
    original. ``activation``: "prelu", "relu", "swish" or any Keras activation name.
    """
    if activation.lower() == "prelu":
        return layers.PReLU(shared_axes=[1, 2], alpha_initializer=keras.initializers.Constant(0.25), name=name)
    return layers.Activation(activation, name=name)


def activation_layer(inputs, activation, name):
    """Apply `make_activation` of ``activation`` to ``inputs`` as a layer named ``<name><activation>``."""
    return make_activation(activation, name + activation.lower())(inputs)


class GhostNetBuilder:
    """Builds the layers of one GhostNet; holds the settings every layer shares (padding, BN, activation)."""

    def __init__(self, spec, activation, bn_momentum, bn_epsilon):
        self.spec = spec
        self.activation = activation
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def batchnorm(self, inputs, name, activation=None):
        """BatchNormalization (``<name>bn``) followed by an optional activation (``<name><act>``)."""
        nn = fused_ops.BatchNormalization(momentum=self.bn_momentum, epsilon=self.bn_epsilon, name=name + "bn")(inputs)
        return activation_layer(nn, activation, name) if activation else nn

    @property
    def padding(self):
        """Keras padding mode of k x k convs: "same" (V1), or "valid" after explicit padding (V2, `pad`)."""
        return "valid" if self.spec.symmetric_padding else "same"

    def pad(self, inputs, kernel_size, name):
        """Symmetric zero padding of ``kernel // 2`` per side (V2 only, kernels larger than 1)."""
        kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        if not self.spec.symmetric_padding or max(kernel_size) == 1:
            return inputs
        pad_h, pad_w = kernel_size[0] // 2, kernel_size[1] // 2
        return layers.ZeroPadding2D(((pad_h, pad_h), (pad_w, pad_w)), name=name + "pad")(inputs)

    def conv(self, inputs, filters, kernel_size=1, strides=1, name="", padding=None, use_bias=False):
        """Conv2D (``<name>conv``) with He fan-out truncated-normal initialisation and no bias by default."""
        nn = self.pad(inputs, kernel_size, name)
        conv = layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding=padding or self.padding,
            use_bias=use_bias,
            kernel_initializer=conv_kernel_initializer(),
            name=name + "conv",
        )
        return conv(nn)

    def depthwise_conv(self, inputs, kernel_size, strides=1, name=""):
        """DepthwiseConv2D without bias (``<name>dw_conv``), He fan-out truncated-normal initialisation."""
        nn = self.pad(inputs, kernel_size, name)
        conv = layers.DepthwiseConv2D(
            kernel_size,
            strides=strides,
            padding=self.padding,
            use_bias=False,
            depthwise_initializer=conv_kernel_initializer(),
            name=name + "dw_conv",
        )
        return conv(nn)

    def ghost_module(self, inputs, out_channels, add_activation, name):
        """Ghost module: a 1x1 conv to half the channels plus a cheap 3x3 depthwise conv of it, concatenated."""
        activation = self.activation if add_activation else None
        primary = self.conv(inputs, math.ceil(out_channels / 2), name=name + "prim_", padding="same")
        primary = self.batchnorm(primary, name + "prim_", activation)
        cheap = self.depthwise_conv(primary, 3, name=name + "cheap_")
        cheap = self.batchnorm(cheap, name + "cheap_", activation)
        return layers.Concatenate(name=name + "concat")([primary, cheap])

    def dfc_attention(self, inputs, out_channels, name):
        """GhostNetV2 DFC attention map (N, H, W, out_channels) in (0, 1), computed from the block input."""
        if any(size is not None and size < 2 for size in inputs.shape[1:3]):
            raise ValueError(f"GhostNetV2 DFC attention at {name[:-1]} needs a feature map of at least 2x2, got "
                             f"{inputs.shape[1:3]}: use a larger input_shape or strides=1")
        nn = layers.AveragePooling2D(pool_size=2, strides=2, name=name + "short_avg_pool")(inputs)
        nn = self.conv(nn, out_channels, name=name + "short_1_")
        nn = self.batchnorm(nn, name + "short_1_")
        nn = self.depthwise_conv(nn, (1, 5), name=name + "short_2_")
        nn = self.batchnorm(nn, name + "short_2_")
        nn = self.depthwise_conv(nn, (5, 1), name=name + "short_3_")
        nn = self.batchnorm(nn, name + "short_3_")
        nn = layers.Activation("sigmoid", name=name + "short_sigmoid")(nn)
        return ResizeLike(self.spec.dfc_interpolation, name=name + "short_resize")([nn, inputs])

    def squeeze_excite(self, inputs, se_ratio, name):
        """Squeeze-excite: channel gates from globally pooled features, multiplied into ``inputs``."""
        channels = inputs.shape[-1]
        nn = layers.GlobalAveragePooling2D(name=name + "pool")(inputs)
        nn = layers.Reshape((1, 1, channels), name=name + "reshape")(nn)
        nn = self.conv(nn, make_divisible(channels * se_ratio), name=name + "1_", padding="valid", use_bias=True)
        nn = activation_layer(nn, self.activation, name)
        nn = self.conv(nn, channels, name=name + "2_", padding="valid", use_bias=True)
        nn = layers.Activation(self.spec.se_gate, name=name + "gate")(nn)
        return layers.Multiply(name=name + "out")([inputs, nn])

    def shortcut(self, inputs, out_channels, kernel_size, strides, name):
        """Identity when shapes allow it, else depthwise k x k (stride s) + BN + 1x1 conv + BN."""
        if inputs.shape[-1] == out_channels and strides == 1:
            return inputs
        nn = self.depthwise_conv(inputs, kernel_size, strides, name=name + "short_1_")
        nn = self.batchnorm(nn, name + "short_1_")
        nn = self.conv(nn, out_channels, name=name + "short_2_", padding="valid")
        return self.batchnorm(nn, name + "short_2_")

    def bottleneck(self, inputs, kernel_size, expansion, out_channels, se_ratio, strides, use_dfc, name):
        """One Ghost bottleneck: ghost (x DFC) -> [strided depthwise] -> [SE] -> ghost, plus the shortcut."""
        nn = self.ghost_module(inputs, expansion, add_activation=True, name=name + "ghost_1_")
        if use_dfc:
            attention = self.dfc_attention(inputs, nn.shape[-1], name=name + "ghost_1_")
            nn = layers.Multiply(name=name + "ghost_1_multiply")([attention, nn])
        if strides > 1:
            nn = self.depthwise_conv(nn, kernel_size, strides, name=name + "down_")
            nn = self.batchnorm(nn, name + "down_")
        if se_ratio > 0:
            nn = self.squeeze_excite(nn, se_ratio, name=name + "se_")
        nn = self.ghost_module(nn, out_channels, add_activation=False, name=name + "ghost_2_")
        short = self.shortcut(inputs, out_channels, kernel_size, strides, name)
        return layers.Add(name=name + "output")([short, nn])


def ghostnet_block_settings(width=1.0, head_channels=512):
    """The width-scaled bottleneck table: a list of (kernel, expansion, out_channels, se_ratio, stride)."""
    settings = []
    for kernel, expansion, out_channels, se_ratio, strides in GHOST_BLOCKS:
        expansion = head_channels if expansion is None else expansion
        scaled_expansion, scaled_out = make_divisible(expansion * width), make_divisible(out_channels * width)
        settings.append((kernel, scaled_expansion, scaled_out, se_ratio, strides))
    return settings


def build_ghostnet(
    spec,
    width=1.0,
    strides=2,
    input_shape=(224, 224, 3),
    activation="relu",
    bn_momentum=0.99,
    bn_epsilon=0.001,
    num_classes=0,
    dropout=0,
    classifier_activation="softmax",
    name=None,
):
    """Build a GhostNet of version ``spec`` as a functional model.

    Output: the final feature map (N, H/s/16, W/s/16, make_divisible(head_channels * width)) when
    ``num_classes == 0``, else class scores (N, num_classes) from GAP -> 1x1 conv 1280 -> act -> dropout -> dense.
    ``strides`` is the stride of the stem convolution (1 or 2).
    """
    if width <= 0:
        raise ValueError(f"width must be a positive number, got {width}")
    if strides not in (1, 2):
        raise ValueError(f"strides (the stem stride) must be 1 or 2, got {strides}")
    builder = GhostNetBuilder(spec, activation, bn_momentum, bn_epsilon)
    inputs = keras.Input(shape=input_shape)
    nn = builder.conv(inputs, make_divisible(STEM_CHANNELS * width), 3, strides=strides, name="stem_")
    nn = builder.batchnorm(nn, "stem_", activation)

    settings = ghostnet_block_settings(width, spec.head_channels)
    for index, (kernel, expansion, out_channels, se_ratio, block_strides) in enumerate(settings):
        use_dfc = spec.dfc_from_stack is not None and index >= spec.dfc_from_stack
        stack_name = f"stack{index + 1}_"
        nn = builder.bottleneck(nn, kernel, expansion, out_channels, se_ratio, block_strides, use_dfc, stack_name)

    nn = builder.conv(nn, make_divisible(spec.head_channels * width), name="pre_", padding="valid")
    nn = builder.batchnorm(nn, "pre_", activation)
    if num_classes > 0:
        nn = classifier_head(nn, num_classes, activation, dropout, classifier_activation)
    return keras.Model(inputs, nn, name=name or spec.name)


def classifier_head(inputs, num_classes, activation, dropout, classifier_activation):
    """ImageNet-style classifier: GAP -> 1x1 conv 1280 (bias) -> act -> flatten -> dropout -> dense (float32)."""
    nn = layers.GlobalAveragePooling2D(keepdims=True, name="head_pool")(inputs)
    nn = layers.Conv2D(1280, 1, use_bias=True, name="features_conv")(nn)
    nn = activation_layer(nn, activation, "features_")
    nn = layers.Flatten(name="head_flatten")(nn)
    if 0 < dropout < 1:
        nn = layers.Dropout(dropout, name="head_drop")(nn)
    return layers.Dense(num_classes, activation=classifier_activation, dtype="float32", name="predictions")(nn)


def ghostnet_v1_spec():
    """The GhostNetV1 switches (see the module docstring)."""
    return GhostNetSpec("ghostnetv1", 512, symmetric_padding=False, se_gate=hard_sigmoid_keras2, dfc_from_stack=None)


def ghostnet_v2_spec(num_ghost_module_v1_stacks=2, dfc_interpolation="bilinear"):
    """The GhostNetV2 switches; stacks with index >= ``num_ghost_module_v1_stacks`` use DFC (-1: none do)."""
    dfc_from_stack = None if num_ghost_module_v1_stacks < 0 else num_ghost_module_v1_stacks
    return GhostNetSpec("ghostnetv2", 960, symmetric_padding=True, se_gate="hard_sigmoid",
                        dfc_from_stack=dfc_from_stack, dfc_interpolation=dfc_interpolation)


def GhostNetV1(width=1.0, strides=2, input_shape=(224, 224, 3), activation="relu", bn_momentum=0.99, bn_epsilon=0.001,
               num_classes=0, dropout=0, classifier_activation="softmax", name="ghostnetv1"):
    """GhostNetV1 backbone as GhostFaceNetV1 uses it (last expansion 512, Keras-2 hard-sigmoid SE gate).

    Returns the feature map (N, H', W', make_divisible(512 * width)); H' = 7 for 112x112 inputs with
    ``strides=1`` and 4 with ``strides=2``. ``num_classes > 0`` adds a classifier instead.
    """
    return build_ghostnet(ghostnet_v1_spec(), width, strides, input_shape, activation, bn_momentum, bn_epsilon,
                          num_classes, dropout, classifier_activation, name)


def GhostNetV2(width=1.0, strides=2, input_shape=(224, 224, 3), activation="relu", bn_momentum=0.9, bn_epsilon=1e-5,
               num_ghost_module_v1_stacks=2, dfc_interpolation="bilinear", num_classes=0, dropout=0,
               classifier_activation="softmax", name="ghostnetv2"):
    """GhostNetV2 backbone (DFC attention from stack ``num_ghost_module_v1_stacks + 1`` on, symmetric padding).

    Returns the feature map (N, H', W', make_divisible(960 * width)); H' = 7 for 112x112 inputs with
    ``strides=1``. ``num_classes > 0`` adds a classifier instead. BN defaults (0.9, 1e-5) are the original's.
    ``dfc_interpolation``: how the DFC attention is upsampled; "bilinear" as the original GhostFaceNetV2 was
    trained (keras-cv-attention-models <= 1.3), "nearest" for models trained with its later releases.
    """
    spec = ghostnet_v2_spec(num_ghost_module_v1_stacks, dfc_interpolation)
    return build_ghostnet(spec, width, strides, input_shape, activation, bn_momentum, bn_epsilon,
                          num_classes, dropout, classifier_activation, name)
