"""The outputs `train.Train` puts on a basic (embedding) model: the output head of a stage, described by a small
`HeadSpec` (compared between stages to decide whether the head is kept or rebuilt), its Keras layers and weight
decay, and the named embedding outputs of attached embedding losses."""

import dataclasses

import keras

import GhostFaceNets
from heads import NormDense, NormDenseVPL
from partial_fc_sharded import ShardedNormDense

HEAD_LAYER_NAMES = ("arcface", "softmax_logits", "softmax")


@dataclasses.dataclass(frozen=True)
class HeadSpec:
    """An output head: `kind` "softmax" (Dense + softmax) or "arcface" (NormDense, or NormDenseVPL when
    `vpl_batch_size` > 0) over `classes` classes; `loss_top_k` sub-centres, `append_norm` (the embedding-norm column
    of MagFace / AdaFace), `partial_fc_split` and `sample_rate` / `sample_seed` (a Partial FC v2 head, trained by
    `partial_fc.PartialFCModel`; with `optimizer_slots`, model parallel) apply to the arcface kind only. Two stages
    with equal specs share one head."""

    kind: str
    classes: int
    loss_top_k: int = 1
    append_norm: bool = False
    partial_fc_split: int = 0
    vpl_batch_size: int = 0
    sample_rate: float | None = None
    sample_seed: int = 0
    optimizer_slots: tuple | None = None

    @classmethod
    def for_stage(cls, kind, classes, loss_top_k=1, append_norm=False, partial_fc_split=0, vpl_batch_size=0,
                  sample_rate=None, sample_seed=0, optimizer_slots=None):
        """The head a stage of main-output `kind` needs (None when the kind trains the embedding itself);
        `optimizer_slots` (a tuple of slot names) makes a Partial FC head model parallel (`ShardedNormDense`)."""
        if kind == "softmax":
            return cls("softmax", classes)
        if kind == "arcface":
            return cls("arcface", classes, loss_top_k, append_norm, partial_fc_split, vpl_batch_size, sample_rate,
                       sample_seed, optimizer_slots if sample_rate is not None else None)
        return None

    @property
    def is_model_parallel(self):
        """Whether the head's class centres are sharded over the replicas (`partial_fc_sharded`)."""
        return self.optimizer_slots is not None


def first_l2_factor(model):
    """The `l2` factor of the first kernel L2 regulariser in `model` (0 when it has none)."""
    for layer in GhostFaceNets.iterate_layers(model):
        regularizer = getattr(layer, "kernel_regularizer", None) or getattr(layer, "depthwise_regularizer", None)
        if isinstance(regularizer, keras.regularizers.L2):
            return float(regularizer.l2)
    return 0.0


def head_regularizer(output_weight_decay, basic_model):
    """The head's kernel regulariser from `output_weight_decay`: 0 none; in (0, 1) `L2(v/2)`; >= 1 `L2(v·l2)`
    with `l2` the basic model's first kernel L2 factor (so `add_l2_regularizer_2_model(m, 5e-4)` and 1 give
    `L2(2.5e-4)`, the same weight decay as the backbone)."""
    value = output_weight_decay if output_weight_decay < 1 else output_weight_decay * 2 * first_l2_factor(basic_model)
    return keras.regularizers.L2(value / 2) if value > 0 else None


def make_head_layers(spec, regularizer, vpl_options):
    """Keras layers of the head `spec`: softmax → Dense `softmax_logits` + softmax, arcface → NormDense(VPL)
    `arcface` (`vpl_options`: NormDenseVPL's `start_iters` and `allowed_delta`)."""
    if spec.kind == "softmax":
        logits = keras.layers.Dense(
            spec.classes, use_bias=False, kernel_regularizer=regularizer, name="softmax_logits", dtype="float32"
        )
        return [logits, keras.layers.Activation("softmax", dtype="float32", name="softmax")]
    if spec.vpl_batch_size:
        return [NormDenseVPL(spec.vpl_batch_size, spec.classes, regularizer, name="arcface", **vpl_options)]
    if spec.is_model_parallel:
        return [ShardedNormDense(spec.classes, regularizer, spec.loss_top_k, spec.sample_rate, spec.sample_seed,
                                 spec.optimizer_slots, name="arcface")]
    return [NormDense(spec.classes, regularizer, spec.loss_top_k, spec.append_norm, spec.partial_fc_split,
                      spec.sample_rate, spec.sample_seed, name="arcface")]


def copy_matching_weights(old_layers, new_layers):
    """Copy weights from an old head into a new one layer by layer where every shape matches; between two
    single-kernel `NormDense` heads, the class centres are copied whatever their layout (columns, or rows with
    `sample_rate`)."""
    for old, new in zip(old_layers, new_layers, strict=False):
        old_weights, new_weights = old.get_weights(), new.get_weights()
        if [w.shape for w in old_weights] == [w.shape for w in new_weights]:
            new.set_weights(old_weights)
        elif transposed_kernels(old, old_weights, new, new_weights):
            new.set_weights([old_weights[0].T])


def transposed_kernels(old, old_weights, new, new_weights):
    """Whether two `NormDense` heads hold one kernel each, of transposed shapes (columns vs rows layout)."""
    single = isinstance(old, NormDense) and isinstance(new, NormDense) and len(old_weights) == len(new_weights) == 1
    return single and old_weights[0].shape == new_weights[0].shape[::-1]


def head_layers_of(model):
    """The output-head layers of a training model (NormDense `arcface`, or `softmax_logits` + `softmax`)."""
    return [layer for layer in model.layers if layer.name in HEAD_LAYER_NAMES]


def head_spec_of(model):
    """The `HeadSpec` of a loaded training model's head (None when it has none)."""
    for layer in head_layers_of(model):
        if isinstance(layer, ShardedNormDense):
            return HeadSpec("arcface", layer.units, layer.loss_top_k, sample_rate=layer.sample_rate,
                            sample_seed=layer.sample_seed, optimizer_slots=layer.optimizer_slots)
        if isinstance(layer, NormDense):
            vpl = layer.batch_size if isinstance(layer, NormDenseVPL) else 0
            return HeadSpec("arcface", layer.units, layer.loss_top_k, layer.append_norm, layer.partial_fc_split, vpl,
                            layer.sample_rate, layer.sample_seed)
        if layer.name == "softmax_logits":
            return HeadSpec("softmax", layer.units)
    return None


def apply_layers(layers, tensor):
    """`tensor` through `layers` in order."""
    for layer in layers:
        tensor = layer(tensor)
    return tensor


def embedding_output(basic_model, kind, teacher_emb_size=None):
    """The basic model's embedding as a named float32 output `<kind>_embedding` (through a Dense `distill_map` for
    `kind` "distill" when the teacher's embeddings, `teacher_emb_size` wide, are wider or narrower)."""
    embedding = basic_model.outputs[0]
    if kind == "distill" and teacher_emb_size not in (None, int(basic_model.output_shape[-1])):
        embedding = keras.layers.Dense(teacher_emb_size, use_bias=False, name="distill_map", dtype="float32")(
            embedding
        )
    return keras.layers.Activation("linear", dtype="float32", name=f"{kind}_embedding")(embedding)
