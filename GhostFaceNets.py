"""GhostFaceNet face-embedding models: backbone + embedding head, model rewriters, presets and file loading.

Typical use, the published GhostFaceNetV1 (width 1.3, stem stride 1):

```python
import GhostFaceNets
basic_model = GhostFaceNets.GhostFaceNetV1(width=1.3, strides=1)
```

or step by step, as the original README does:

```python
basic_model = GhostFaceNets.buildin_models("ghostnetv1", dropout=0, emb_shape=512, output_layer="GDC",
                                           bn_momentum=0.9, bn_epsilon=1e-5, width=1.3, strides=1)
basic_model = GhostFaceNets.add_l2_regularizer_2_model(basic_model, weight_decay=5e-4)
basic_model = GhostFaceNets.replace_ReLU_with_PReLU(basic_model)
```

Command line: ``python GhostFaceNets.py --summary ghostnetv1 --width 1.3 --strides 2`` prints parameters and MACs.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import logging
import warnings

import keras
from keras import layers, ops

import backbones
import fused_ops
import heads
import keras_compat
import model_files

logger = logging.getLogger(__name__)

BUILDIN_BACKBONES = {
    # name: (builder, defaults the original used for this name)
    "ghostnetv1": (backbones.GhostNetV1, {"width": 1.0, "strides": 2, "activation": "relu"}),
    "ghostnetv2": (backbones.GhostNetV2, {"width": 1.3, "strides": 1, "activation": "prelu"}),
}
BACKBONE_KWARG_ALIASES = {"stem_strides": "strides", "width_mul": "width"}
KERAS_BN_DEFAULTS = (0.99, 0.001)


@keras.saving.register_keras_serializable(package="keras_insightface")
class GlobalNormAwarePooling(layers.Layer):
    """Global norm-aware pooling (GNAP, Chen et al. 2018): (N, H, W, C) -> (N, C).

    Each location's feature vector ``f_ij`` is rescaled by ``mean_norm / ||f_ij||`` (``mean_norm`` being the mean
    of the per-location L2 norms of that sample), then the rescaled map is averaged over H and W. Locations with
    large norms thus no longer dominate the pooled feature.
    """

    def __init__(self, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = epsilon

    def call(self, inputs):
        norms = ops.sqrt(ops.sum(ops.square(inputs), axis=-1, keepdims=True) + self.epsilon)
        mean_norm = ops.mean(norms, axis=(1, 2), keepdims=True)
        return ops.mean(inputs * (mean_norm / norms), axis=(1, 2))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}


def print_buildin_models():
    """Print the backbone names `buildin_models` accepts and the named presets."""
    print(
        ">>>> buildin_models\n"
        "ghostnetv1 (GhostNetV1, GhostFaceNetV1), ghostnetv2 (GhostNetV2, GhostFaceNetV2),\n"
        "or any Keras model whose first output is a 4-D feature map.\n"
        ">>>> output_layer: " + ", ".join(OUTPUT_LAYERS) + "\n"
        ">>>> presets: GhostFaceNetV1(width=1.3, strides=1), GhostFaceNetV2(width=1.3, strides=1)"
    )


def __init_model_from_name__(name,  # noqa: N807 (the original's public name)
                              input_shape=(112, 112, 3), bn_momentum=None, bn_epsilon=None, **kwargs):
    """Build a named backbone (case-insensitive ``"ghostnetv1"`` / ``"ghostnetv2"``) with ``kwargs`` overrides.

    ``width``, ``strides`` (alias ``stem_strides``), ``activation`` and ``num_ghost_module_v1_stacks`` are honoured;
    BN momentum/epsilon are set at construction, so no weights are re-initialised later.
    """
    key = name.lower()
    if key not in BUILDIN_BACKBONES:
        raise ValueError(f"Unknown backbone name {name!r}; buildin names are {sorted(BUILDIN_BACKBONES)}")
    builder, defaults = BUILDIN_BACKBONES[key]
    kwargs = {BACKBONE_KWARG_ALIASES.get(k, k): v for k, v in kwargs.items()}
    options = {**defaults, **kwargs, "input_shape": input_shape}
    if bn_momentum is not None:
        options.update(bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)
    return builder(**options)


def set_batchnorm_params(model, momentum, epsilon):
    """Set ``momentum`` and ``epsilon`` of every BatchNormalization layer of ``model`` in place (weights kept)."""
    for layer in iterate_layers(model):
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum, layer.epsilon = momentum, epsilon


def iterate_layers(model):
    """All layers of ``model``, descending into nested models, in layer order."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from iterate_layers(layer)
        else:
            yield layer


def pointwise_block(inputs, add_pointwise_conv, activation, bn_momentum, bn_epsilon):
    """Optional 1x1 conv + BN + activation before the head: 512 filters, ``C // 2`` for -1, or the given count."""
    if add_pointwise_conv == -1:
        filters = inputs.shape[-1] // 2
    elif add_pointwise_conv is True or add_pointwise_conv == 1:
        filters = 512
    else:
        filters = int(add_pointwise_conv)
    nn = layers.Conv2D(filters, 1, use_bias=False, padding="valid", name="pw_conv")(inputs)
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="pw_bn")(nn)
    return backbones.activation_layer(nn, activation, "pw_")


def maybe_dropout(inputs, dropout, name):
    """Dropout with rate ``dropout`` when 0 < dropout < 1 (the original's rule; 0 and 1 add none)."""
    return layers.Dropout(dropout, name=name)(inputs) if 0 < dropout < 1 else inputs


def gdc_head(inputs, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """GDC: depthwise conv over the whole H x W map -> BN -> [dropout] -> 1x1 conv to ``emb_shape`` -> flatten."""
    kernel_size = inputs.shape[1:3]
    if None in kernel_size:
        raise ValueError("The GDC head needs a static feature-map size; give buildin_models a full input_shape")
    nn = layers.DepthwiseConv2D(kernel_size, use_bias=False, name="GDC_dw")(inputs)
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="GDC_batchnorm")(nn)
    nn = maybe_dropout(nn, dropout, "GDC_dropout")
    nn = layers.Conv2D(emb_shape, 1, use_bias=use_bias, kernel_initializer="glorot_normal", name="GDC_conv")(nn)
    return layers.Flatten(name="GDC_flatten")(nn)


def e_head(inputs, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """E: BN -> [dropout] -> flatten -> dense to ``emb_shape`` (the Keras_insightface ResNet head)."""
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="E_batchnorm")(inputs)
    nn = maybe_dropout(nn, dropout, "E_dropout")
    nn = layers.Flatten(name="E_flatten")(nn)
    return layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="E_dense")(nn)


def gap_head(inputs, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """GAP: BN -> global average pooling -> [dropout] -> dense to ``emb_shape``."""
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, name="GAP_batchnorm")(inputs)
    nn = layers.GlobalAveragePooling2D(name="GAP_pool")(nn)
    nn = maybe_dropout(nn, dropout, "GAP_dropout")
    return layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="GAP_dense")(nn)


def gnap_head(inputs, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon):
    """GNAP: BN without scale -> global norm-aware pooling -> [dropout] -> dense to ``emb_shape``."""
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, scale=False,
                                      name="GNAP_batchnorm")(inputs)
    nn = GlobalNormAwarePooling(name="GNAP_pool")(nn)
    nn = maybe_dropout(nn, dropout, "GNAP_dropout")
    return layers.Dense(emb_shape, use_bias=use_bias, kernel_initializer="glorot_normal", name="GNAP_dense")(nn)


OUTPUT_LAYERS = {"GDC": gdc_head, "E": e_head, "GAP": gap_head, "GNAP": gnap_head}


def buildin_models(
    stem_model,
    dropout=1,
    emb_shape=512,
    input_shape=(112, 112, 3),
    output_layer="GDC",
    bn_momentum=0.99,
    bn_epsilon=0.001,
    add_pointwise_conv=False,
    pointwise_conv_act="relu",
    use_bias=False,
    scale=True,
    weights=None,
    **kwargs,
):
    """Build a face-embedding model: backbone -> [pointwise block] -> ``output_layer`` head -> ``embedding``.

    ``stem_model``: ``"ghostnetv1"`` / ``"ghostnetv2"`` (case-insensitive; ``kwargs`` such as ``width``,
    ``strides``, ``activation``, ``num_ghost_module_v1_stacks`` go to the backbone) or any Keras model whose
    first output is a 4-D feature map. Output: float32 embeddings (N, ``emb_shape``), not L2-normalised, from a
    layer named ``embedding``. ``dropout`` applies only when 0 < dropout < 1. BN momentum/epsilon apply to the head
    and, when they differ from Keras' (0.99, 0.001), to every backbone BN; weights are never re-initialised.
    ``weights``: optional path of a weights or model file to load (nothing is downloaded).
    """
    if output_layer not in OUTPUT_LAYERS:
        raise ValueError(f"Unknown output_layer {output_layer!r}; choose one of {list(OUTPUT_LAYERS)}")
    override_bn = (bn_momentum, bn_epsilon) != KERAS_BN_DEFAULTS
    if isinstance(stem_model, str):
        bn_options = {"bn_momentum": bn_momentum, "bn_epsilon": bn_epsilon} if override_bn else {}
        backbone = __init_model_from_name__(stem_model, input_shape=input_shape, **bn_options, **kwargs)
    else:
        backbone = stem_model
        if override_bn:
            set_batchnorm_params(backbone, bn_momentum, bn_epsilon)
    backbone.trainable = True

    nn = backbone.outputs[0]
    if add_pointwise_conv:
        nn = pointwise_block(nn, add_pointwise_conv, pointwise_conv_act, bn_momentum, bn_epsilon)
    nn = OUTPUT_LAYERS[output_layer](nn, emb_shape, dropout, use_bias, bn_momentum, bn_epsilon)
    nn = fused_ops.BatchNormalization(momentum=bn_momentum, epsilon=bn_epsilon, scale=scale, name="pre_embedding")(nn)
    embedding = layers.Activation("linear", dtype="float32", name="embedding")(nn)
    model = keras.Model(backbone.inputs[0], embedding, name=backbone.name)
    if weights:
        load_weights(model, weights)
    return model


def GhostFaceNetV1(width=1.3, strides=1, emb_shape=512, input_shape=(112, 112, 3), dropout=0, use_bias=True,
                   weight_decay=5e-4, **kwargs):
    """The published GhostFaceNetV1: PReLU, GDC head with bias, emb 512, BN momentum 0.9 / eps 1e-5, L2 5e-4.

    ``GhostFaceNetV1(width=1.3, strides=1)`` has 4,088,812 parameters (strides=2: 4,066,900).
    ``weight_decay`` is applied as in `add_l2_regularizer_2_model` (0 adds none).
    """
    model = buildin_models("ghostnetv1", dropout=dropout, emb_shape=emb_shape, input_shape=input_shape,
                           output_layer="GDC", bn_momentum=0.9, bn_epsilon=1e-5, use_bias=use_bias, scale=True,
                           width=width, strides=strides, activation="prelu", **kwargs)
    return add_l2_regularizer_2_model(model, weight_decay) if weight_decay else model


def GhostFaceNetV2(width=1.3, strides=1, emb_shape=512, input_shape=(112, 112, 3), dropout=0, use_bias=False,
                   weight_decay=5e-4, num_ghost_module_v1_stacks=2, **kwargs):
    """The published GhostFaceNetV2: PReLU, DFC from stack 3, GDC head (no bias), emb 512, BN 0.9 / 1e-5, L2 5e-4.

    ``GhostFaceNetV2(width=1.3, strides=1)`` has 6,880,288 parameters (strides=2: 6,839,104).
    """
    model = buildin_models("ghostnetv2", dropout=dropout, emb_shape=emb_shape, input_shape=input_shape,
                           output_layer="GDC", bn_momentum=0.9, bn_epsilon=1e-5, use_bias=use_bias, scale=True,
                           width=width, strides=strides, activation="prelu",
                           num_ghost_module_v1_stacks=num_ghost_module_v1_stacks, **kwargs)
    return add_l2_regularizer_2_model(model, weight_decay) if weight_decay else model


# (layer class, ((weight attribute, config attribute), ...)) regularised by add_l2_regularizer_2_model.
KERNEL_WEIGHTS = (
    (layers.DepthwiseConv2D, (("kernel", "depthwise_regularizer"),)),
    (layers.SeparableConv2D, (("depthwise_kernel", "depthwise_regularizer"),
                              ("pointwise_kernel", "pointwise_regularizer"))),
    (layers.Conv2D, (("kernel", "kernel_regularizer"),)),
    (layers.Dense, (("kernel", "kernel_regularizer"),)),
)
BIAS_WEIGHT = ("bias", "bias_regularizer")
BATCHNORM_WEIGHTS = (("gamma", "gamma_regularizer"), ("beta", "beta_regularizer"))
PRELU_WEIGHT = ("alpha", "alpha_regularizer")


def set_regularizer(layer, weight_attrs, regularizer):
    """Attach ``regularizer`` to the weight ``layer.<weight>`` and to the layer's config attribute, in place."""
    weight_attr, config_attr = weight_attrs
    variable = getattr(layer, weight_attr, None)
    if variable is None:
        return
    keras_compat.set_variable_regularizer(variable, regularizer)
    setattr(layer, config_attr, regularizer)


def add_l2_regularizer_2_model(model, weight_decay, custom_objects=None, apply_to_batch_normal=False,
                               apply_to_bias=False):
    """Add ``L2(weight_decay / 2)`` (`fused_ops.L2`) to conv / depthwise / separable / dense kernels, in place.

    The halving makes the gradient ``weight_decay * w``, as classic SGD weight decay. With
    ``apply_to_batch_normal``, BN gamma/beta and PReLU alpha are regularised too; with ``apply_to_bias``, biases.
    Trained weights are kept (the original rebuilt the model and lost them). Returns ``model``.
    ``custom_objects`` is accepted for compatibility and unused.
    """
    regularizer = fused_ops.L2(weight_decay / 2)
    for layer in iterate_layers(model):
        if not layer.trainable:
            continue
        for layer_class, weight_attrs in KERNEL_WEIGHTS:
            if isinstance(layer, layer_class):
                for pair in weight_attrs:
                    set_regularizer(layer, pair, regularizer)
                if apply_to_bias and getattr(layer, "use_bias", False):
                    set_regularizer(layer, BIAS_WEIGHT, regularizer)
                break
        if apply_to_batch_normal and isinstance(layer, layers.BatchNormalization):
            for pair in BATCHNORM_WEIGHTS:
                set_regularizer(layer, pair, regularizer)
        if apply_to_batch_normal and isinstance(layer, layers.PReLU):
            set_regularizer(layer, PRELU_WEIGHT, regularizer)
    return model


def is_relu_layer(layer):
    """True for a ReLU layer or an Activation layer whose function is relu."""
    if isinstance(layer, layers.ReLU):
        return True
    return isinstance(layer, layers.Activation) and layer.activation is keras.activations.relu


def make_activation_layer(target_activation, name, **kwargs):
    """A new activation layer named ``name``: `backbones.make_activation` of an activation name ("PReLU":
    alpha 0.25, shared over H and W), or ``target_activation(name=name, **kwargs)`` for a layer class."""
    if isinstance(target_activation, str):
        return backbones.make_activation(target_activation, name)
    return target_activation(name=name, **kwargs)


def replace_ReLU_with_PReLU(model, target_activation="PReLU", **kwargs):
    """Return a model in which every ReLU is replaced by ``target_activation``; every other layer is reused.

    ``target_activation``: "PReLU" (per-channel slope shared over H and W, initialised to 0.25), any Keras
    activation name, or a layer class called with ``kwargs``. Layer names have ``_relu`` replaced by
    ``_prelu`` (or ``_<activation name>``). All other weights are kept. Logs one line: how many layers changed.
    """
    suffix = target_activation.lower() if isinstance(target_activation, str) else target_activation.__name__.lower()
    replaced = []

    def replace(layer):
        if not is_relu_layer(layer):
            return layer
        replaced.append(layer.name)
        new_name = layer.name.replace("_relu", "_" + suffix) if "_relu" in layer.name else layer.name
        return make_activation_layer(target_activation, new_name, **kwargs)

    converted = keras.models.clone_model(model, clone_function=replace)
    logger.info("replace_ReLU_with_PReLU: %d ReLU layers of %s replaced by %s", len(replaced), model.name, suffix)
    return converted


def convert_dtype_policy(model, policy, keep_layer):
    """Independent copy of ``model`` with every layer in dtype ``policy`` except where ``keep_layer(layer)``.

    Every layer is rebuilt from its config (kept layers with their own policy) and its weights copied.
    """

    def rebuild(layer):
        config = layer.get_config()
        if not keep_layer(layer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    converted = keras.models.clone_model(model, clone_function=rebuild)
    for source, target in zip(model.layers, converted.layers, strict=True):
        if source.weights:
            target.set_weights(source.get_weights())
    if getattr(model, "optimizer", None) is not None and getattr(model, "compiled", False):
        converted.compile(optimizer=model.optimizer, loss=model.loss, metrics=model.metrics)
    return converted


def is_float32_output_layer(layer):
    """Layers that must stay float32 under mixed precision: inputs, linear/softmax outputs, cosine heads."""
    if isinstance(layer, (layers.InputLayer, heads.NormDense)):
        return True
    return isinstance(layer, layers.Activation) and layer.activation in (keras.activations.linear,
                                                                          keras.activations.softmax)


def convert_to_mixed_float16(model, convert_batch_norm=False):
    """Copy of ``model`` computing in float16 with float32 variables (``mixed_float16``), weights copied.

    BatchNormalization stays float32 unless ``convert_batch_norm``; the ``embedding`` output, softmax outputs
    and NormDense heads stay float32.
    """

    def keep(layer):
        return is_float32_output_layer(layer) or (
            isinstance(layer, layers.BatchNormalization) and not convert_batch_norm
        )

    return convert_dtype_policy(model, "mixed_float16", keep)


def convert_mixed_float16_to_float32(model):
    """Copy of ``model`` with every layer back in float32 (for export and inference), weights copied."""

    def keep(layer):
        return isinstance(layer, layers.InputLayer) or (
            isinstance(layer, layers.Activation) and layer.activation is keras.activations.linear
        )

    return convert_dtype_policy(model, "float32", keep)


def layer_macs(layer):
    """Multiply-accumulates of one conv / depthwise / separable / dense layer for one sample (0 for others)."""
    if isinstance(layer, keras.Model):
        return sum(layer_macs(sub_layer) for sub_layer in layer.layers)
    if not isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
        return 0
    output_shape = layer.output.shape
    output_positions = 1
    for size in output_shape[1:-1]:
        output_positions *= size
    # Every kernel weight is used once per output position: depthwise, pointwise, conv and dense kernels alike.
    kernel_sizes = [int(ops.size(weight)) for weight in layer.weights if len(weight.shape) > 1]
    return output_positions * sum(kernel_sizes)


def model_params_and_macs(model):
    """Parameter counts and conv/dense multiply-accumulates per sample of ``model``.

    Returns a dict: ``total_params``, ``trainable_params``, ``non_trainable_params`` and ``macs`` (MACs of
    Conv2D, DepthwiseConv2D, SeparableConv2D and Dense layers; elementwise ops, BN and activations not counted).
    """
    trainable = sum(int(ops.size(w)) for w in model.trainable_weights)
    non_trainable = sum(int(ops.size(w)) for w in model.non_trainable_weights)
    return {
        "total_params": trainable + non_trainable,
        "trainable_params": trainable,
        "non_trainable_params": non_trainable,
        "macs": sum(layer_macs(layer) for layer in model.layers),
    }


def print_model_summary(model, full=False):
    """Print parameters and MACs (in millions) of ``model``; with ``full``, the Keras layer table first."""
    if full:
        model.summary()
    stats = model_params_and_macs(model)
    print(f"model: {model.name}, input {model.input_shape}, output {model.output_shape}")
    print(f"total params: {stats['total_params']:,} (trainable {stats['trainable_params']:,}, "
          f"non-trainable {stats['non_trainable_params']:,})")
    print(f"MACs (conv/dense): {stats['macs'] / 1e6:.2f} M")
    return stats


def embedding_model(model, index=None):
    """The embedding part of a Keras model, as a model: input image → (N, D) embeddings.

    The one rule of the project: the layer at `index` when given, else the last layer named `embedding`; a model
    without such a layer must itself output (N, D) embeddings. A model whose only output is that layer is returned
    as it is; otherwise (a training model with heads) the sub-model ending at that layer, named `<name>_basic`.
    Raises ValueError naming the model when it takes more than one input or has no embedding output.
    """
    if len(model.inputs) != 1:
        raise ValueError(f"model {model.name!r} has {len(model.inputs)} inputs; an embedding model takes one image")
    names = [layer.name for layer in model.layers]
    if index is None and "embedding" in names:
        index = len(names) - 1 - names[::-1].index("embedding")
    if index is not None:
        if index in (-1, len(model.layers) - 1) and len(model.outputs) == 1:
            return model  # also covers cloned models (replace_ReLU_with_PReLU), whose layers belong to two graphs
        return keras.Model(model.inputs[0], model.layers[index].output, name=model.name + "_basic")
    if len(model.outputs) != 1 or len(model.outputs[0].shape) != 2:
        raise ValueError(f"model {model.name!r} has no layer named 'embedding' and does not output (N, D) "
                         f"embeddings: outputs {[tuple(output.shape) for output in model.outputs]}")
    return model


def load_weights(model, path):
    """Load weights from ``path`` into ``model``, accepting files saved by the original Keras-2 code.

    Legacy HDF5 (``save_weights("x.h5")`` or whole-model ``.h5`` of Keras 2) is matched by layer name when every
    weighted layer of ``model`` is named in the file, else by layer order; shapes are checked and a mismatch
    raises ``ValueError`` naming the first differing layer. Keras 3 files (``.keras``, ``.weights.h5``) are
    loaded by Keras. Returns ``model``.
    """
    model_files.load_weights(model, path)
    return model


def load_model(path, compile=False):
    """Open a model file: a ``.keras`` / Keras 3 ``.h5`` saved here, a tf-keras ``.keras`` archive, or a
    whole-model ``.h5`` of the original.

    The original's files (Keras 2, GhostFaceNetV1 / V2 basic models such as ``GhostFaceNet_W1.3_S1_ArcFace.h5``)
    are rebuilt from their stored configuration with `buildin_models` and their weights loaded, so no
    ``custom_objects`` are needed. A tf-keras ``.keras`` archive (deepface users saving their model) is rebuilt
    from its ``config.json`` with the class paths mapped to Keras 3's, then its weights loaded. A weights-only file
    (``.weights.h5``, or ``save_weights("x.h5")`` of Keras 2) raises ValueError saying so and how to load it.
    """
    if model_files.is_weights_only_file(path):
        raise model_files.weights_only_error(path)
    if model_files.is_original_keras2_model(path):
        return rebuild_original_model(path)
    if model_files.is_tf_keras_archive(path):
        return load_tf_keras_model(path, compile)
    return keras.saving.load_model(path, compile=compile)


def load_tf_keras_model(path, compile=False):
    """Open a tf-keras ``.keras`` archive: Keras 3 rebuilds it from its config with the class paths mapped to
    Keras 3's; when that fails (Keras-2-only settings such as a BatchNormalization ``axis`` list), a GhostFaceNet is
    rebuilt with `buildin_models` from the stored configuration and the archive's weights loaded."""
    try:
        return model_files.load_tf_keras_archive(path, lambda copy: keras.saving.load_model(copy, compile=compile))
    except ValueError as error:
        config = model_files.read_archive_config(path)
        try:
            candidates = model_files.original_architecture_candidates(path, config)
        except (ValueError, KeyError, IndexError, TypeError):
            raise error from None
        return rebuild_from_candidates(candidates, model_files.read_archive_weights(path, config), path)


def save_weights_keras2(model, path):
    """Save ``model``'s weights to ``path`` (``.h5``) in the layout tf-keras writes for ``save_weights("x.h5")``.

    Layer names are those the original GhostFaceNets builders give (automatic ``conv2d_N`` names for a
    GhostNetV1 backbone, see `model_files.keras2_layer_names`), so the original code on tf-keras, and
    deepface's Keras builder, load the file with ``model.load_weights(path)`` (weights are matched by layer order
    there). `load_weights` reads it back here. Returns ``path``.
    """
    if str(path).endswith(".weights.h5") or not str(path).endswith((".h5", ".hdf5")):
        raise ValueError(f"{path}: a Keras-2 weights file needs a plain .h5 name (tf-keras reads .weights.h5 as "
                         "Keras 3), e.g. model_keras2.h5")
    return model_files.write_keras2_weights(model, path)


def rebuild_original_model(path):
    """Rebuild the GhostFaceNet stored in an original whole-model ``.h5`` and load its weights."""
    candidates = model_files.original_architecture_candidates(path)
    return rebuild_from_candidates(candidates, model_files.read_legacy_weights(path), path)


def rebuild_from_candidates(candidates, file_layers, path):
    """The first model built from ``candidates`` (``buildin_models`` keyword arguments) that takes ``file_layers``
    (``(layer name, arrays)`` read from ``path``) by shape; raises the first candidate's ValueError when none does."""
    first_error = None
    for build_kwargs in candidates:
        model = buildin_models(**build_kwargs)
        try:
            return model_files.load_legacy_weights(model, file_layers, path)
        except ValueError as error:
            first_error = first_error or error
    raise first_error


def parse_arguments(argv=None):
    """Command-line options of ``python GhostFaceNets.py``."""
    parser = argparse.ArgumentParser(description="Build a GhostFaceNet and print its parameters and MACs.")
    parser.add_argument("--summary", default="ghostnetv1", help="backbone name: ghostnetv1 or ghostnetv2")
    parser.add_argument("--width", type=float, default=1.3, help="channel width multiplier")
    parser.add_argument("--strides", type=int, default=1, help="stem stride, 1 or 2")
    parser.add_argument("--emb_shape", type=int, default=512, help="embedding size")
    parser.add_argument("--output_layer", default="GDC", choices=list(OUTPUT_LAYERS), help="embedding head")
    parser.add_argument("--input_size", type=int, default=112, help="input height and width")
    parser.add_argument("--no_bias", action="store_true", help="build the GDC conv without bias")
    parser.add_argument("--activation", default="prelu", help="backbone activation (prelu, relu, swish, ...)")
    parser.add_argument("--layers", action="store_true", help="also print the Keras layer table")
    return parser.parse_args(argv)


def main(argv=None):
    """Build the model described on the command line and print its summary."""
    args = parse_arguments(argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = buildin_models(args.summary, dropout=0, emb_shape=args.emb_shape,
                               input_shape=(args.input_size, args.input_size, 3), output_layer=args.output_layer,
                               bn_momentum=0.9, bn_epsilon=1e-5, use_bias=not args.no_bias, width=args.width,
                               strides=args.strides, activation=args.activation)
    print_model_summary(model, full=args.layers)


if __name__ == "__main__":
    main()
