"""The scheduler-driven trainer: `Train` connects a basic (embedding) model, a dataset, an output head, losses,
callbacks and an optimizer, one scheduler stage at a time, as the original Keras_insightface / GhostFaceNets
`train.Train` did. Each stage (a dict of the original's keys, parsed into a `schedule.Stage`) runs in three steps:
resolve its losses (`schedule.resolve_losses`, after building the dataset they need), build and compile the
training model (head from `training_heads`), fit.

Files written for `save_path="X.h5"` (stem `X`) in `checkpoint_dir` (default `checkpoints/`), all atomically:

- `X_epoch{NN}.keras` every epoch and `X.keras` (the latest): the full training model with optimizer state;
  `Train(data_path, "X.h5")` with neither model given reloads `X.keras`, and `resume()` continues from the newest
  `X_epoch{NN}.keras`.
- `X_basic_<bin>_epoch_<step>_<accuracy>.h5`: the best basic model on the last eval bin (from `evals`).
- `X_basic_model_latest.h5` (the suffix of `save_path`) at the end of every scheduler stage.
- `X_hist.json` every epoch (`myCallbacks.My_history`), `X_centers.npy` with center loss, `X_options.json` (the
  command line's model and optimizer options, checked by `--resume`).

A run owns its name: a new run refuses to start when `checkpoint_dir` holds files of a run with the same stem
(`RunExistsError`), unless it continues that run (`resume()`, a `model` file, `initial_epoch` > 0) or is told to
replace it (`overwrite=True`, `--overwrite`). `resume()` stops with a table of differences (`CheckpointMismatchError`)
when the checkpoint does not match the run, unless told to accept them. Braces in `checkpoint_dir` or the save name
are literal. Temporary files of a killed run are removed at the next start.

Run `python train.py` for the demo: a small GhostFaceNet trained on synthetic identities (generated on first
use) and evaluated on unseen ones; `python train.py --help` for the options of a full run. It exits with status 1
when training failed (a NaN loss stopped it, or the verification accuracy could not be computed), and 2 when it
did not start (an earlier run of that name, or a checkpoint that differs from the options of `--resume`).
"""

import runtime_setup  # TensorFlow settings that must precede its import

# isort: split
import argparse
import contextlib
import glob
import json
import math
import os
import re
import sys
import tempfile
import zipfile

import keras
import tensorflow as tf

import atomic_io
import data
import evals
import fused_ops
import GhostFaceNets
import keras_compat
import losses
import myCallbacks
import schedule
from distributed import chief_logger, global_batch_size, is_chief_worker, is_multi_worker
from heads import NormDenseVPL, VPLUpdateQueue
from logs import show_library_logs
from partial_fc import PartialFCModel
from partial_fc_sharded import ShardedPartialFCModel, optimizer_slot_names
from schedule import remaining_stages
from training_heads import (
    HeadSpec,
    apply_layers,
    copy_matching_weights,
    embedding_output,
    head_layers_of,
    head_regularizer,
    head_spec_of,
    make_head_layers,
)

logger = chief_logger(__name__)
CHECKPOINT_DIR = "checkpoints"
# Files of a run named <stem> (after the stem), see the module docstring.
RUN_FILE_ENDINGS = (r"(\.keras|_epoch\d+\.keras|_hist\.json|_centers\.npy|_options\.json"
                    r"|_basic_model_latest\.(h5|keras)|_basic_.+_epoch_.+\.h5)")
MAX_NAMED_FILES = 8  # run files named in a RunExistsError
UNREADABLE_CHECKPOINT_ERRORS = (ValueError, OSError, KeyError, EOFError, zipfile.BadZipFile)
ACCEPT_HINT = (
    "Resume with the checkpoint's options, or accept them (command line: --accept_checkpoint_options; Python: "
    "resume(..., accept_checkpoint_options=True)): training then continues from the checkpoint's model and "
    "optimizer state, whose architecture, sizes and optimizer win over the values above (the schedule's losses are "
    "the command's). Or start a new run (another save name, or --overwrite)."
)
REBUILD_HINT = (
    "The dataset has another number of classes than the checkpoint's output head. Resume on the checkpoint's "
    "dataset, or ask for a new, untrained head for these classes (command line: --rebuild_head; Python: "
    "resume(..., rebuild_head=True))."
)
MODEL_HELP = """Train needs a model. basic_model / model combinations:
| basic_model                      | model              | use                                          |
| model object                     | None               | train from scratch                           |
| basic model file (.h5 / .keras)  | None               | continue from a saved basic model (new head) |
| None or embedding layer index    | model file         | resume from a saved training model           |
| None or embedding layer index    | model object       | continue from a modified model (head kept)   |
| None                             | None               | reload checkpoints/<save_path stem>.keras    |"""


# ----------------------------------------------------------------------------------------------------------------
# Models, optimizer and compiled state


def basic_model_of(model, index=None):
    """The embedding sub-model (input → embedding layer output) of a training model: the layer at `index`, else
    the last layer named `embedding` (`GhostFaceNets.embedding_model`)."""
    return GhostFaceNets.embedding_model(model, index if isinstance(index, int) else None)


def load_model_file(path, custom_objects=None, compile=True):
    """Load a `.keras` / `.h5` model file with the registered losses and heads plus `custom_objects`."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    with keras.saving.custom_object_scope(custom_objects or {}):
        if path.endswith(".keras"):
            return keras.saving.load_model(path, compile=compile)
        return GhostFaceNets.load_model(path, compile=compile)


def optimizer_for(optimizer, model):
    """An optimizer ready for `model`: a string or object as given, unless it was already built for other
    variables (a rebuilt head, a frozen backbone): then a copy of its configuration built for the model's
    trainable variables, carrying over the iteration count, the learning rate and the slots (momentum...) of
    every variable it already had (a Keras 3 optimizer cannot add variables once built). A plain Keras SGD, Adam
    or AdamW gets the fused per-variable update of `fused_ops` (same object, same formulas)."""
    optimizer = fused_ops.use_fused_update(keras.optimizers.get(optimizer))
    if not optimizer.built:
        return optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if keras_compat.optimizer_tracks(inner, model.trainable_variables):
        return optimizer
    logger.info(">>>> The model's trainable variables changed: the optimizer is rebuilt for them, keeping its state")
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
            atomic_io.save_npy_atomic(path, keras.ops.convert_to_numpy(loss.centers))


def resolve_models(basic_model, model, compile, reload_path, load):
    """`(basic_model, model or None, inited_from_model)` of `Train`'s basic_model / model combination (see
    MODEL_HELP); with neither, the training model file `reload_path` is loaded. `load(path, compile=...)` loads a
    model file."""
    if basic_model is None and model is None:
        model = reload_path
        logger.info(">>>> Try reload from: %s", model)
        if not os.path.exists(model):
            raise FileNotFoundError(f"{model} does not exist, and no basic_model or model is given\n{MODEL_HELP}")
    if isinstance(model, (str, os.PathLike)):
        model = load(os.fspath(model), compile=compile)
        return basic_model_of(model, basic_model), model, False
    if isinstance(model, keras.Model):
        return basic_model_of(model, basic_model), model, True
    if isinstance(basic_model, (str, os.PathLike)):
        return load(os.fspath(basic_model), compile=False), None, False
    if isinstance(basic_model, keras.Model):
        return basic_model, None, False
    raise ValueError(f"basic_model {basic_model!r} / model {model!r} cannot be used\n{MODEL_HELP}")


def model_shapes(basic_model):
    """`(embedding size, (height, width))` of a basic model; an input of unknown size reads (112, 112) images."""
    image_shape = tuple(basic_model.input_shape[1:3])
    return int(basic_model.output_shape[-1]), (112, 112) if None in image_shape else image_shape


def compiled_main_loss(model):
    """The main (last) loss compiled into `model`, for a stage without `loss`; ValueError when there is none."""
    if model is None or not getattr(model, "loss", None):
        raise ValueError("the first scheduler stage needs a 'loss'")
    return losses.flatten_losses(model.loss)[-1]


def vpl_start_iterations(vpl_start_iters, steps_per_epoch):
    """The VPL start in iterations: `vpl_start_iters` values below 50 are epochs."""
    return vpl_start_iters * steps_per_epoch if 0 < vpl_start_iters < 50 else vpl_start_iters


def output_metrics(model, metrics):
    """`metrics` for every output of `model` that is not an embedding (by output name), None when there is none."""
    names = [name for name in model.output_names if "embedding" not in name]
    if len(model.outputs) == 1:
        return list(metrics) if names else None
    return {name: list(metrics) for name in names} or None


def build_compiled_state(model, dataset):
    """Create, before `fit`, the variables Keras would otherwise create inside the first traced train step: the
    optimizer's slots (momentum, ...) and the state of the compiled losses and metrics, from the shapes of
    `dataset.element_spec`. Values and training results are the same either way.

    Built lazily, they make TensorFlow trace the train step twice (a function whose first trace creates variables
    is traced again without them) and lift every slot variable out of the graph one by one: for a GhostFaceNet on
    a CPU that is most of the time to the first step. This runs Keras' own pre-build (`keras_compat.symbolic_build`,
    what `fit` runs under a distribution strategy), here for every model.
    """
    with model.distribute_strategy.scope():
        keras_compat.symbolic_build(model, dataset.element_spec)


def multi_worker_fit_workarounds(model):
    """Context for one `model.fit(dataset)`: under a multi-worker strategy `keras_compat.multi_worker_fit_patches`
    (Keras 3.15 fails twice there: keras-team/keras#20585, tensorflow/tensorflow#72388; `build_compiled_state`
    builds the model before), elsewhere nothing."""
    return keras_compat.multi_worker_fit_patches(model) if is_multi_worker() else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------------
# Run setup: names, folders, evaluation, data


def run_names(save_path):
    """`(stem, basic-model suffix)` of `save_path`: `X.h5` → (`X`, `.h5`); a suffix other than `.h5` / `.keras`
    gives `.h5`."""
    stem, suffix = os.path.splitext(os.path.basename(save_path))
    return stem, suffix if suffix in (".h5", ".keras") else ".h5"


def output_folder(checkpoint_dir, stem):
    """`(temporary folder or None, folder this process writes into)`: `checkpoint_dir` on the chief worker. The
    other workers of a multi-worker run must save too (saving reads variables collectively), into a folder of
    their own that nobody reads."""
    if is_chief_worker():
        return None, checkpoint_dir
    worker_dir = tempfile.TemporaryDirectory(prefix=f"{stem}_worker_")
    return worker_dir, worker_dir.name


def eval_callbacks(basic_model, eval_paths, batch_size, eval_freq, stem, output_dir):
    """One `evals.eval_callback` per `.bin` on the chief worker (none on the others); the last one saves the best
    basic model as `<output_dir>/<stem>_basic_<bin>_epoch_<step>_<accuracy>.h5`."""
    if not is_chief_worker():
        return []
    paths = list(eval_paths)
    return [
        evals.eval_callback(basic_model, path, batch_size=batch_size, eval_freq=eval_freq, flip=True,
                            save_model=stem if index == len(paths) - 1 else None, checkpoint_dir=output_dir)
        for index, path in enumerate(paths)
    ]


def restore_best_accuracies(history, eval_callbacks, epochs):
    """Give each eval callback the best accuracy of the first `epochs` epochs recorded in `history` (a
    `My_history.history`), so that a run continued from epoch `epochs` replaces the best basic model only by a
    better one."""
    lr_entries = len(history.get("lr", []))
    for callback in eval_callbacks:
        values = history.get(callback.test_names, [])
        first_epoch = lr_entries - len(values)  # a shorter key covers the latest epochs
        recorded = values[: max(epochs - first_epoch, 0)]
        callback.max_accuracy = max((value for value in recorded if value is not None), default=0.0)


def epoch_checkpoints(folder, stem):
    """`[(epoch, path), ...]` of the `<stem>_epoch{NN}.keras` files in `folder`, newest first."""
    pattern = re.compile(re.escape(stem) + r"_epoch(\d+)\.keras")
    found = [
        (int(match.group(1)), path)
        for path in glob.glob(os.path.join(glob.escape(folder), glob.escape(stem) + "_epoch*.keras"))
        if (match := pattern.fullmatch(os.path.basename(path)))
    ]
    return sorted(found, reverse=True)


def last_epoch_checkpoint(folder, stem):
    """`(epoch, path)` of the newest `<stem>_epoch{NN}.keras` in `folder`, `(0, None)` when there is none."""
    found = epoch_checkpoints(folder, stem)
    return found[0] if found else (0, None)


def load_newest_checkpoint(checkpoints, load):
    """`(epoch, path, model)` of the newest of `checkpoints` (`epoch_checkpoints`) that `load(path, compile=True)`
    can read: a truncated or corrupt one is skipped with a warning naming it and the previous epoch's checkpoint
    tried instead. Raises the newest checkpoint's error when none can be read."""
    first_error = None
    for index, (epoch, path) in enumerate(checkpoints):
        try:
            return epoch, path, load(path, compile=True)
        except UNREADABLE_CHECKPOINT_ERRORS as error:
            first_error = first_error or error
            previous = checkpoints[index + 1][1] if index + 1 < len(checkpoints) else None
            logger.warning(">>>> %s cannot be loaded (%s); %s", path, error,
                           f"falling back to the previous epoch's checkpoint {previous}" if previous
                           else "no earlier epoch checkpoint is left")
    raise first_error


def remove_stale_temp_files(folder):
    """Remove the temporary files a killed run left in `folder` (`atomic_io.remove_stale_temp_files`), logged."""
    for path in atomic_io.remove_stale_temp_files(folder):
        logger.info(">>>> Removed %s, a temporary file of a run that was killed while writing", path)


# ----------------------------------------------------------------------------------------------------------------
# Runs own their names; resuming checks the checkpoint


class RunExistsError(FileExistsError):
    """A new run was started under the name of a run whose files are in the checkpoint folder."""


class CheckpointMismatchError(ValueError):
    """`Train.resume` found a checkpoint that differs from the run (options, input or embedding size, optimizer,
    class count); `rows` are the `(option, checkpoint value, run value)` differences."""

    def __init__(self, message, rows):
        super().__init__(message)
        self.rows = rows


def run_files(folder, stem):
    """Sorted paths of the files of the run named `stem` in `folder` (`RUN_FILE_ENDINGS`: `<stem>.keras`,
    `<stem>_epoch{NN}.keras`, `_hist.json`, `_centers.npy`, `_options.json`, the saved basic models)."""
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(stem) + RUN_FILE_ENDINGS)
    return sorted(os.path.join(folder, name) for name in os.listdir(folder) if pattern.fullmatch(name))


def existing_run_error(folder, stem, files):
    """The `RunExistsError` of a new run named `stem` over `files` (`run_files`) in `folder`, with the ways out."""
    names = ", ".join(os.path.basename(path) for path in files[:MAX_NAMED_FILES])
    names += ", ..." if len(files) > MAX_NAMED_FILES else ""
    return RunExistsError(
        f"{folder} already holds the files of a run named {stem!r}: {names}. A new run does not write over them. "
        "Continue that run (command line: --resume; Python: Train(...).resume(schedule), or Train(model=<epoch "
        "checkpoint>) and train(..., initial_epoch=N)), replace it (command line: --overwrite; Python: "
        "Train(..., overwrite=True)), or choose another save name or checkpoint folder."
    )


def check_new_run_name(folder, stem):
    """Raise `RunExistsError` when `folder` holds files of a run named `stem` (before a new run starts)."""
    files = run_files(folder, stem)
    if files:
        raise existing_run_error(folder, stem, files)


def read_run_options(path):
    """The options dict recorded in a run's `<stem>_options.json`, {} when there is none."""
    if not os.path.exists(path):
        return {}
    try:
        with open(path) as file:
            options = json.load(file)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a valid run options file ({error})") from error
    if not isinstance(options, dict):
        raise ValueError(f"{path}: a run options file must hold a JSON object")
    return options


def option_differences(recorded, options):
    """Rows `(option, recorded value, value now)` of the keys of `options` whose value differs from `recorded`'s
    (keys `recorded` lacks are not compared)."""
    return [(key, recorded[key], value) for key, value in options.items() if key in recorded and recorded[key] != value]


def optimizer_name(optimizer):
    """Lower-case class name of an optimizer (string or object; the inner one of a LossScaleOptimizer)."""
    optimizer = keras.optimizers.get(optimizer)
    return type(getattr(optimizer, "inner_optimizer", optimizer)).__name__.lower()


def size_text(image_shape):
    """`32` for a (32, 32) input, `32x48` for (32, 48)."""
    height, width = image_shape
    return height if height == width else f"{height}x{width}"


def model_differences(checkpoint_model, basic_model, optimizer):
    """Rows `(option, checkpoint value, run value)` where a loaded training model differs from the run's
    `basic_model` (`input_size`, `emb_shape`) and from `optimizer` (the one the schedule trains with at the epoch
    resumed; None: not compared)."""
    checkpoint_emb, checkpoint_image = model_shapes(basic_model_of(checkpoint_model))
    emb, image = model_shapes(basic_model)
    rows = [("input_size", size_text(checkpoint_image), size_text(image)), ("emb_shape", checkpoint_emb, emb)]
    if optimizer is not None and getattr(checkpoint_model, "optimizer", None) is not None:
        rows.append(("optimizer", optimizer_name(checkpoint_model.optimizer), optimizer_name(optimizer)))
    return [row for row in rows if row[1] != row[2]]


def merged_differences(*tables):
    """The rows of the difference `tables` in order, one per option (the first table naming it wins)."""
    rows = {}
    for table in tables:
        for row in table:
            rows.setdefault(row[0], row)
    return list(rows.values())


def difference_table(rows):
    """A Markdown table of difference `rows` `(option, checkpoint value, command value)`."""
    return "\n".join(["| option | checkpoint | command |", "|---|---|---|",
                      *(f"| {option} | {old} | {new} |" for option, old, new in rows)])


def checkpoint_mismatch(path, rows, remedy):
    """A `CheckpointMismatchError` for checkpoint `path` with a table of the difference `rows` and the `remedy`."""
    return CheckpointMismatchError(f"{path} differs from this run:\n{difference_table(rows)}\n{remedy}", rows)


def build_dataset(data_path, triplet, options, partial_fc_split, seed, initial_epoch):
    """`(dataset, steps_per_epoch)` of a stage: class-grouped triplet batches (`data.Triplet_dataset`) when
    `triplet`, else `data.prepare_dataset` starting at `initial_epoch`; `options` are the dataset options of `Train`
    with `batch_size` and `img_shape`. Sharded by data under a `tf.distribute` strategy."""
    if triplet:
        options = {key: value for key, value in options.items() if key != "mixup_alpha"}
        dataset, steps = data.Triplet_dataset(data_path, **options, seed=seed)
    else:
        dataset, steps = data.prepare_dataset(data_path, **options, partial_fc_split=partial_fc_split, seed=seed,
                                              initial_epoch=initial_epoch)
    if dataset is None:
        raise ValueError(f"{data_path}: no training images")
    if tf.distribute.has_strategy():
        sharding = tf.data.Options()
        sharding.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        dataset = dataset.with_options(sharding)
    return dataset, steps


def label_layout(dataset):
    """`(is_distill, teacher_emb_size or None, classes)` of a training dataset: its targets are one-hot labels, or
    `(teacher embeddings, labels)` for distillation."""
    label_spec = dataset.element_spec[1]
    is_distill = isinstance(label_spec, tuple)
    labels = label_spec[1] if is_distill else label_spec
    return is_distill, int(label_spec[0].shape[-1]) if is_distill else None, int(labels.shape[-1])


def arranged_dataset(dataset, is_distill, output_kinds):
    """`dataset` with one target per model output: teacher embeddings for `distill`, labels otherwise."""

    def arrange(images, targets):
        embeddings, labels = targets if is_distill else (None, targets)
        arranged = tuple(embeddings if kind == "distill" else labels for kind in output_kinds)
        return images, arranged if len(arranged) > 1 else arranged[0]

    return dataset.map(arrange, num_parallel_calls=tf.data.AUTOTUNE)


def warn_if_onednn_missed():
    """Log a warning when TensorFlow was imported before this library with oneDNN left off."""
    if runtime_setup.onednn_missed():
        logger.warning(
            ">>>> TensorFlow was imported before this library with oneDNN left off: CPU training runs ~1.4x slower;"
            " import train first or set TF_ENABLE_ONEDNN_OPTS=1 (see runtime_setup.py)"
        )


# ----------------------------------------------------------------------------------------------------------------
# Train

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
            model's kernel L2 (see `training_heads.head_regularizer`).
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
    step of GhostFaceNets is several times slower), `steps_per_execution`, `verbose`, and:
        overwrite: a run owns its save name: a new run (the first `train` from epoch 0 of a basic model) raises
            `RunExistsError` before training when `checkpoint_dir` holds files of a run with the same stem
            (`run_files`), unless `overwrite=True`, which removes them first. Continuing a run needs neither:
            `resume()`, a `model` file (or the `<stem>.keras` reload), or `train(..., initial_epoch=N > 0)`.
        run_options: a dict of JSON values that define the run (the command line's architecture and optimizer
            options): written to `<stem>_options.json` when a new run starts and compared with that file by
            `resume()`.
        sample_rate: Partial FC v2 (`partial_fc`): margin-loss stages train a `NormDense(sample_rate=...)` head
            with `partial_fc.PartialFCModel`: each step uses the batch's classes plus a uniform sample of the others,
            `sample_rate` of all classes, drawn from `seed` and the step count, and updates only those centres and
            their optimizer state. Optimizer SGD / Adam / AdamW; no XLA (`jit_compile` is not used); no VPL.
        model_parallel: with `sample_rate`, shard the class centres over the replicas of the `tf.distribute`
            strategy (`partial_fc_sharded.ShardedPartialFCModel`; ArcFace / CosFace / AirFace, one output).
    At construction, temporary files a killed run left in `checkpoint_dir` are removed.
    `tt.custom_callbacks` takes extra callbacks; `tt.my_history`, `tt.model_checkpoint` and `tt.lr_scheduler` come
    from `myCallbacks.standard_callbacks`, `tt.my_evals` are the eval callbacks.
    """

    def __init__(self, data_path, save_path, eval_paths=(), basic_model=None, model=None, compile=True,
                 output_weight_decay=0, custom_objects=None, pretrained=None, batch_size=128, lr_base=0.001,
                 lr_decay=0.05, lr_decay_steps=0, lr_min=1e-5, lr_warmup_steps=0, eval_freq=1, random_status=0,
                 random_cutout_mask_area=0, image_per_class=0, mixup_alpha=0, partial_fc_split=0,
                 teacher_model_interf=None, vpl_start_iters=-1, vpl_allowed_delta=200, checkpoint_dir=CHECKPOINT_DIR,
                 cache_dir=None, seed=None, jit_compile="auto", steps_per_execution=1, verbose="auto", overwrite=False,
                 run_options=None, sample_rate=None, model_parallel=False):
        self.data_path, self.save_path, self.checkpoint_dir = os.fspath(data_path), save_path, os.fspath(checkpoint_dir)
        self.stem, self.basic_suffix = run_names(save_path)
        self.custom_objects = dict(custom_objects or {})
        self.batch_size, self.global_batch_size = batch_size, global_batch_size(batch_size)
        self.output_weight_decay, self.pretrained = output_weight_decay, pretrained
        self.partial_fc_split, self.seed, self.sample_rate = partial_fc_split, seed, sample_rate
        self.model_parallel = model_parallel
        self.dataset_options = dict(random_status=random_status, random_cutout_mask_area=random_cutout_mask_area,
                                    image_per_class=image_per_class, mixup_alpha=mixup_alpha,
                                    teacher_model_interf=teacher_model_interf, cache_dir=cache_dir)
        self.vpl_start_iters, self.vpl_allowed_delta = vpl_start_iters, vpl_allowed_delta
        self.jit_compile, self.steps_per_execution, self.verbose = jit_compile, steps_per_execution, verbose
        self.metrics, self.default_optimizer, self.custom_callbacks = ["accuracy"], "adam", []
        warn_if_onednn_missed()
        os.makedirs(self.checkpoint_dir, exist_ok=True)
        remove_stale_temp_files(self.checkpoint_dir)
        self.basic_model, self.model, self.inited_from_model = resolve_models(
            basic_model, model, compile, os.path.join(self.checkpoint_dir, self.stem + ".keras"), self.load
        )
        self.overwrite, self.run_options, self.run_claimed = overwrite, run_options, False
        self.continues_saved_run = self.model is not None and not self.inited_from_model
        self.checkpoint_head = None  # (checkpoint path, classes) of a resumed head, checked against the dataset
        self.head_spec = head_spec_of(self.model) if self.model is not None else None
        self.given_model_output = self.model.outputs[-1] if self.inited_from_model else None
        self.emb_shape, self.img_shape = model_shapes(self.basic_model)
        self.worker_dir, self.output_dir = output_folder(self.checkpoint_dir, self.stem)
        if self.model is not None and not self.inited_from_model:
            write_centers_of(self.model, self.output_path("_centers.npy"))
        self.my_evals = eval_callbacks(self.basic_model, eval_paths, batch_size, eval_freq, self.stem, self.output_dir)
        scheduler = myCallbacks.scheduler_from_options(lr_base, lr_decay, lr_min, lr_decay_steps, lr_warmup_steps)
        self.my_history, self.model_checkpoint, self.lr_scheduler = myCallbacks.standard_callbacks(
            self.output_dir, self.stem, ".keras", self.my_evals, scheduler, verbose=int(verbose != 0)
        )
        self.train_ds, self.steps_per_epoch, self.classes, self.dataset_key = None, None, 0, None
        self.is_distill_ds, self.teacher_emb_size, self.nan_guard = False, None, None

    def claim_run(self, continuing):
        """Make the save name this run's, once, before its first training. A run that continues a saved one
        (`continuing`, or a model loaded from a file) goes on; a new run raises `RunExistsError` when
        `checkpoint_dir` holds files of a run with its stem, unless `overwrite` (they are removed, the history
        starts empty), and writes `run_options` to `<stem>_options.json`. Only the chief worker checks and writes
        (the others write into a folder of their own)."""
        if self.run_claimed or continuing or self.continues_saved_run or not is_chief_worker():
            self.run_claimed = True
            return
        files = run_files(self.checkpoint_dir, self.stem)
        if files and not self.overwrite:
            raise existing_run_error(self.checkpoint_dir, self.stem, files)
        self.run_claimed = True
        if files:
            logger.info(">>>> overwrite: removing the files of the earlier run %s: %s", self.stem, files)
            for path in files:
                os.remove(path)
            self.my_history.history = {}
        if self.run_options is not None:
            atomic_io.write_json_atomic(self.output_path("_options.json"), self.run_options)

    def output_path(self, suffix):
        """`<checkpoint_dir>/<stem><suffix>`, where this process writes (a private folder on non-chief workers)."""
        return os.path.join(self.output_dir, self.stem + suffix)

    def load(self, path, compile=True):
        """Load a model file with the registered losses / heads plus `custom_objects`."""
        return load_model_file(path, self.custom_objects, compile)

    def build_model(self, loss_type, loss, loss_top_k, emb_kinds, optimizer_slots=()):
        """(Re)build the training model: outputs `<kind>_embedding` for each attached embedding loss, then the
        main output: the head the stage needs (rebuilt when its `HeadSpec` changes, with matching weights copied),
        the embedding itself for an embedding loss, or, for a model given as an object (`inited_from_model`),
        that model's own last output."""
        outputs = [embedding_output(self.basic_model, kind, self.teacher_emb_size) for kind in emb_kinds]
        if self.inited_from_model:
            outputs.append(self.given_model_output)
        elif loss_type in schedule.HEAD_KINDS:
            outputs.append(self.head_output(self.stage_head_spec(loss_type, loss, loss_top_k, optimizer_slots)))
        else:
            self.head_spec = None
            outputs.append(embedding_output(self.basic_model, loss_type, self.teacher_emb_size))
        model_class = self.training_model_class()
        self.model = model_class(self.basic_model.inputs[0], outputs, name=self.basic_model.name + "_train")

    def training_model_class(self):
        """The model class of the current head: Partial FC heads train with their own train step."""
        if self.head_spec is None or self.head_spec.sample_rate is None or self.inited_from_model:
            return keras.Model
        return ShardedPartialFCModel if self.head_spec.is_model_parallel else PartialFCModel

    def stage_head_spec(self, loss_type, loss, loss_top_k, optimizer_slots=()):
        """The `HeadSpec` of a stage whose main output is `loss_type` ("softmax" / "arcface") with `loss`
        (`optimizer_slots`: the slot names of the stage's optimizer, for a model-parallel head)."""
        append_norm = isinstance(loss, schedule.NORM_APPENDING_LOSSES)
        vpl_batch_size = self.batch_size if self.vpl_start_iters > 0 and loss_type == "arcface" else 0
        return HeadSpec.for_stage(loss_type, self.classes, loss_top_k, append_norm, self.partial_fc_split,
                                  vpl_batch_size, self.sample_rate, self.seed or 0,
                                  tuple(optimizer_slots) if self.model_parallel else None)

    def head_output(self, spec):
        """The output of head `spec` on the embedding, reusing the current head when it has the same spec."""
        old_layers = head_layers_of(self.model) if self.model is not None else []
        if spec == self.head_spec and old_layers:
            return apply_layers(old_layers, self.basic_model.outputs[0])
        vpl_options = {"start_iters": vpl_start_iterations(self.vpl_start_iters, self.steps_per_epoch),
                       "allowed_delta": self.vpl_allowed_delta}
        layers = make_head_layers(spec, head_regularizer(self.output_weight_decay, self.basic_model), vpl_options)
        logger.info(">>>> Output head: %s, %d classes, top-K %d", spec.kind, spec.classes, spec.loss_top_k)
        output = apply_layers(layers, self.basic_model.outputs[0])
        copy_matching_weights(old_layers, layers)
        self.head_spec = spec
        return output

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
        self.train_ds, self.steps_per_epoch = build_dataset(self.data_path, triplet, options, self.partial_fc_split,
                                                            self.seed, initial_epoch)
        self.is_distill_ds, self.teacher_emb_size, self.classes = label_layout(self.train_ds)
        self.dataset_key = key

    def train(self, train_schedule, initial_epoch=0):
        """Run the scheduler stages in order from epoch `initial_epoch`; each trains its `epoch` epochs (a
        `bottleneckOnly` stage trains from epoch 0 and does not advance the count). Returns the final epoch.

        Stage keys: see `schedule` (the original's, and the aliases `centerloss` / `triplet` / `distill: weight`
        and `alpha`); every stage is parsed before the first one runs. The caller's dicts are not changed.
        """
        stages = schedule.parse_schedule(train_schedule)
        self.claim_run(initial_epoch > 0)
        restore_best_accuracies(self.my_history.history, self.my_evals, initial_epoch)
        for stage in stages:
            self.run_stage(stage, initial_epoch)
            initial_epoch += 0 if stage.bottleneck_only else stage.epoch
            if self.model is None or self.model.stop_training:
                logger.info(">>>> Training stopped early")
                break
        return initial_epoch

    def resume(self, train_schedule, accept_checkpoint_options=False, rebuild_head=False):
        """Continue a run of `train_schedule` that was interrupted: load the newest `_epoch{NN}.keras` checkpoint
        (model, optimizer state; a truncated or corrupt one falls back to the previous epoch's, with a warning),
        skip the stages it completed, shorten the current one, and train the rest. The learning-rate schedule and
        `_hist.json` continue from epoch NN. Returns the final epoch.

        Args:
            train_schedule: the run's whole schedule, as when it started.
            accept_checkpoint_options: continue when the checkpoint differs from this run (`run_options` recorded
                in `<stem>_options.json`, the basic model's input or embedding size, the schedule's optimizer at
                epoch NN), with the checkpoint's model and optimizer; otherwise `CheckpointMismatchError` with a
                table of the differences, before any training.
            rebuild_head: when the dataset has another class count than the checkpoint's head, build a new head
                for it; otherwise `CheckpointMismatchError`.
        """
        self.run_claimed = True
        checkpoints = epoch_checkpoints(self.checkpoint_dir, self.stem)
        if not checkpoints:
            logger.info(">>>> No epoch checkpoint found; starting from epoch 0")
            return self.train(train_schedule, 0)
        completed, path, model = load_newest_checkpoint(checkpoints, self.load)
        logger.info(">>>> Resuming from %s (epoch %d completed)", path, completed)
        rows = merged_differences(
            option_differences(read_run_options(self.output_path("_options.json")), self.run_options or {}),
            model_differences(model, self.basic_model, schedule.optimizer_in_effect(train_schedule, completed)),
        )
        if rows and not accept_checkpoint_options:
            raise checkpoint_mismatch(path, rows, ACCEPT_HINT)
        if rows:
            logger.warning(">>>> %s differs from this run; continuing with the checkpoint's model and optimizer:\n%s",
                           path, difference_table(rows))
        self.adopt_checkpoint(path, model, rebuild_head)
        remaining = remaining_stages(train_schedule, completed)
        if not remaining:
            logger.warning(">>>> %s completed the schedule's %d epochs: nothing left to train", path, completed)
        return self.train(remaining, completed)

    def adopt_checkpoint(self, path, model, rebuild_head):
        """Continue from the training model `model` loaded from `path`: its basic model, head, shapes and CenterLoss
        centres become the run's; its head's class count is checked against the dataset unless `rebuild_head`."""
        self.model = model
        write_centers_of(self.model, self.output_path("_centers.npy"))
        self.basic_model = basic_model_of(self.model)
        self.head_spec, self.inited_from_model = head_spec_of(self.model), False
        self.emb_shape, self.img_shape = model_shapes(self.basic_model)
        self.reset_dataset()
        keep_head = self.head_spec is not None and not rebuild_head
        self.checkpoint_head = (path, self.head_spec.classes) if keep_head else None
        for callback in self.my_evals:
            callback.basic_model = self.basic_model

    def check_checkpoint_classes(self):
        """Once after `resume`: `CheckpointMismatchError` when the dataset's class count differs from the
        checkpoint's head (unless `resume` was asked to rebuild the head)."""
        checkpoint_head, self.checkpoint_head = self.checkpoint_head, None
        if checkpoint_head is not None and checkpoint_head[1] != self.classes:
            raise checkpoint_mismatch(checkpoint_head[0], [("classes", checkpoint_head[1], self.classes)],
                                      REBUILD_HINT)

    def last_checkpoint(self):
        """`(epoch, path)` of the newest complete `_epoch{NN}.keras` checkpoint, `(0, None)` when there is none."""
        return last_epoch_checkpoint(self.checkpoint_dir, self.stem)

    def train_single_scheduler(self, epoch, loss=None, initial_epoch=0, lossWeight=1, optimizer=None,
                               bottleneckOnly=False, lossTopK=1, type=None, embLossTypes=None, embLossWeights=1,
                               tripletAlpha=0.35):
        """Train one stage of `epoch` epochs from `initial_epoch` (the keys of a scheduler dict, see `schedule`)."""
        self.claim_run(initial_epoch > 0)
        stage = schedule.parse_stage({
            "epoch": epoch, "loss": loss, "lossWeight": lossWeight, "optimizer": optimizer,
            "bottleneckOnly": bottleneckOnly, "lossTopK": lossTopK, "type": type, "embLossTypes": embLossTypes,
            "embLossWeights": embLossWeights, "tripletAlpha": tripletAlpha,
        })
        self.run_stage(stage, initial_epoch)

    def run_stage(self, stage, initial_epoch):
        """Train one parsed `schedule.Stage` from `initial_epoch` (from 0 for a bottleneck-only stage): resolve its
        losses, build and compile the model, fit."""
        start = 0 if stage.bottleneck_only else initial_epoch
        stage_losses = self.resolve_losses(stage, start)
        self.build_and_compile(stage, stage_losses)
        self.fit_stage(stage, stage_losses, start)

    def resolve_losses(self, stage, start_epoch):
        """The stage's `schedule.StageLosses`, after building the dataset they need (triplet batches or not)."""
        main_loss = stage.loss if stage.loss is not None else compiled_main_loss(self.model)
        self.init_dataset(schedule.needs_triplet_batches(stage, main_loss), start_epoch)
        self.check_checkpoint_classes()
        return schedule.resolve_losses(stage, main_loss, self.is_distill_ds, self.classes, self.emb_shape,
                                       self.output_path("_centers.npy"))

    def build_and_compile(self, stage, stage_losses):
        """Build the stage's training model (loading `pretrained` weights once), freeze the basic model for a
        bottleneck-only stage, and compile with the stage's optimizer (or the compiled one, or Adam)."""
        compiled_optimizer = getattr(self.model, "optimizer", None) if self.model is not None else None
        optimizer = keras.optimizers.get(stage.optimizer or compiled_optimizer or self.default_optimizer)
        slots = optimizer_slot_names(optimizer) if self.model_parallel else ()
        self.build_model(stage_losses.main_kind, stage_losses.main, stage.loss_top_k, stage_losses.attached_kinds,
                         slots)
        if self.pretrained and not self.inited_from_model:
            self.model.load_weights(self.pretrained)
            self.pretrained = None
        self.basic_model.trainable = not stage.bottleneck_only
        self.model.compile(
            optimizer=optimizer_for(optimizer, self.model),
            **stage_losses.compile_arguments(),
            metrics=None if isinstance(self.model, ShardedPartialFCModel) else output_metrics(self.model, self.metrics),
            jit_compile=False if isinstance(self.model, PartialFCModel) else self.jit_compile,
            steps_per_execution=self.steps_per_execution,
        )

    def fit_stage(self, stage, stage_losses, start):
        """Fit the compiled model for the stage's epochs from epoch `start`; then save the basic model, unless the
        stage was bottleneck-only or a NaN loss stopped it (which also stops the later stages)."""
        dataset = arranged_dataset(self.train_ds, self.is_distill_ds, stage_losses.output_kinds)
        build_compiled_state(self.model, dataset)
        callbacks = self.stage_callbacks(stage.bottleneck_only, stage_losses)
        with multi_worker_fit_workarounds(self.model):
            self.model.fit(dataset, epochs=start + stage.epoch, initial_epoch=start,
                           steps_per_epoch=self.steps_per_epoch, callbacks=callbacks, verbose=self.verbose)
        self.basic_model.trainable = True
        if self.nan_guard.nan_detected:
            logger.warning(">>>> NaN loss: training stopped; the last good checkpoint is %s",
                           self.output_path(".keras"))
            self.model.stop_training = True
        elif not stage.bottleneck_only:
            atomic_io.save_model_atomic(self.basic_model, self.output_path("_basic_model_latest" + self.basic_suffix))

    def stage_callbacks(self, bottleneck_only, stage_losses):
        """Callbacks of a stage: evals, the user's, loss running values, history, checkpoint (not for a
        bottleneck-only stage), LR schedule, center-loss saving, a new NaN guard and the VPL queue update."""
        callbacks = [] if bottleneck_only else list(self.my_evals)
        callbacks += [*self.custom_callbacks, losses.LossRunningValuesLogger()]
        callbacks += [] if bottleneck_only else [self.my_history, self.model_checkpoint]
        if self.lr_scheduler is not None:
            if hasattr(self.lr_scheduler, "build"):
                self.lr_scheduler.build(self.steps_per_epoch)
            callbacks.append(self.lr_scheduler)
        callbacks += [loss.save_centers_callback for _, loss, _ in stage_losses.attached
                      if hasattr(loss, "save_centers_callback")]
        self.nan_guard = myCallbacks.ExitOnNaN()
        callbacks.append(self.nan_guard)
        if isinstance(self.model.layers[-1], NormDenseVPL):
            stage_losses.main.build(self.batch_size)
            callbacks.append(VPLUpdateQueue(self.model.layers[-1], stage_losses.main))
        return callbacks


# ----------------------------------------------------------------------------------------------------------------
# Command line

DEMO_DIR = os.path.join("datasets", "demo")
# Options that define a run's model and optimizer: recorded in <stem>_options.json, checked by --resume.
RUN_OPTION_NAMES = ("model", "width", "strides", "emb_shape", "input_size", "weight_decay", "output_weight_decay",
                    "loss", "optimizer")
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
    parser.add_argument("-d", "--data_path", help="class-per-folder dataset, image-list .npz, or a TFRecord file / "
                        "quoted shard pattern such as 'faces-*-of-00008.tfrecord' (default: the demo data)")
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
    parser.add_argument("--lr_warmup_steps", type=int, default=1, help="warm-up epochs: the LR rises linearly from "
                        "lr_min to lr_base (without it, one demo seed in five collapsed mid-training)")
    parser.add_argument("--random_status", type=int, default=0, help="augmentation level (-1 .. 3, >= 100)")
    parser.add_argument("--sample_rate", type=float, help="Partial FC v2: fraction of the classes each step samples "
                        "for the margin-loss head, in (0, 1] (default: the full head)")
    parser.add_argument("--mixed_precision", action="store_true", help="mixed_float16 (GPUs)")
    parser.add_argument("--tensorboard", metavar="DIR", help="also write TensorBoard logs into DIR")
    add_continuation_arguments(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (weights and data order)")
    return parser.parse_args(argv)


def add_continuation_arguments(parser):
    """The options of `parser` that say what happens to an earlier run of the same name: `--resume` (with
    `--accept_checkpoint_options`, `--rebuild_head`) or `--overwrite`."""
    continuation = parser.add_mutually_exclusive_group()
    continuation.add_argument("--resume", action="store_true", help="continue the run of --save_path from its last "
                              "epoch checkpoint (a truncated one falls back to the epoch before)")
    continuation.add_argument("--overwrite", action="store_true", help="replace an earlier run of --save_path in "
                              "--checkpoint_dir (its files are removed); without it a new run refuses to start there")
    parser.add_argument("--accept_checkpoint_options", action="store_true", help="with --resume: continue even when "
                        f"the checkpoint was trained with other {', '.join(RUN_OPTION_NAMES)}, with the checkpoint's "
                        "model and optimizer (without it --resume stops with a table of the differences)")
    parser.add_argument("--rebuild_head", action="store_true", help="with --resume: build a new output head when the "
                        "data has another number of classes than the checkpoint (without it: an error)")


def demo_data():
    """The demo training folder and evaluation bin, generated by `synthetic_faces.build_demo` when missing."""
    train_dir, bin_path = os.path.join(DEMO_DIR, "train"), os.path.join(DEMO_DIR, "val.bin")
    if not (os.path.isdir(train_dir) and os.path.isfile(bin_path)):
        from synthetic_faces import build_demo

        logger.info(">>>> Generating the synthetic demo data into %s", DEMO_DIR)
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
    """10-fold verification accuracy of `basic_model` on each bin, {bin name: accuracy}; NaN for a bin whose
    embeddings are not finite (a model that a NaN loss broke)."""
    table = evals.evaluate_bin_files(basic_model, bin_paths, batch_size=128)
    return table.reindex(columns=["accuracy_mean"])["accuracy_mean"].to_dict()  # NaN where not computed


def training_failure(tt, after, eval_paths):
    """Why the run of `tt` failed, or None: a NaN loss stopped it, or the verification accuracy `after` ({bin name:
    accuracy}) is missing or not finite for one of `eval_paths`."""
    if tt.nan_guard is not None and tt.nan_guard.nan_detected:
        return f"a NaN loss stopped training; the last good checkpoint is {tt.output_path('.keras')}"
    not_computed = [name for name, value in after.items() if not math.isfinite(value)]
    if len(after) < len(eval_paths) or not_computed:
        return f"the verification accuracy was not computed for {not_computed or list(eval_paths)}"
    return None


def run(args):
    """Train with the parsed command-line options; returns `(before, after, failure)`: the verification accuracies
    ({bin name: accuracy}) of the untrained and the trained model, and `training_failure`'s reason or None."""
    if not (args.resume or args.overwrite):
        check_new_run_name(args.checkpoint_dir, run_names(args.save_path)[0])
    runtime_setup.seed_everything(args.seed)  # op determinism on machines with a GPU
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
        overwrite=args.overwrite, run_options={name: getattr(args, name) for name in RUN_OPTION_NAMES},
        sample_rate=args.sample_rate,
    )
    if args.tensorboard:
        tt.custom_callbacks.append(keras.callbacks.TensorBoard(args.tensorboard))
    stages = build_schedule(args)
    if args.resume:
        tt.resume(stages, accept_checkpoint_options=args.accept_checkpoint_options, rebuild_head=args.rebuild_head)
    else:
        tt.train(stages)
    after = verification_accuracy(tt.basic_model, eval_paths) if eval_paths else {}
    return before, after, training_failure(tt, after, eval_paths)


def print_results(before, after, failure):
    """Print the verification accuracy of every bin before and after training, and the failure if there is one."""
    for name in after:
        print(f">>>> {name}: verification accuracy {before[name]:.4f} untrained -> {after[name]:.4f} trained")
    if failure:
        print(f">>>> Training failed: {failure}")


def run_and_print(argv=None):
    """Parse `argv`, log to the terminal, train (`run`) and print the results; returns `run`'s triple."""
    show_library_logs()
    before, after, failure = run(parse_arguments(argv))
    print_results(before, after, failure)
    return before, after, failure


def main(argv=None):
    """CLI entry: train with the options and print the verification accuracy before and after; returns them as
    `(before, after)`, {bin name: accuracy} each."""
    before, after, _ = run_and_print(argv)
    return before, after


def command_line(argv=None):
    """`python train.py`: `main`, returning the exit status: 0 when training succeeded, 1 when it failed (a NaN
    loss stopped it, or the verification accuracy was not computed), 2 when it did not start (a run of that name
    exists, or `--resume` found a checkpoint that differs from the options; the message says what to do)."""
    try:
        return 1 if run_and_print(argv)[2] else 0
    except (RunExistsError, CheckpointMismatchError) as error:
        print(f">>>> Not started: {error}")
        return 2


if __name__ == "__main__":
    sys.exit(command_line())
