"""Batch-normalisation folding for inference: a model whose BatchNormalization layers are merged into the
layers before them, computing the same outputs with fewer graph ops.

In inference a BatchNormalization layer is the per-channel affine map ``y = s · (x − mean) + beta`` with
``s = gamma / sqrt(moving_variance + epsilon)``. When ``x`` is the output of a Conv2D, DepthwiseConv2D or Dense
layer (linear activation, channels last, called once) that feeds nothing else, the map folds into that layer:
its kernel is multiplied by ``s`` per output channel and its bias becomes ``(bias − mean) · s + beta``.

`fold_batch_norms(model)` returns a new functional model with every such pair folded: the layer gets the folded
kernel and a bias, the BatchNormalization layer becomes a `keras.layers.Identity` of the same name, so the
topology and the layer names stay those of the original; every other layer is a copy with the same weights, and
the original model is left untouched. Nested models are folded recursively. Dtype policies are kept (fold
`export.float32_model(model)` to fold a mixed-precision model in float32). `BatchNormFold(model,
share_layers=True)` instead reuses the original's unfolded layers and recomputes the folded kernels from the
original's current weights with `refold` (graph ops inside a `tf.function`), for a runner that must follow a
model being trained. The folded model is for inference only: its outputs equal ``model(x, training=False)`` to
float rounding (about 1e-6 relative on GhostFaceNets); training it would not train the normalisation.
"""

import logging

import keras
from keras import ops

from GhostFaceNets import iterate_layers

logger = logging.getLogger(__name__)

FOLDABLE_PRODUCERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


# ----------------------------------------------------------------------------------------------------------------
# The graph, read from the model's public config


def tensor_references(structure):
    """Every ``(layer_name, node_index, tensor_index)`` a serialised inbound node (nested lists / dicts) refers
    to, in order."""
    if isinstance(structure, dict):
        if structure.get("class_name") == "__keras_tensor__":
            return [tuple(structure["config"]["keras_history"])]
        return [reference for value in structure.values() for reference in tensor_references(value)]
    if isinstance(structure, list | tuple):
        return [reference for value in structure for reference in tensor_references(value)]
    return []


def layer_inputs(model_config):
    """{layer name: list of the inbound nodes' tensor references} of a functional model's config (one entry
    per call of the layer)."""
    return {layer["name"]: [tensor_references(node) for node in layer["inbound_nodes"]]
            for layer in model_config["layers"]}


def endpoint_references(endpoints):
    """The ``[layer_name, node_index, tensor_index]`` list of a config's ``input_layers`` / ``output_layers``
    (a single endpoint is stored as a bare triple)."""
    return [endpoints] if endpoints and isinstance(endpoints[0], str) else list(endpoints)


def named_inputs(model):
    """New input tensors for a clone of `model`, of its inputs' shapes, dtypes and layer names."""
    names = [name for name, *_ in endpoint_references(model.get_config()["input_layers"])]
    tensors = [keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=name)
               for tensor, name in zip(model.inputs, names, strict=True)]
    return keras.tree.pack_sequence_as(model.input, tensors)


def consumer_counts(model_config):
    """{layer name: how many times its outputs are read}: by the inbound nodes of every layer and by the
    model's outputs."""
    outputs = endpoint_references(model_config["output_layers"])
    references = [reference for nodes in layer_inputs(model_config).values() for node in nodes for reference in node]
    counts = {}
    for name, *_ in [*references, *outputs]:
        counts[name] = counts.get(name, 0) + 1
    return counts


# ----------------------------------------------------------------------------------------------------------------
# Which pairs fold


def foldable_producer(layer):
    """True for a Conv2D / DepthwiseConv2D / Dense layer with a linear activation whose output channels are the
    last axis (a BatchNormalization after it can be merged into its kernel and bias)."""
    if not isinstance(layer, FOLDABLE_PRODUCERS) or isinstance(layer, keras.Model):
        return False
    config = layer.get_config()
    return config.get("activation", "linear") == "linear" and config.get("data_format", "channels_last") == \
        "channels_last" and not config.get("lora_rank")


def normalizes_last_axis(layer):
    """True for a BatchNormalization layer that normalises the last axis of its input."""
    rank = len(layer.input.shape)
    axes = layer.axis if isinstance(layer.axis, list | tuple) else [layer.axis]
    return len(axes) == 1 and axes[0] % rank == rank - 1


def foldable_pairs(model):
    """{BatchNormalization name: producer name} of the pairs of `model` (functional) that fold: the normalisation
    is called once, on the one output of a `foldable_producer` called once whose output feeds nothing else."""
    config = model.get_config()
    inputs, counts = layer_inputs(config), consumer_counts(config)
    pairs = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or len(inputs[layer.name]) != 1:
            continue
        node = inputs[layer.name][0]
        if len(node) != 1 or node[0][1:] != (0, 0):
            continue
        producer = node[0][0]
        if len(inputs.get(producer, [])) == 1 and counts.get(producer) == 1 and \
                foldable_producer(model.get_layer(producer)) and normalizes_last_axis(layer):
            pairs[layer.name] = producer
    return pairs


# ----------------------------------------------------------------------------------------------------------------
# The folded weights


def batch_norm_affine(layer):
    """``(scale, shift)``, float32 tensors (C,), of a BatchNormalization layer in inference, ``y = x · scale +
    shift``: ``scale = gamma / sqrt(moving_variance + epsilon)`` (gamma 1 without `scale`) and ``shift = beta −
    moving_mean · scale`` (beta 0 without `center`)."""
    scale = ops.rsqrt(ops.cast(layer.moving_variance, "float32") + layer.epsilon)
    if layer.scale:
        scale = scale * ops.cast(layer.gamma, "float32")
    shift = -ops.cast(layer.moving_mean, "float32") * scale
    if layer.center:
        shift = shift + ops.cast(layer.beta, "float32")
    return scale, shift


def folded_weights(producer, batch_norm):
    """``(kernel, bias)``, float32 tensors, of `producer` (Conv2D, DepthwiseConv2D or Dense) with `batch_norm`
    merged in.

    The kernel is scaled per output channel: Conv2D (kh, kw, in, out) and Dense (in, out) along their last axis;
    DepthwiseConv2D (kh, kw, in, multiplier), whose output channel ``i · multiplier + m`` comes from input
    channel ``i``, by the scale reshaped to (in, multiplier). The bias is ``bias · scale + shift`` (bias 0 when
    the producer has none).
    """
    scale, shift = batch_norm_affine(batch_norm)
    kernel = ops.cast(producer.kernel, "float32")
    depthwise = isinstance(producer, keras.layers.DepthwiseConv2D)
    kernel = kernel * ops.reshape(scale, tuple(kernel.shape[-2:] if depthwise else kernel.shape[-1:]))
    bias = ops.cast(producer.bias, "float32") * scale if producer.use_bias else 0.0
    return kernel, bias + shift


# ----------------------------------------------------------------------------------------------------------------
# The folded model


class BatchNormFold:
    """A functional model with its batch normalisation folded (see the module docstring).

    Args:
        model: the functional Keras model to fold; it is not changed.
        share_layers: the folded model calls `model`'s own layers wherever nothing is folded (so it follows
            their weights), and `refold` recomputes the folded kernels from `model`'s current weights; False: a
            model of its own, every weight a copy.
        log: log one line with the number of BatchNormalization layers folded and left.

    Attributes:
        model: the folded `keras.Model` (same inputs, outputs, name and layer names as `model`).
        folds: ``[(producer, batch_norm, folded_layer)]``: the source layers of each fold (nested models
            included) and the layer of `model` that holds it.
    """

    def __init__(self, model, share_layers=False, log=True):
        self.share_layers, self.folds, self.copies, self.identities = share_layers, [], [], set()
        self.norm_of = {id(model.get_layer(producer)): model.get_layer(norm)
                        for norm, producer in foldable_pairs(model).items()}
        self.folded_norms = {id(norm) for norm in self.norm_of.values()}
        self.model = keras.models.clone_model(model, named_inputs(model), clone_function=self.clone_layer,
                                              call_function=self.call_layer)
        for source, copy in self.copies:
            copy.set_weights(source.get_weights())
        self.refold()
        if log:
            remaining = count_batch_norms(self.model)
            logger.info(f"{model.name}: folded {count_batch_norms(model) - remaining} BatchNormalization layers "
                        f"into the layers before them, {remaining} left")

    def clone_layer(self, layer):
        """The layer standing for `layer` in the folded model (`clone_model`'s clone function)."""
        if isinstance(layer, keras.Model):
            nested = BatchNormFold(layer, self.share_layers, log=False)
            self.folds += nested.folds
            return nested.model
        if id(layer) in self.folded_norms:
            identity = keras.layers.Identity(name=layer.name, dtype=layer.dtype_policy)
            self.identities.add(id(identity))
            return identity
        if id(layer) in self.norm_of:
            folded = layer.__class__.from_config({**layer.get_config(), "use_bias": True})
            self.folds.append((layer, self.norm_of[id(layer)], folded))
            return folded
        if self.share_layers:
            return layer
        copy = layer.__class__.from_config(layer.get_config())
        self.copies.append((layer, copy))
        return copy

    def call_layer(self, layer, *args, **kwargs):
        """Call `layer` as the original graph does (`clone_model`'s call function); an Identity replacing a
        BatchNormalization gets its input alone (the normalisation's keyword arguments, such as ``mask``)."""
        return layer(args[0]) if id(layer) in self.identities else layer(*args, **kwargs)

    def refold(self):
        """Set every folded layer's kernel and bias from its source layers' current weights (eagerly, or as
        graph ops inside a `tf.function`)."""
        for producer, batch_norm, folded in self.folds:
            kernel, bias = folded_weights(producer, batch_norm)
            folded.kernel.assign(kernel)
            folded.bias.assign(bias)


def fold_batch_norms(model, log=True):
    """A new functional model computing `model`'s inference outputs with batch normalisation folded into the
    layers before it (see the module docstring); `model` is not changed and shares no weights with it.

    Args:
        model: a functional Keras model (fold `export.float32_model(model)` for a float32 result).
        log: log one line with the number of BatchNormalization layers folded and left.

    Returns:
        The folded `keras.Model`: same inputs, outputs, name and layer names; `model(x, training=False)` to float
        rounding.
    """
    return BatchNormFold(model, share_layers=False, log=log).model


def count_batch_norms(model):
    """The number of BatchNormalization layers of `model`, nested models included."""
    return sum(isinstance(layer, keras.layers.BatchNormalization) for layer in iterate_layers(model))
