"""The scheduler-driven trainer: `Train` connects a basic (embedding) model, a dataset, an output head, losses,
callbacks and an optimizer, one scheduler stage at a time (basic_model → dataset → head → callbacks → compile →
fit), as the original Keras_insightface / GhostFaceNets `train.Train` did.

Files written for `save_path="X.h5"` (stem `X`) in `checkpoint_dir` (default `checkpoints/`):

- `X_epoch{NN}.keras` every epoch and `X.keras` (the latest): the full training model with optimizer state,
  written atomically; `Train(data_path, "X.h5")` with neither model given reloads `X.keras`, and `resume()`
  continues from the newest `X_epoch{NN}.keras`.
- `X_basic_<bin>_epoch_<step>_<accuracy>.h5`: the best basic model on the last eval bin (from `evals`).
- `X_basic_model_latest.h5` (the suffix of `save_path`) at the end of every scheduler stage.
- `X_hist.json` every epoch (`myCallbacks.My_history`), `X_centers.npy` with center loss.

Run `python train.py` for the demo: a small GhostFaceNet trained on synthetic identities (generated on first
use) and evaluated on unseen ones; `python train.py --help` for the options of a full run.
"""

import runtime_setup  # TensorFlow settings that must precede its import

# isort: split
import argparse
import contextlib
import glob
import os
import re
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf

import data
import evals
import GhostFaceNets
import losses
import myCallbacks
from heads import NormDense, NormDenseVPL, VPLUpdateQueue

CHECKPOINT_DIR = "checkpoints"
EMBEDDING_LOSS_ALIASES = {"centerloss": "center", "triplet": "triplet", "distill": "distill"}
NORM_APPENDING_LOSSES = (losses.MagFaceLoss, losses.AdaFaceLoss)
MARGIN_LOSSES = (losses.ArcfaceLoss, losses.ArcfaceLossSimple, losses.AdaCosLoss, losses.DistillKLDivergenceLoss)
MODEL_HELP = """Train needs a model. basic_model / model combinations:
| basic_model                      | model              | use                                          |
| model object                     | None               | train from scratch                           |
| basic model file (.h5 / .keras)  | None               | continue from a saved basic model (new head) |
| None or embedding layer index    | model file         | resume from a saved training model           |
| None or embedding layer index    | model object       | continue from a modified model (head kept)   |
| None                             | None               | reload checkpoints/<save_path stem>.keras    |"""


# ----------------------------------------------------------------------------------------------------------------
# Losses, heads and models


def loss_type_of(loss):
    """The training type a loss calls for: "softmax", "arcface", "triplet", "center" or "distill".

    In the original's order: a string is softmax; triplet losses (or "triplet" in the name), center losses (or
    "center"), margin losses on cosine logits (ArcFace family, AdaCos, KL distillation, or "arcface"), then
    "distill" / "softmax" by name; anything else is softmax.
    """
    if isinstance(loss, str):
        return "softmax"
    loss_class = loss if isinstance(loss, type) else type(loss)
    name = getattr(loss, "__name__", loss_class.__name__).lower()
    if issubclass(loss_class, losses.TripletLossWapper) or "triplet" in name:
        return "triplet"
    if issubclass(loss_class, losses.CenterLoss) or "center" in name:
        return "center"
    if issubclass(loss_class, MARGIN_LOSSES) or "arcface" in name:
        return "arcface"
    if "distill" in name:
        return "distill"
    return "softmax"


def embedding_layer_index(model, index=None):
    """Index of the layer whose output is the embedding: `index` if given, else the last layer named `embedding`."""
    if isinstance(index, int):
        return index
    names = [layer.name for layer in model.layers]
    if "embedding" not in names:
        raise ValueError(
            f"model '{model.name}' has no layer named 'embedding'; pass its index as basic_model=<int>"
        )
    return len(names) - 1 - names[::-1].index("embedding")


def basic_model_of(model, index=None):
    """The embedding sub-model (input → embedding layer output) of a training model."""
    layer = model.layers[embedding_layer_index(model, index)]
    return keras.Model(model.inputs[0], layer.output, name=model.name + "_basic")


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


def head_spec(loss_type, classes, loss_top_k, append_norm, partial_fc_split, vpl_batch_size):
    """The head a stage needs, as a hashable description compared between stages (None: no head)."""
    if loss_type == "softmax":
        return ("softmax", classes)
    if loss_type == "arcface":
        return ("arcface", classes, loss_top_k, append_norm, partial_fc_split, vpl_batch_size)
    return None


def make_head_layers(spec, regularizer, vpl_options):
    """Keras layers of an output head from its `head_spec`: softmax → Dense + softmax, arcface → NormDense(VPL)."""
    if spec[0] == "softmax":
        logits = keras.layers.Dense(
            spec[1], use_bias=False, kernel_regularizer=regularizer, name="softmax_logits", dtype="float32"
        )
        return [logits, keras.layers.Activation("softmax", dtype="float32", name="softmax")]
    _, classes, loss_top_k, append_norm, partial_fc_split, vpl_batch_size = spec
    if vpl_batch_size:
        return [NormDenseVPL(vpl_batch_size, classes, regularizer, name="arcface", **vpl_options)]
    return [NormDense(classes, regularizer, loss_top_k, append_norm, partial_fc_split, name="arcface")]


def copy_matching_weights(old_layers, new_layers):
    """Copy weights from an old head into a new one layer by layer where every shape matches."""
    for old, new in zip(old_layers, new_layers, strict=False):
        old_weights, new_weights = old.get_weights(), new.get_weights()
        if [w.shape for w in old_weights] == [w.shape for w in new_weights]:
            new.set_weights(old_weights)


def head_layers_of(model):
    """The output-head layers of a training model (NormDense `arcface`, or `softmax_logits` + `softmax`)."""
    return [layer for layer in model.layers if layer.name in ("arcface", "softmax_logits", "softmax")]


def head_spec_of(model):
    """The `head_spec` of a loaded training model's head (None when it has none)."""
    for layer in head_layers_of(model):
        if isinstance(layer, NormDense):
            vpl = layer.batch_size if isinstance(layer, NormDenseVPL) else 0
            return ("arcface", layer.units, layer.loss_top_k, layer.append_norm, layer.partial_fc_split, vpl)
        if layer.name == "softmax_logits":
            return ("softmax", layer.units)
    return None


def embedding_loss(kind, loss, classes, emb_shape, triplet_alpha, centers_file):
    """The loss of an attached embedding output: `loss` itself when it is a loss object or function, an instance
    of it when it is a class, else the default of `kind` (CenterLoss, BatchHardTripletLoss, cosine distill)."""
    if isinstance(loss, type):
        if kind == "center":
            return loss(classes, emb_shape, initial_file=centers_file)
        return loss(alpha=triplet_alpha) if kind == "triplet" else loss()
    if callable(loss):
        return loss
    if kind == "center":
        return losses.CenterLoss(classes, emb_shape, initial_file=centers_file)
    if kind == "triplet":
        return losses.BatchHardTripletLoss(alpha=triplet_alpha)
    return losses.distiller_loss_cosine


def embedding_kind(loss_name):
    """"center" / "triplet" / "distill" from an embedding loss given as a string, class or function name."""
    name = loss_name if isinstance(loss_name, str) else getattr(loss_name, "__name__", type(loss_name).__name__)
    for key, kind in (("center", "center"), ("triplet", "triplet"), ("distill", "distill")):
        if key in name.lower():
            return kind
    raise ValueError(f"embedding loss {loss_name!r}: the name must contain 'center', 'triplet' or 'distill'")


def as_list(value, length):
    """`value` repeated `length` times, or `value` itself when it is already a list / tuple of that length."""
    if isinstance(value, (list, tuple)):
        if len(value) != length:
            raise ValueError(f"expected {length} values, got {value!r}")
        return list(value)
    return [value] * length


def optimizer_for(optimizer, model):
    """An optimizer ready for `model`: a string or object as given, unless it was already built for other
    variables (a rebuilt head, a frozen backbone): then a copy of its configuration built for the model's
    trainable variables, carrying over the iteration count, the learning rate and the slots (momentum...) of
    every variable it already had (a Keras 3 optimizer cannot add variables once built)."""
    optimizer = keras.optimizers.get(optimizer)
    if not optimizer.built:
        return optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    built_for = {inner._var_key(variable) for variable in inner._trainable_variables}
    if {inner._var_key(variable) for variable in model.trainable_variables} <= built_for:
        return optimizer
    print(">>>> The model's trainable variables changed: the optimizer is rebuilt for them, keeping its state")
    rebuilt = type(inner).from_config(inner.get_config())
    rebuilt.build(model.trainable_variables)
    previous = {variable.path: variable for variable in inner.variables}
    for variable in rebuilt.variables:
        source = previous.get(variable.path)
        if source is not None and tuple(source.shape) == tuple(variable.shape):
            variable.assign(source)
    return rebuilt


def write_centers_of(model, path):
    """Write the centres of the CenterLoss compiled into `model` (a loaded checkpoint) to `path` (`.npy`, atomically),
    so the next center-loss stage starts from the checkpoint's centres: the per-epoch `.npy` may be one epoch newer
    or older than the checkpoint, or half-written, after a kill. Nothing happens when there is no CenterLoss."""
    for loss in losses.flatten_losses(getattr(model, "loss", None)):
        if isinstance(loss, losses.CenterLoss):
            temporary = f"{path}.tmp-{os.getpid()}.npy"
            np.save(temporary, keras.ops.convert_to_numpy(loss.centers))
            os.replace(temporary, path)


def build_compiled_state(model, dataset):
    """Create, before `fit`, the variables Keras would otherwise create inside the first traced train step: the
    optimizer's slots (momentum, ...) and the state of the compiled losses and metrics, from the shapes of
    `dataset.element_spec`. Values and training results are the same either way.

    Built lazily, they make TensorFlow trace the train step twice (a function whose first trace creates variables
    is traced again without them) and lift every slot variable out of the graph one by one: for a GhostFaceNet on
    a CPU that is most of the time to the first step. This calls Keras' own pre-build (`Trainer._symbolic_build`,
    what `fit` runs under a distribution strategy), here for every model.
    """
    with model.distribute_strategy.scope():
        model._symbolic_build(data_batch=dataset.element_spec)


def global_batch_size(batch_size):
    """`batch_size` per replica times the replicas of the current `tf.distribute` strategy (the original rule)."""
    return batch_size * tf.distribute.get_strategy().num_replicas_in_sync


def is_chief_worker():
    """False only on the non-chief workers of a multi-worker strategy (they do not evaluate, and save into a private
    temporary folder)."""
    resolver = getattr(tf.distribute.get_strategy(), "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    if task_type is None or task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and not has_chief


def is_multi_worker():
    """True under a `tf.distribute.MultiWorkerMirroredStrategy` whose cluster has more than one task."""
    strategy = tf.distribute.get_strategy()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    return sum(len(tasks) for tasks in strategy.cluster_resolver.cluster_spec().as_dict().values()) > 1


@contextlib.contextmanager
def multi_worker_fit_workarounds(model):
    """Make one `model.fit(dataset)` work under a multi-worker strategy, where Keras 3 (3.15) fails twice
    (keras-team/keras#20585, tensorflow/tensorflow#72388); elsewhere it does nothing:

    - before training, Keras all-reduces a whole nested `(images, labels)` batch in one collective call, only
      to learn the input shapes, which raises: that step is skipped (`build_compiled_state` has built the model,
      losses, metrics and optimizer from `dataset.element_spec` before);
    - the per-step logs are averaged with `reduce(MEAN, axis=0)`, which raises on scalars: they are averaged
      over all replicas instead (`axis=None`, the same value).
    """
    if not is_multi_worker():
        yield
        return
    from keras.src.backend.tensorflow import trainer as tf_trainer

    keras_reduce = tf_trainer.reduce_per_replica

    def reduce_per_replica(values, strategy, reduction="auto"):
        if reduction != "auto":
            return keras_reduce(values, strategy, reduction)
        return tf.nest.map_structure(lambda value: strategy.reduce("MEAN", value, axis=None), values)

    model._maybe_symbolic_build = lambda iterator=None, data_batch=None: None
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = keras_reduce
        del model._maybe_symbolic_build


# ----------------------------------------------------------------------------------------------------------------
# Train


def remaining_stages(train_schedule, completed):
    """The part of a schedule left after `completed` epochs: the stages not started yet, and the current one
    shortened to its remaining epochs with `optimizer: None` (so a restored optimizer keeps its state). A
    `bottleneckOnly` stage (which saves no epoch checkpoint) is kept when it starts at or after `completed`.
    Pass the result to `Train.train(..., initial_epoch=completed)`."""
    remaining, start = [], 0
    schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
    for stage in schedule:
        if stage.get("bottleneckOnly", False):
            if start >= completed:
                remaining.append(stage)
            continue
        end = start + stage["epoch"]
        if end > completed:
            stage = dict(stage, epoch=end - max(start, completed))
            if start < completed:
                stage["optimizer"] = None
            remaining.append(stage)
        start = end
    return remaining


class Train:
    """Train a face-embedding model through a list of scheduler stages.

    Args (the original's, with its meanings):
        data_path: class-per-folder dataset, image-list `.npz` (with `embeddings`: distillation) or `.tfrecord`.
        save_path: file name whose stem names every output (see the module docstring).
        eval_paths: `.bin` pair files, one `evals.eval_callback` each; the last one saves the best basic model.
        basic_model: a Keras embedding model, or the path of a saved one; with `model`, the embedding layer index
            (or None: the layer named `embedding`).
        model: a training model (object, or path of a `.keras` / `.h5` file) to continue from.
        compile: restore the optimizer (and loss) of a loaded `model` file.
        output_weight_decay: L2 on the output head: 0 none, (0, 1) `L2(v/2)`, >= 1 that multiple of the basic
            model's kernel L2 (see `head_regularizer`).
        custom_objects: extra objects for loading model files (every loss and head is registered already).
        pretrained: weights file loaded into the training model after the first head is built.
        batch_size: per replica; the global batch is `batch_size · replicas` under a `tf.distribute` strategy.
        lr_base, lr_decay, lr_decay_steps, lr_min, lr_warmup_steps: the learning-rate schedule
            (`myCallbacks.scheduler_from_options`); replace `tt.lr_scheduler` for another one.
        eval_freq: > 1 also evaluates every `eval_freq` batches.
        random_status, random_cutout_mask_area, image_per_class, mixup_alpha, partial_fc_split,
            teacher_model_interf: dataset options (`data.prepare_dataset`, `data.Triplet_dataset`).
        vpl_start_iters, vpl_allowed_delta: > 0 turns on variational prototype learning (`NormDenseVPL`); values
            below 50 are epochs.
    Additions: `checkpoint_dir`, `cache_dir` (dataset scan cache), `seed` (deterministic data order per epoch,
    for exact resume), `jit_compile` (XLA, passed to `compile`; Keras' "auto" uses it on GPUs only: on CPU the XLA
    step of GhostFaceNets is several times slower), `steps_per_execution`, `verbose`.
    """

    def __init__(
        self,
        data_path,
        save_path,
        eval_paths=(),
        basic_model=None,
        model=None,
        compile=True,
        output_weight_decay=0,
        custom_objects=None,
        pretrained=None,
        batch_size=128,
        lr_base=0.001,
        lr_decay=0.05,
        lr_decay_steps=0,
        lr_min=1e-5,
        lr_warmup_steps=0,
        eval_freq=1,
        random_status=0,
        random_cutout_mask_area=0,
        image_per_class=0,
        mixup_alpha=0,
        partial_fc_split=0,
        teacher_model_interf=None,
        vpl_start_iters=-1,
        vpl_allowed_delta=200,
        checkpoint_dir=CHECKPOINT_DIR,
        cache_dir=None,
        seed=None,
        jit_compile="auto",
        steps_per_execution=1,
        verbose="auto",
    ):
        self.data_path, self.save_path, self.checkpoint_dir = os.fspath(data_path), save_path, os.fspath(checkpoint_dir)
        self.stem, suffix = os.path.splitext(os.path.basename(save_path))
        self.basic_suffix = suffix if suffix in (".h5", ".keras") else ".h5"
        self.custom_objects = dict(custom_objects or {})
        self.batch_size, self.global_batch_size = batch_size, global_batch_size(batch_size)
        self.output_weight_decay, self.pretrained = output_weight_decay, pretrained
        self.dataset_options = {
            "random_status": random_status,
            "random_cutout_mask_area": random_cutout_mask_area,
            "image_per_class": image_per_class,
            "mixup_alpha": mixup_alpha,
            "teacher_model_interf": teacher_model_interf,
            "cache_dir": cache_dir,
        }
        self.partial_fc_split, self.seed = partial_fc_split, seed
        self.vpl_start_iters, self.vpl_allowed_delta = vpl_start_iters, vpl_allowed_delta
        self.jit_compile = jit_compile
        self.steps_per_execution, self.verbose = steps_per_execution, verbose
        self.metrics, self.default_optimizer, self.custom_callbacks = ["accuracy"], "adam", []
        if runtime_setup.onednn_missed():
            print(
                ">>>> TensorFlow was imported before this library with oneDNN left off: CPU training runs ~1.4x slower;"
                " import train first or set TF_ENABLE_ONEDNN_OPTS=1 (see runtime_setup.py)"
            )

        os.makedirs(checkpoint_dir, exist_ok=True)
        self.basic_model, self.model, self.inited_from_model = self.resolve_models(basic_model, model, compile)
        self.head_spec = head_spec_of(self.model) if self.model is not None else None
        self.given_model_output = self.model.outputs[-1] if self.inited_from_model else None
        self.emb_shape = int(self.basic_model.output_shape[-1])
        self.img_shape = tuple(self.basic_model.input_shape[1:3])
        if None in self.img_shape:
            self.img_shape = (112, 112)

        chief = is_chief_worker()
        # Other workers of a multi-worker run must save too (saving reads variables collectively), into a folder
        # of their own that nobody reads.
        self.worker_dir = None if chief else tempfile.TemporaryDirectory(prefix=f"{self.stem}_worker_")
        self.output_dir = self.checkpoint_dir if chief else self.worker_dir.name
        if self.model is not None and not self.inited_from_model:
            write_centers_of(self.model, self.output_path("_centers.npy"))
        self.my_evals = [
            evals.eval_callback(self.basic_model, path, batch_size=batch_size, eval_freq=eval_freq, flip=True)
            for path in eval_paths
        ] if chief else []
        if self.my_evals:
            self.my_evals[-1].save_model, self.my_evals[-1].checkpoint_dir = self.stem, self.output_dir
        self.my_history = myCallbacks.My_history(self.output_path("_hist.json"), evals=self.my_evals)
        self.model_checkpoint = myCallbacks.ModelCheckpoint(
            self.output_path("_epoch{epoch:02d}.keras"),
            latest_path=self.output_path(".keras"),
            verbose=int(verbose != 0),
        )
        self.model_checkpoint.enabled = True
        self.lr_scheduler = myCallbacks.scheduler_from_options(
            lr_base, lr_decay, lr_min, lr_decay_steps, lr_warmup_steps
        )
        self.train_ds, self.steps_per_epoch, self.classes, self.dataset_key = None, None, 0, None
        self.is_distill_ds, self.teacher_emb_size, self.nan_guard = False, None, None

    # ------------------------------------------------------------------------------------------------------------
    # Models

    def output_path(self, suffix):
        """`<checkpoint_dir>/<stem><suffix>`, where this process writes (a private folder on non-chief workers)."""
        return os.path.join(self.output_dir, self.stem + suffix)

    def load(self, path, compile=True):
        """Load a model file with the registered losses / heads plus `custom_objects`."""
        if not os.path.exists(path):
            raise FileNotFoundError(f"{path}: no such model file")
        with keras.saving.custom_object_scope(self.custom_objects):
            if path.endswith(".keras"):
                return keras.saving.load_model(path, compile=compile)
            return GhostFaceNets.load_model(path, compile=compile)

    def resolve_models(self, basic_model, model, compile):
        """`(basic_model, model or None, inited_from_model)` from the constructor's combination (see MODEL_HELP)."""
        if basic_model is None and model is None:
            model = os.path.join(self.checkpoint_dir, self.stem + ".keras")
            print(f">>>> Try reload from: {model}")
            if not os.path.exists(model):
                raise FileNotFoundError(f"{model} does not exist, and no basic_model or model is given\n{MODEL_HELP}")
        if isinstance(model, (str, os.PathLike)):
            model = self.load(os.fspath(model), compile=compile)
            return basic_model_of(model, basic_model), model, False
        if isinstance(model, keras.Model):
            return basic_model_of(model, basic_model), model, True
        if isinstance(basic_model, (str, os.PathLike)):
            return self.load(os.fspath(basic_model), compile=False), None, False
        if isinstance(basic_model, keras.Model):
            return basic_model, None, False
        raise ValueError(f"basic_model {basic_model!r} / model {model!r} cannot be used\n{MODEL_HELP}")

    def build_model(self, loss_type, loss, loss_top_k, emb_kinds):
        """(Re)build the training model: outputs `<kind>_embedding` for each attached embedding loss, then the
        main output: the head the stage needs (rebuilt when its type, class count, top-K or norm column change,
        with matching weights copied), the embedding itself for an embedding loss, or, for a model given as an
        object (`inited_from_model`), that model's own last output."""
        outputs = [self.embedding_output(kind) for kind in emb_kinds]
        if self.inited_from_model:
            outputs.append(self.given_model_output)
        elif loss_type in ("softmax", "arcface"):
            outputs.append(self.head_output(loss_type, loss, loss_top_k))
        else:
            self.head_spec = None
            outputs.append(self.embedding_output(loss_type))
        self.model = keras.Model(self.basic_model.inputs[0], outputs, name=self.basic_model.name + "_train")

    def head_output(self, loss_type, loss, loss_top_k):
        """The head's output on the embedding, reusing the current head when the stage needs the same one."""
        append_norm = isinstance(loss, NORM_APPENDING_LOSSES)
        vpl_batch_size = self.batch_size if self.vpl_start_iters > 0 and loss_type == "arcface" else 0
        spec = head_spec(loss_type, self.classes, loss_top_k, append_norm, self.partial_fc_split, vpl_batch_size)
        old_layers = head_layers_of(self.model) if self.model is not None else []
        if spec == self.head_spec and old_layers:
            layers = old_layers
        else:
            vpl_options = {"start_iters": self.vpl_iters(), "allowed_delta": self.vpl_allowed_delta}
            layers = make_head_layers(spec, head_regularizer(self.output_weight_decay, self.basic_model), vpl_options)
            print(f">>>> Output head: {spec[0]}, {spec[1]} classes, top-K {loss_top_k}")
        output = self.basic_model.outputs[0]
        for layer in layers:
            output = layer(output)
        if layers is not old_layers:
            copy_matching_weights(old_layers, layers)
        self.head_spec = spec
        return output

    def embedding_output(self, kind):
        """The basic model's embedding as a named float32 output `<kind>_embedding` (through `distill_map` when a
        distillation teacher's embeddings are wider or narrower)."""
        embedding = self.basic_model.outputs[0]
        if kind == "distill" and self.teacher_emb_size not in (None, self.emb_shape):
            embedding = keras.layers.Dense(self.teacher_emb_size, use_bias=False, name="distill_map", dtype="float32")(
                embedding
            )
        return keras.layers.Activation("linear", dtype="float32", name=f"{kind}_embedding")(embedding)

    def vpl_iters(self):
        """VPL start in iterations (values below 50 are epochs)."""
        start = self.vpl_start_iters
        return start * self.steps_per_epoch if 0 < start < 50 else start

    # ------------------------------------------------------------------------------------------------------------
    # Data

    def reset_dataset(self, data_path=None):
        """Force the dataset to be rebuilt at the next stage, optionally from a new `data_path`."""
        self.train_ds, self.dataset_key = None, None
        if data_path is not None:
            self.data_path = os.fspath(data_path)

    def init_dataset(self, triplet, initial_epoch):
        """Build the stage's dataset (rebuilt when the data path, triplet-ness or start epoch change)."""
        key = (self.data_path, triplet, initial_epoch)
        if self.train_ds is not None and key == self.dataset_key:
            return
        options = dict(self.dataset_options, batch_size=self.global_batch_size, img_shape=self.img_shape)
        if triplet:
            options.pop("mixup_alpha")
            self.train_ds, self.steps_per_epoch = data.Triplet_dataset(self.data_path, **options)
        else:
            options.update(partial_fc_split=self.partial_fc_split, seed=self.seed, initial_epoch=initial_epoch)
            self.train_ds, self.steps_per_epoch = data.prepare_dataset(self.data_path, **options)
        if self.train_ds is None:
            raise ValueError(f"{self.data_path}: no training images")
        label_spec = self.train_ds.element_spec[1]
        self.is_distill_ds = isinstance(label_spec, tuple)
        self.teacher_emb_size = int(label_spec[0].shape[-1]) if self.is_distill_ds else None
        labels = label_spec[1] if self.is_distill_ds else label_spec
        self.classes = int(labels.shape[-1])
        if tf.distribute.has_strategy():
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            self.train_ds = self.train_ds.with_options(options)
        self.dataset_key = key

    def arranged_dataset(self, output_kinds):
        """The dataset with one target per model output: teacher embeddings for `distill`, labels otherwise."""
        def arrange(images, targets):
            embeddings, labels = targets if self.is_distill_ds else (None, targets)
            arranged = tuple(embeddings if kind == "distill" else labels for kind in output_kinds)
            return images, arranged if len(arranged) > 1 else arranged[0]

        return self.train_ds.map(arrange, num_parallel_calls=tf.data.AUTOTUNE)

    # ------------------------------------------------------------------------------------------------------------
    # Training

    def train(self, train_schedule, initial_epoch=0):
        """Run the scheduler stages in order from epoch `initial_epoch`; each trains its `epoch` epochs (a
        `bottleneckOnly` stage trains from epoch 0 and does not advance the count). Returns the final epoch.

        Stage keys: the parameters of `train_single_scheduler`, plus the aliases `centerloss: weight`,
        `triplet: weight`, `distill: weight` (attach that embedding loss) and `alpha` (triplet margin).
        The caller's dicts are not changed.
        """
        schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
        self.restore_best_accuracies(initial_epoch)
        for stage in schedule:
            stage = self.expand_stage_aliases(stage)
            self.train_single_scheduler(**stage, initial_epoch=initial_epoch)
            initial_epoch += 0 if stage.get("bottleneckOnly", False) else stage["epoch"]
            if self.model is None or self.model.stop_training:
                print(">>>> Training stopped early")
                break
        return initial_epoch

    def restore_best_accuracies(self, epochs):
        """Give each eval callback the best accuracy of the first `epochs` epochs recorded in the history, so that
        a run continued from epoch `epochs` replaces the best basic model only by a better one."""
        lr_entries = len(self.my_history.history.get("lr", []))
        for callback in self.my_evals:
            values = self.my_history.history.get(callback.test_names, [])
            first_epoch = lr_entries - len(values)  # a shorter key covers the latest epochs
            recorded = values[: max(epochs - first_epoch, 0)]
            callback.max_accuracy = max((value for value in recorded if value is not None), default=0.0)

    def resume(self, train_schedule):
        """Continue a run of `train_schedule` that was interrupted: load the newest `_epoch{NN}.keras` checkpoint
        (model, optimizer state), skip the stages it completed, shorten the current one, and train the rest. The
        learning-rate schedule and `_hist.json` continue from epoch NN. Returns the final epoch."""
        completed, path = self.last_checkpoint()
        if path is None:
            print(">>>> No epoch checkpoint found; starting from epoch 0")
            return self.train(train_schedule, 0)
        print(f">>>> Resuming from {path} (epoch {completed} completed)")
        self.model = self.load(path, compile=True)
        write_centers_of(self.model, self.output_path("_centers.npy"))
        self.basic_model = basic_model_of(self.model)
        self.head_spec, self.inited_from_model = head_spec_of(self.model), False
        for callback in self.my_evals:
            callback.basic_model = self.basic_model
        return self.train(remaining_stages(train_schedule, completed), completed)

    def last_checkpoint(self):
        """`(epoch, path)` of the newest complete `_epoch{NN}.keras` checkpoint, `(0, None)` when there is none."""
        pattern = re.compile(re.escape(self.stem) + r"_epoch(\d+)\.keras$")
        found = [
            (int(match.group(1)), path)
            for path in glob.glob(os.path.join(glob.escape(self.checkpoint_dir), self.stem + "_epoch*.keras"))
            if (match := pattern.search(os.path.basename(path)))
        ]
        return max(found) if found else (0, None)

    @staticmethod
    def expand_stage_aliases(stage):
        """A copy of a scheduler dict with `centerloss` / `triplet` / `distill` moved into `embLossTypes` /
        `embLossWeights` and `alpha` renamed `tripletAlpha`."""
        stage = dict(stage)
        types, weights = list(stage.pop("embLossTypes", None) or []), stage.pop("embLossWeights", 1)
        weights = as_list(weights, len(types)) if types else []
        for alias in EMBEDDING_LOSS_ALIASES:
            if alias in stage:
                types.append(alias)
                weights.append(stage.pop(alias))
        if "alpha" in stage:
            stage["tripletAlpha"] = stage.pop("alpha")
        if types:
            stage["embLossTypes"], stage["embLossWeights"] = types, weights
        return stage

    def train_single_scheduler(
        self,
        epoch,
        loss=None,
        initial_epoch=0,
        lossWeight=1,
        optimizer=None,
        bottleneckOnly=False,
        lossTopK=1,
        type=None,
        embLossTypes=None,
        embLossWeights=1,
        tripletAlpha=0.35,
    ):
        """Train one stage of `epoch` epochs from `initial_epoch`.

        `loss`: the main loss (None reuses the compiled one); `type`: override the type inferred from it;
        `lossWeight`: weight of the main output; `optimizer`: None reuses the compiled optimizer (or Adam);
        `bottleneckOnly`: freeze the basic model, train the head only, without evaluation or checkpoints, from
        epoch 0; `lossTopK`: sub-centres of the NormDense head; `embLossTypes` / `embLossWeights`: extra
        embedding losses (names, classes or functions containing center / triplet / distill); `tripletAlpha`.
        """
        if loss is None:
            if self.model is None or not getattr(self.model, "loss", None):
                raise ValueError("the first scheduler stage needs a 'loss'")
            loss = losses.flatten_losses(self.model.loss)[-1]
        loss_type = type or loss_type_of(loss)
        emb_types = list(embLossTypes or [])
        emb_weights = as_list(embLossWeights, len(emb_types)) if emb_types else []
        emb_kinds = [embedding_kind(name) for name in emb_types]

        self.init_dataset(loss_type == "triplet" or "triplet" in emb_kinds, 0 if bottleneckOnly else initial_epoch)
        if loss_type == "distill" and not self.is_distill_ds:
            raise ValueError(f"{self.data_path}: a distill loss needs a dataset with teacher embeddings")
        if self.is_distill_ds and "distill" not in [*emb_kinds, loss_type]:
            emb_types, emb_weights, emb_kinds = [*emb_types, "distill"], [*emb_weights, 1], [*emb_kinds, "distill"]
        order = sorted(range(len(emb_kinds)), key=lambda i: ("distill", "triplet", "center").index(emb_kinds[i]))
        emb_types, emb_weights, emb_kinds = ([items[i] for i in order] for items in (emb_types, emb_weights, emb_kinds))
        emb_losses = [
            embedding_loss(kind, None if isinstance(name, str) else name, self.classes, self.emb_shape, tripletAlpha,
                           self.output_path("_centers.npy"))
            for kind, name in zip(emb_kinds, emb_types, strict=True)
        ]

        compiled_optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        self.build_model(loss_type, loss, lossTopK, emb_kinds)
        if self.pretrained and not self.inited_from_model:
            self.model.load_weights(self.pretrained)
            self.pretrained = None
        self.basic_model.trainable = not bottleneckOnly
        all_losses, weights = [*emb_losses, loss], [*emb_weights, lossWeight]
        self.model.compile(
            optimizer=optimizer_for(optimizer or compiled_optimizer or self.default_optimizer, self.model),
            loss=all_losses if len(all_losses) > 1 else loss,
            loss_weights=weights if len(weights) > 1 else None,
            metrics=self.output_metrics(),
            jit_compile=self.jit_compile,
            steps_per_execution=self.steps_per_execution,
        )
        dataset = self.arranged_dataset([*emb_kinds, loss_type])
        build_compiled_state(self.model, dataset)
        start = 0 if bottleneckOnly else initial_epoch
        with multi_worker_fit_workarounds(self.model):
            self.model.fit(
                dataset,
                epochs=start + epoch,
                initial_epoch=start,
                steps_per_epoch=self.steps_per_epoch,
                callbacks=self.stage_callbacks(bottleneckOnly, emb_losses, loss),
                verbose=self.verbose,
            )
        self.basic_model.trainable = True
        if self.nan_guard.nan_detected:
            print(f">>>> NaN loss: training stopped; the last good checkpoint is {self.output_path('.keras')}")
            self.model.stop_training = True
        elif not bottleneckOnly:
            myCallbacks.save_model_atomic(self.basic_model, self.output_path("_basic_model_latest" + self.basic_suffix))

    def output_metrics(self):
        """`accuracy` for every output that is not an embedding (by output name), None when there is none."""
        names = [name for name in self.model.output_names if "embedding" not in name]
        if len(self.model.outputs) == 1:
            return list(self.metrics) if names else None
        return {name: list(self.metrics) for name in names} or None

    def stage_callbacks(self, bottleneck_only, emb_losses, loss):
        """Callbacks of a stage: evals, the user's, loss running values, history, checkpoint, LR schedule,
        center-loss saving, the NaN guard and the VPL queue update."""
        callbacks = [] if bottleneck_only else list(self.my_evals)
        callbacks += [*self.custom_callbacks, losses.LossRunningValuesLogger()]
        if not bottleneck_only:
            callbacks += [self.my_history] + ([self.model_checkpoint] if self.model_checkpoint.enabled else [])
        if self.lr_scheduler is not None:
            if hasattr(self.lr_scheduler, "build"):
                self.lr_scheduler.build(self.steps_per_epoch)
            callbacks.append(self.lr_scheduler)
        callbacks += [item.save_centers_callback for item in emb_losses if hasattr(item, "save_centers_callback")]
        self.nan_guard = myCallbacks.ExitOnNaN()
        callbacks.append(self.nan_guard)
        if isinstance(self.model.layers[-1], NormDenseVPL):
            loss.build(self.batch_size)
            callbacks.append(VPLUpdateQueue(self.model.layers[-1], loss))
        return callbacks


# ----------------------------------------------------------------------------------------------------------------
# Command line

DEMO_DIR = os.path.join("datasets", "demo")
LOSSES_BY_NAME = {
    "arcface": losses.ArcfaceLoss,
    "cosface": losses.CosFaceLoss,
    "curricularface": losses.CurricularFaceLoss,
    "airface": losses.AirFaceLoss,
    "magface": losses.MagFaceLoss,
    "adaface": losses.AdaFaceLoss,
}


def parse_arguments(argv=None):
    """Command-line options of `python train.py` (defaults: the synthetic demo)."""
    parser = argparse.ArgumentParser(
        description="Train a GhostFaceNet. With no arguments: a short demo on synthetic identities (generated into "
        f"{DEMO_DIR} on first use) with evaluation on unseen ones.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("-d", "--data_path", help="class-per-folder dataset (default: the demo data)")
    parser.add_argument("-e", "--eval_paths", nargs="*", help=".bin files evaluated after every epoch (default: "
                        "the demo's val.bin, evaluated before and after training only)")
    parser.add_argument("-s", "--save_path", default="ghostfacenet_demo.h5", help="output name (its stem names files)")
    parser.add_argument("--checkpoint_dir", default=CHECKPOINT_DIR, help="folder of checkpoints and history")
    parser.add_argument("--model", default="ghostnetv1", choices=["ghostnetv1", "ghostnetv2"], help="backbone")
    parser.add_argument("--width", type=float, default=0.5, help="backbone width multiplier (published: 1.3)")
    parser.add_argument("--strides", type=int, default=2, choices=[1, 2], help="stem stride (published: 1 and 2)")
    parser.add_argument("--emb_shape", type=int, default=128, help="embedding size (published: 512)")
    parser.add_argument("--input_size", type=int, default=64, help="input height = width in pixels (published: "
                        "112; other sizes are resized from the data)")
    parser.add_argument("--weight_decay", type=float, default=5e-4, help="L2 on the backbone kernels")
    parser.add_argument("--output_weight_decay", type=float, default=1, help="head L2 (see Train)")
    parser.add_argument("--loss", default="arcface", choices=[*LOSSES_BY_NAME, "softmax"], help="main loss")
    parser.add_argument("--scale", type=float, default=32, help="logit scale of margin losses (published: 64)")
    parser.add_argument("--first_scale", type=float, help="scale of a first one-epoch stage (published: 32; default: "
                        "no separate first stage)")
    parser.add_argument("--epochs", type=int, default=10, help="total epochs")
    parser.add_argument("--batch_size", type=int, default=64, help="batch size per replica")
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adamw", "adam"], help="optimizer")
    parser.add_argument("--lr_base", type=float, default=0.1, help="base learning rate")
    parser.add_argument("--lr_decay", type=float, default=0.5, help="exp: decay rate; cosine: m_mul")
    parser.add_argument("--lr_decay_steps", type=float, nargs="*", help="cosine period in epochs (> 1), exponential "
                        "(<= 1) or a list of step-decay epochs (default: one cosine period over all epochs)")
    parser.add_argument("--lr_min", type=float, default=1e-4, help="minimum learning rate")
    parser.add_argument("--lr_warmup_steps", type=int, default=0, help="warm-up epochs")
    parser.add_argument("--random_status", type=int, default=0, help="augmentation level (-1 .. 3, >= 100)")
    parser.add_argument("--mixed_precision", action="store_true", help="mixed_float16 (GPUs)")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs into DIR")
    parser.add_argument("--resume", action="store_true", help="continue the run of --save_path from its last epoch")
    parser.add_argument("--seed", type=int, default=0, help="random seed (weights and data order)")
    return parser.parse_args(argv)


def demo_data():
    """The demo training folder and evaluation bin, generated by `synthetic_faces.build_demo` when missing."""
    train_dir, bin_path = os.path.join(DEMO_DIR, "train"), os.path.join(DEMO_DIR, "val.bin")
    if not (os.path.isdir(train_dir) and os.path.isfile(bin_path)):
        from synthetic_faces import build_demo

        print(f">>>> Generating the synthetic demo data into {DEMO_DIR}")
        build_demo(DEMO_DIR)
    return train_dir, bin_path


def build_basic_model(args):
    """The GhostFaceNet of the command-line options: PReLU, GDC head, BN 0.9 / 1e-5, L2 `weight_decay`."""
    basic_model = GhostFaceNets.buildin_models(
        args.model, dropout=0, emb_shape=args.emb_shape, input_shape=(args.input_size, args.input_size, 3),
        output_layer="GDC", bn_momentum=0.9, bn_epsilon=1e-5, width=args.width, strides=args.strides,
        use_bias=args.model == "ghostnetv1",
    )
    if args.weight_decay > 0:
        basic_model = GhostFaceNets.add_l2_regularizer_2_model(basic_model, args.weight_decay)
    return GhostFaceNets.replace_ReLU_with_PReLU(basic_model)


def build_schedule(args):
    """Scheduler stages of the options: [one epoch at `first_scale`, then] the rest at `scale` (margin losses)."""
    if args.optimizer == "sgd":
        optimizer = keras.optimizers.SGD(args.lr_base, momentum=0.9)
    else:
        optimizer = keras.optimizers.get({"class_name": args.optimizer, "config": {"learning_rate": args.lr_base}})
    if args.loss == "softmax":
        return [{"loss": "categorical_crossentropy", "epoch": args.epochs, "optimizer": optimizer}]
    loss_class = LOSSES_BY_NAME[args.loss]
    if args.first_scale is None or args.epochs == 1:
        return [{"loss": loss_class(scale=args.scale), "epoch": args.epochs, "optimizer": optimizer}]
    first = {"loss": loss_class(scale=args.first_scale), "epoch": 1, "optimizer": optimizer}
    return [first, {"loss": loss_class(scale=args.scale), "epoch": args.epochs - 1}]


def verification_accuracy(basic_model, bin_paths):
    """10-fold verification accuracy of `basic_model` on each bin, {bin name: accuracy}."""
    table = evals.evaluate_bin_files(basic_model, bin_paths, batch_size=128)
    return table["accuracy_mean"].to_dict()


def main(argv=None):
    """CLI entry: train with the options and print the verification accuracy before and after; returns them."""
    args = parse_arguments(argv)
    keras.utils.set_random_seed(args.seed)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    data_path, eval_paths, epoch_eval_paths = args.data_path, args.eval_paths or [], args.eval_paths or []
    if data_path is None:
        data_path, demo_bin = demo_data()
        eval_paths = eval_paths or [demo_bin]
    lr_decay_steps = args.lr_decay_steps or [args.epochs]
    lr_decay_steps = lr_decay_steps[0] if len(lr_decay_steps) == 1 else [int(step) for step in lr_decay_steps]

    basic_model = build_basic_model(args)
    before = verification_accuracy(basic_model, eval_paths) if eval_paths else {}
    tt = Train(
        data_path, args.save_path, epoch_eval_paths, basic_model=basic_model, batch_size=args.batch_size,
        lr_base=args.lr_base, lr_decay=args.lr_decay, lr_decay_steps=lr_decay_steps, lr_min=args.lr_min,
        lr_warmup_steps=args.lr_warmup_steps, random_status=args.random_status,
        output_weight_decay=args.output_weight_decay, checkpoint_dir=args.checkpoint_dir, seed=args.seed,
    )
    if args.tensorboard:
        tt.custom_callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
    schedule = build_schedule(args)
    tt.resume(schedule) if args.resume else tt.train(schedule)
    after = verification_accuracy(tt.basic_model, eval_paths) if eval_paths else {}
    for name in after:
        print(f">>>> {name}: verification accuracy {before[name]:.4f} untrained -> {after[name]:.4f} trained")
    return before, after


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
