"""Training callbacks and learning-rate schedulers of the original toolkit, on Keras 3.

Learning-rate schedulers (all expose `lr_at(epoch, batch=0)`, a pure function of the position, and
`is_on_batch`, whether they change the LR inside an epoch):

- `exp_scheduler` / `ExpScheduler`: `lr_base * exp(-decay_rate * (epoch - warmup))`, floored at `lr_min`.
- `constant_scheduler` / `ConstantDecayScheduler`: step decay by `decay_rate` at each epoch of `lr_decay_steps`.
- `CosineLrScheduler` (per batch) and `CosineLrSchedulerEpoch` (per epoch): cosine decay with warm restarts,
  linear warm-up and `cooldown_steps` epochs at `lr_min` after each period.
- `scheduler_from_options`: the `lr_decay_steps` dispatch table of the READMEs (used by `Train`).

Other callbacks: `My_history` (the `<stem>_hist.json` file), `ModelCheckpoint` (atomic per-epoch and latest
model files, never written after a NaN), `ExitOnNaN`, `OptimizerWeightDecay` (tfa SGDW/AdamW recipes on Keras 3
optimizers), `Gently_stop_callback`, and `VPLUpdateQueue` (the original's name here for `heads.VPLUpdateQueue`).
`standard_callbacks` builds the history / checkpoint / scheduler set of a run (for `basic_callbacks` and
`train.Train`). Files are written through `atomic_io`.

Messages go to this module's logger (on the chief worker only under `tf.distribute`): `ExitOnNaN`'s warning, and
at INFO level what `verbose` asks for. `My_history.print_hist` and the `Gently_stop_callback` prompt write to the
terminal.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import json
import math
import os
import select
import sys
from functools import partial

import keras
import numpy as np
import tensorflow as tf

import atomic_io
import losses
from distributed import chief_logger
from heads import VPLUpdateQueue  # the original's name in this module

logger = chief_logger(__name__)

__all__ = [
    "ConstantDecayScheduler",
    "CosineLrScheduler",
    "CosineLrSchedulerEpoch",
    "CosineRestartSchedule",
    "ExitOnNaN",
    "ExpScheduler",
    "Gently_stop_callback",
    "ModelCheckpoint",
    "My_history",
    "OptimizerWeightDecay",
    "VPLUpdateQueue",
    "basic_callbacks",
    "constant_scheduler",
    "exp_scheduler",
    "keras3_weight_decay",
    "scheduler_from_options",
    "standard_callbacks",
]

BATCH_LEVEL_COSINE_FROM = 500  # README rule: lr_decay_steps >= 500 counts batches, below it epochs


# ----------------------------------------------------------------------------------------------------------------
# Pure schedules
# ----------------------------------------------------------------------------------------------------------------
def exp_scheduler(epoch, lr_base=0.001, decay_rate=0.05, lr_min=0, warmup_steps=0):
    """Exponential decay LR at a 0-based `epoch` (float).

    Warm-up (epoch < warmup_steps): linear `lr_min + (lr_base - lr_min) * epoch / warmup_steps`. Afterwards
    `lr_base * exp(decay_rate * (warmup_steps - epoch))` (so `exp(-k t)`, not `rate ** t`), floored at `lr_min`.
    """
    if epoch < warmup_steps:
        lr = lr_min + (lr_base - lr_min) * epoch / warmup_steps
    else:
        lr = lr_base * math.exp(decay_rate * (warmup_steps - epoch))
    return float(max(lr, lr_min))


def constant_scheduler(epoch, lr_base, lr_decay_steps, decay_rate=0.1, warmup_steps=0):
    """Step-decay LR at a 0-based `epoch` (float): `lr_base * decay_rate ** (number of boundaries <= epoch)`.

    During warm-up (epoch < warmup_steps) it rises linearly from `lr_base * decay_rate ** len(lr_decay_steps)`
    (the final LR) to `lr_base`.
    """
    if epoch < warmup_steps:
        lr_start = lr_base * decay_rate ** len(lr_decay_steps)
        return float(lr_start + (lr_base - lr_start) * epoch / warmup_steps)
    passed = int(np.sum(epoch >= np.asarray(lr_decay_steps)))
    return float(lr_base * decay_rate**passed)


def cosine_decay(position, decay_steps, alpha):
    """Keras 2 `CosineDecay` factor: `(1 - alpha) * 0.5 * (1 + cos(pi * min(position, decay_steps) / decay_steps))
    + alpha`, a multiplier of the base LR."""
    fraction = min(position, decay_steps) / decay_steps
    return (1 - alpha) * 0.5 * (1 + math.cos(math.pi * fraction)) + alpha


def cosine_restarts(position, first_period, t_mul, m_mul, alpha):
    """Keras 2 `CosineDecayRestarts` factor at `position`: period i lasts `first_period * t_mul**i` and peaks at
    `m_mul**i`; each period decays to `alpha`. The restart index is found by walking the periods (exact at the
    boundaries, unlike the logarithm formula)."""
    restart, start, length = 0, 0.0, float(first_period)
    while position >= start + length:
        start, length, restart = start + length, length * t_mul, restart + 1
    fraction = (position - start) / length
    return (1 - alpha) * 0.5 * m_mul**restart * (1 + math.cos(math.pi * fraction)) + alpha


class CosineRestartSchedule:
    """Cosine with restarts, warm-up and cool-down as a pure function of a position (§8.2 of the inventory).

    All lengths are in one unit, the unit of the position (epochs for the epoch-level scheduler, batches for the
    batch-level one):

    - position < `warmup`: linear from `lr_warmup` (`lr_min` when `lr_warmup <= 0`) to `lr_base`;
    - cool-down i (i = 1, 2, ...) covers `[start_i, start_i + cooldown)` with
      `start_i = warmup + floor(sum(first_period * t_mul**k for k < i) + cooldown * (i - 1))`, at `lr_min`;
    - otherwise `lr_base * cosine_restarts(position - warmup - cooldown * passed_cooldowns)` with
      `alpha = lr_min / lr_base`, so every period ends at `lr_min`;
    - when `lr_min == lr_base * m_mul` (relative tolerance 1e-9): a single cosine decay over `first_period` from
      `lr_base` to `lr_min`, no restarts and no cool-down (after the warm-up).

    Unlike the original, the cool-downs continue past the fourth restart (the original held `lr_min` forever
    there), and the no-restart case also starts after the warm-up in the epoch-level variant.
    """

    def __init__(self, lr_base, first_period, m_mul=0.5, t_mul=2.0, lr_min=1e-5, lr_warmup=-1, warmup=0,
                 cooldown=1):
        if lr_base <= 0 or first_period <= 0:
            raise ValueError(f"lr_base and first_restart_step must be > 0, got {lr_base} and {first_period}")
        if t_mul < 1:
            raise ValueError(f"t_mul must be >= 1 (periods that never shrink), got {t_mul}")
        if warmup < 0 or cooldown < 0:
            raise ValueError(f"warmup_steps and cooldown_steps must be >= 0, got {warmup} and {cooldown}")
        self.lr_base, self.first_period, self.m_mul, self.t_mul = lr_base, first_period, m_mul, t_mul
        self.lr_min, self.warmup, self.cooldown = lr_min, warmup, cooldown
        self.lr_warmup = lr_warmup if lr_warmup > 0 else lr_min
        self.alpha = lr_min / lr_base
        self.restarts = not math.isclose(lr_min, lr_base * m_mul, rel_tol=1e-9)

    def cooldown_start(self, index):
        """Position where cool-down `index` (1-based) begins."""
        periods = sum(self.first_period * self.t_mul**kk for kk in range(index))
        return self.warmup + math.floor(periods + self.cooldown * (index - 1))

    def cooldown_state(self, position):
        """(number of cool-downs fully passed before `position`, whether `position` is inside one)."""
        passed = 0
        while True:
            start = self.cooldown_start(passed + 1)
            if position < start:
                return passed, False
            if position < start + self.cooldown:
                return passed, True
            passed += 1

    def __call__(self, position):
        """The learning rate (float) at `position`."""
        if position < self.warmup:
            return float(self.lr_warmup + (self.lr_base - self.lr_warmup) * position / self.warmup)
        if not self.restarts:
            return float(self.lr_base * cosine_decay(position - self.warmup, self.first_period, self.alpha))
        passed, in_cooldown = self.cooldown_state(position)
        if in_cooldown:
            return float(self.lr_min)
        shifted = position - self.warmup - self.cooldown * passed
        return float(self.lr_base * cosine_restarts(shifted, self.first_period, self.t_mul, self.m_mul, self.alpha))


# ----------------------------------------------------------------------------------------------------------------
# Scheduler callbacks
# ----------------------------------------------------------------------------------------------------------------
def set_learning_rate(optimizer, lr):
    """Assign `lr` to the optimizer's learning-rate variable (through a LossScaleOptimizer too)."""
    try:
        optimizer.learning_rate = float(lr)
    except TypeError as error:
        raise TypeError(
            "the LR schedulers of myCallbacks set the optimizer's learning rate every epoch/batch; create the "
            "optimizer with a float learning_rate, not a LearningRateSchedule"
        ) from error


def current_learning_rate(optimizer):
    """The optimizer's current learning rate as a Python float."""
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class EpochLrScheduler(keras.callbacks.Callback):
    """Set the optimizer LR to `schedule(epoch)` at each epoch begin; base of the epoch-level schedulers.

    `lr_at(epoch, batch=0)` returns `schedule(epoch)` (the batch is ignored). `on_epoch_begin(epoch)` also works
    without a model and returns the LR, as in the original READMEs' plotting examples. `verbose=1` logs the LR
    of each epoch (INFO).
    """

    is_on_batch = False

    def __init__(self, schedule, verbose=0):
        super().__init__()
        self.schedule, self.verbose = schedule, verbose

    def lr_at(self, epoch, batch=0):
        """Learning rate (float) used during 0-based `epoch`."""
        return float(self.schedule(epoch))

    def on_epoch_begin(self, epoch, logs=None):
        lr = self.lr_at(epoch)
        if self.model is not None:
            set_learning_rate(self.model.optimizer, lr)
        if self.verbose:
            logger.info("Learning rate for iter %d is %s", epoch + 1, lr)
        return lr


class ExpScheduler(EpochLrScheduler):
    """Epoch-level exponential decay, `exp_scheduler(epoch, lr_base, decay_rate, lr_min, warmup_steps)`."""

    def __init__(self, lr_base=0.001, decay_rate=0.05, lr_min=0, warmup_steps=0, verbose=0):
        super().__init__(partial(exp_scheduler, lr_base=lr_base, decay_rate=decay_rate, lr_min=lr_min,
                                 warmup_steps=warmup_steps), verbose=verbose)


class ConstantDecayScheduler(EpochLrScheduler):
    """Epoch-level step decay, `constant_scheduler(epoch, lr_base, lr_decay_steps, decay_rate, warmup_steps)`."""

    def __init__(self, lr_base, lr_decay_steps, decay_rate=0.1, warmup_steps=0, verbose=0):
        super().__init__(partial(constant_scheduler, lr_base=lr_base, lr_decay_steps=list(lr_decay_steps),
                                 decay_rate=decay_rate, warmup_steps=warmup_steps), verbose=verbose)


class CosineLrSchedulerEpoch(EpochLrScheduler):
    """Epoch-level cosine decay with restarts (`CosineRestartSchedule` in epochs); one LR per epoch.

    Example: `CosineLrSchedulerEpoch(lr_base=1e-3, first_restart_step=16, warmup_steps=3)`; restarts and
    cool-downs fall on the same epochs as `CosineLrScheduler` with the same arguments.
    """

    def __init__(self, lr_base, first_restart_step, m_mul=0.5, t_mul=2.0, lr_min=1e-6, lr_warmup=-1,
                 warmup_steps=0, cooldown_steps=1, verbose=0):
        self.cosine = CosineRestartSchedule(lr_base, first_restart_step, m_mul, t_mul, lr_min, lr_warmup,
                                            warmup_steps, cooldown_steps)
        super().__init__(self.cosine, verbose=verbose)


class CosineLrScheduler(keras.callbacks.Callback):
    """Batch-level cosine decay with restarts: the LR is set before every training batch.

    Lengths are in epochs, as in the original: `first_restart_step` (the first period), `warmup_steps`,
    `cooldown_steps`. `build(steps_per_epoch)` turns them into batches (and may be called again with another
    value, e.g. when the dataset changes; everything is recomputed). The position of batch `b` of epoch `e` is
    `steps_per_epoch * e + b`, with the epoch taken from `on_epoch_begin(epoch)`, so a run resumed with
    `fit(initial_epoch=N)` continues the schedule exactly. At batch 0 of every epoch the LR equals
    `CosineLrSchedulerEpoch`'s when the lengths are whole epochs.

    `first_restart_unit="batches"` reads `first_restart_step` as a number of batches instead (the README's
    `lr_decay_steps >= 500` rule); warm-up and cool-down stay in epochs. When `steps_per_epoch` is -1 at the first
    epoch, Keras' `params["steps"]` is used.
    """

    is_on_batch = True

    def __init__(self, lr_base, first_restart_step, steps_per_epoch=-1, m_mul=0.5, t_mul=2.0, lr_min=1e-5,
                 lr_warmup=-1, warmup_steps=0, cooldown_steps=1, first_restart_unit="epochs", verbose=0):
        super().__init__()
        if first_restart_unit not in ("epochs", "batches"):
            raise ValueError(f"first_restart_unit must be 'epochs' or 'batches', got {first_restart_unit!r}")
        CosineRestartSchedule(lr_base, first_restart_step, m_mul, t_mul, lr_min, lr_warmup, warmup_steps,
                              cooldown_steps)  # raises now on invalid lengths, not at the first epoch
        self.lr_base, self.first_restart_step, self.m_mul, self.t_mul = lr_base, first_restart_step, m_mul, t_mul
        self.lr_min, self.lr_warmup = lr_min, lr_warmup
        self.warmup_steps, self.cooldown_steps = warmup_steps, cooldown_steps
        self.first_restart_unit, self.verbose = first_restart_unit, verbose
        self.steps_per_epoch, self.cur_epoch, self.schedule = -1, 0, None
        if steps_per_epoch != -1:
            self.build(steps_per_epoch)

    @property
    def is_built(self):
        """Whether `build(steps_per_epoch)` has run."""
        return self.schedule is not None

    def build(self, steps_per_epoch=-1):
        """(Re)compute the schedule in batches for `steps_per_epoch` batches per epoch.

        -1 or None keep the current value; while none is known the scheduler stays unbuilt and is built at the
        first epoch from Keras' `params["steps"]`.
        """
        unknown = steps_per_epoch in (-1, None)
        if not unknown:
            if steps_per_epoch <= 0:
                raise ValueError(f"CosineLrScheduler needs steps_per_epoch > 0, got {steps_per_epoch}")
            self.steps_per_epoch = int(steps_per_epoch)
        if self.steps_per_epoch <= 0:
            return
        spe = self.steps_per_epoch
        in_batches = self.first_restart_unit == "batches"
        first_period = self.first_restart_step if in_batches else self.first_restart_step * spe
        self.schedule = CosineRestartSchedule(self.lr_base, first_period, self.m_mul, self.t_mul, self.lr_min,
                                              self.lr_warmup, self.warmup_steps * spe, self.cooldown_steps * spe)

    def lr_at(self, epoch, batch=0):
        """Learning rate (float) of batch `batch` in 0-based `epoch`."""
        if not self.is_built:
            raise ValueError("CosineLrScheduler: call build(steps_per_epoch) before lr_at")
        return self.schedule(self.steps_per_epoch * epoch + batch)

    def on_epoch_begin(self, epoch, logs=None):
        if not self.is_built:
            self.build((self.params or {}).get("steps"))
        if not self.is_built:
            raise ValueError("CosineLrScheduler: the number of steps per epoch is unknown; call "
                             "build(steps_per_epoch) or pass steps_per_epoch to fit")
        self.cur_epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        lr = self.lr_at(self.cur_epoch, batch)
        if self.model is not None:
            set_learning_rate(self.model.optimizer, lr)
        if self.verbose and batch == 0:
            logger.info("Learning rate for iter %d is %s", self.cur_epoch + 1, lr)
        return lr


def scheduler_from_options(lr_base, lr_decay, lr_min, lr_decay_steps, lr_warmup_steps):
    """The LR scheduler `Train` builds from its options (the READMEs' `lr_decay_steps` table).

    | lr_decay_steps  | scheduler                                                                      |
    |-----------------|--------------------------------------------------------------------------------|
    | list / tuple    | `ConstantDecayScheduler(lr_base, lr_decay_steps, decay_rate=lr_decay)`         |
    | > 1 and < 500   | `CosineLrScheduler(first_restart_step=lr_decay_steps epochs, m_mul=lr_decay)`  |
    | >= 500          | the same, `first_restart_step=lr_decay_steps` batches                          |
    | <= 1            | `ExpScheduler(lr_base, decay_rate=lr_decay, lr_min)`                           |

    Both cosine rows use `lr_min=lr_min, lr_warmup=lr_min, warmup_steps=lr_warmup_steps` and update the LR every
    batch (GhostFaceNets README: "will multiply with steps_per_epoch"). The 500 threshold is the one the
    Keras_insightface README documents ("> 1, < 500 ... on epoch", ">= 500 ... on batch"); the original code
    ignored it. `lr_warmup_steps` is in epochs in every row.
    """
    if isinstance(lr_decay_steps, list | tuple):
        return ConstantDecayScheduler(lr_base, lr_decay_steps, decay_rate=lr_decay, warmup_steps=lr_warmup_steps)
    if lr_decay_steps > 1:
        unit = "batches" if lr_decay_steps >= BATCH_LEVEL_COSINE_FROM else "epochs"
        return CosineLrScheduler(lr_base, first_restart_step=lr_decay_steps, m_mul=lr_decay, lr_min=lr_min,
                                 lr_warmup=lr_min, warmup_steps=lr_warmup_steps, first_restart_unit=unit)
    return ExpScheduler(lr_base, decay_rate=lr_decay, lr_min=lr_min, warmup_steps=lr_warmup_steps)


# ----------------------------------------------------------------------------------------------------------------
# Weight decay
# ----------------------------------------------------------------------------------------------------------------
def keras3_weight_decay(wd_base, lr_base):
    """Keras 3 `weight_decay` equal to a tfa `SGDW`/`AdamW` `weight_decay=wd_base` recipe at `lr_base`.

    Keras 3 decays every step by `learning_rate * weight_decay * w`; tfa decayed by `wd * w`, and the original
    `OptimizerWeightDecay` kept `wd = wd_base * lr / lr_base`. Both are equal for `weight_decay = wd_base / lr_base`
    at every LR. Example: `SGDW(learning_rate=0.1, weight_decay=5e-4)` → `SGD(0.1, weight_decay=5e-3)`.
    """
    return wd_base / lr_base


class OptimizerWeightDecay(keras.callbacks.Callback):
    """Give a Keras 3 optimizer the decoupled weight decay of the original's tfa SGDW/AdamW + callback recipe.

    The original set `weight_decay = (wd_base / lr_base) * current_lr` at each epoch (or batch) begin, so the
    per-step decay was `wd_base * lr / lr_base * w`. Keras 3 already multiplies its `weight_decay` by the current
    LR, so the same decay is `weight_decay = wd_base / lr_base`, constant (`keras3_weight_decay`); it is set at
    `on_train_begin`, before the train step is traced, and follows every scheduler automatically, batch-level ones
    included (`is_lr_on_batch` is accepted for compatibility and changes nothing). Keras reads the value when it
    traces the train step, so a change takes effect at the next `compile` + `fit`, not in an already traced run.
    `verbose=1` logs the value (INFO).
    """

    def __init__(self, lr_base, wd_base, is_lr_on_batch=False, verbose=0):
        super().__init__()
        self.lr_base, self.wd_base, self.is_lr_on_batch, self.verbose = lr_base, wd_base, is_lr_on_batch, verbose
        self.weight_decay = keras3_weight_decay(wd_base, lr_base)

    def on_train_begin(self, logs=None):
        optimizer = getattr(self.model.optimizer, "inner_optimizer", self.model.optimizer)
        optimizer.weight_decay = self.weight_decay
        if self.verbose:
            logger.info("Weight decay is %s x learning rate (tfa-style %s at lr %s)", self.weight_decay, self.wd_base,
                        self.lr_base)


# ----------------------------------------------------------------------------------------------------------------
# History
# ----------------------------------------------------------------------------------------------------------------
def read_history_file(path):
    """The dict of lists stored in a `_hist.json` file; a clear error names the file when it is not one."""
    try:
        with open(path) as ff:
            history = json.load(ff)
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not a valid JSON history file ({error})") from error
    if not isinstance(history, dict) or not all(isinstance(vv, list) for vv in history.values()):
        raise ValueError(f"{path}: a _hist.json file must be a JSON object of lists, one entry per epoch")
    return history


def finite_or_none(value):
    """`float(value)`, or None (JSON null) when it is None, NaN or infinite."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def skipped_evaluation(eval_callback, embeddings_at_epoch_begin):
    """Whether `eval_callback` skipped this epoch's evaluation (non-finite embeddings, e.g. after a NaN loss): an
    `evals.eval_callback` replaces its `embs` at every evaluation it completes, so `embs` still being
    `embeddings_at_epoch_begin` means its `cur_acc` is an older value. Objects without `embs` count as evaluated."""
    return hasattr(eval_callback, "embs") and eval_callback.embs is embeddings_at_epoch_begin


def rename_accuracy_keys(keys):
    """Map log keys to history keys: the single training key containing "accuracy" becomes `accuracy` (and the
    single `val_` one `val_accuracy`); with several, each keeps its own name (the original merged them)."""
    mapping = {key: key for key in keys}
    for prefix in ("", "val_"):
        group = [kk for kk in keys if "accuracy" in kk and kk.startswith("val_") == (prefix == "val_")]
        if len(group) == 1:
            mapping[group[0]] = prefix + "accuracy"
    return mapping


class My_history(keras.callbacks.Callback):  # noqa: N801 (the original's public name)
    """Collect per-epoch training values into `self.history` and the `initial_file` JSON (`<stem>_hist.json`).

    Keys, one entry per epoch (keys that start in a later stage are shorter, as in the original):
    `lr` (optimizer LR at epoch end); `loss` (Keras total loss minus `regular_loss`); `accuracy` (the single log
    key containing "accuracy"; several keep their names, e.g. `arcface_accuracy`); every other log key as it is
    (`arcface_loss`, `triplet_embedding_loss`, ...; Keras' `learning_rate` is dropped, `lr` holds it); for each
    eval callback `<bin stem>` = `cur_acc` and `<bin stem>_thresh` = `acc_thresh`; each `custom_obj` entry
    (name → callable, its mean); `regular_loss` = `sum(model.losses)` (the weight regularisers; `add_loss` values
    left over from a traced step are skipped) when the model has any; and the losses'
    running values (`losses.LossRunningValuesLogger` keys) unless already in the logs. NaN/inf are written as null,
    and so is an evaluation the eval callback skipped (`skipped_evaluation`), both accuracy and threshold.

    The file is reloaded at construction when it exists and rewritten atomically at every epoch end. At
    `on_epoch_begin(epoch)` entries recorded for epochs >= `epoch` are dropped (when `truncate_on_resume`), so a
    run resumed with `initial_epoch=N` neither loses nor duplicates entries; a key shorter than `lr` is taken to
    cover the latest epochs. Set `truncate_on_resume = False` for stages that restart counting at epoch 0
    (`bottleneckOnly`).
    """

    def __init__(self, initial_file=None, evals=[], custom_obj=None, truncate_on_resume=True):  # noqa: B006
        super().__init__()
        self.initial_file, self.evals = initial_file, list(evals)
        self.custom_obj = dict(custom_obj or {})
        self.truncate_on_resume = truncate_on_resume
        exists = initial_file and os.path.exists(initial_file)
        self.history = read_history_file(initial_file) if exists else {}
        self.embeddings_at_epoch_begin = {id(ee): getattr(ee, "embs", None) for ee in self.evals}

    def append(self, key, value):
        """Add one epoch's `value` to `history[key]`."""
        self.history.setdefault(key, []).append(finite_or_none(value))

    def truncate(self, epoch):
        """Drop the entries recorded for 0-based epochs >= `epoch` (counted from the `lr` list)."""
        drop = len(self.history.get("lr", [])) - epoch
        if drop <= 0:
            return
        for key in list(self.history):
            values = self.history[key]
            del values[max(len(values) - drop, 0):]
            if not values:
                del self.history[key]

    def on_epoch_begin(self, epoch, logs=None):
        if self.truncate_on_resume:
            self.truncate(epoch)
        self.embeddings_at_epoch_begin = {id(ee): getattr(ee, "embs", None) for ee in self.evals}

    def running_values(self):
        """Running values of the model's losses (`LossRunningValuesLogger` keys → float)."""
        values_logger = losses.LossRunningValuesLogger()
        values_logger.set_model(self.model)
        return values_logger.current_values()

    def on_epoch_end(self, epoch, logs=None):
        logs = {kk: vv for kk, vv in (logs or {}).items() if kk not in ("lr", "learning_rate")}
        logs = dict(sorted(logs.items(), key=lambda item: item[0] != "loss"))  # `loss` first, as the original
        self.append("lr", current_learning_rate(self.model.optimizer))
        for key, history_key in rename_accuracy_keys(list(logs)).items():
            self.append(history_key, keras.ops.convert_to_numpy(logs[key]))
        for ee in self.evals:
            skipped = skipped_evaluation(ee, self.embeddings_at_epoch_begin.get(id(ee)))
            self.append(ee.test_names, None if skipped else ee.cur_acc)
            self.append(ee.test_names + "_thresh", None if skipped else ee.acc_thresh)
        for key, fn in self.custom_obj.items():
            self.append(key, np.mean(keras.ops.convert_to_numpy(fn())))
        eager_losses = [loss for loss in self.model.losses if not tf.is_symbolic_tensor(loss)]
        if eager_losses:
            regular_loss = float(sum(float(keras.ops.convert_to_numpy(loss)) for loss in eager_losses))
            self.append("regular_loss", regular_loss)
            if "loss" in logs and self.history["loss"][-1] is not None:
                self.history["loss"][-1] -= regular_loss
        for key, value in self.running_values().items():
            if key not in logs:
                self.append(key, value)
        if self.initial_file:
            atomic_io.write_json_atomic(self.initial_file, self.history)

    def print_hist(self):
        """Print the history as `{ 'key': [values], ... }`, one key a line."""
        print("{")
        for key, values in self.history.items():
            print(f"  '{key}': {values},")
        print("}")


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints and stopping
# ----------------------------------------------------------------------------------------------------------------
def is_finite_loss(logs):
    """Whether `logs["loss"]` is absent or a finite number."""
    loss = (logs or {}).get("loss")
    return loss is None or bool(np.all(np.isfinite(keras.ops.convert_to_numpy(loss))))


class ModelCheckpoint(keras.callbacks.Callback):
    """Save the model at every epoch end to `filepath.format(epoch=epoch + 1, **logs)` and to `latest_path`.

    E.g. `ModelCheckpoint("checkpoints/X_epoch{epoch:02d}.keras", latest_path="checkpoints/X.keras")` writes
    `checkpoints/X_epoch01.keras`, ... and overwrites `checkpoints/X.keras`; each file is written atomically
    (`atomic_io.save_model_atomic`). `filepath` is a `str.format` pattern: braces meant literally are doubled
    (`literal_format_text`); `latest_path` is a plain path. An epoch whose loss is not finite, or in which any
    batch loss was not finite, saves nothing, so the last good files stay. `verbose=1` logs one line per saved file
    (INFO) and a warning for an epoch not saved.
    """

    def __init__(self, filepath, latest_path=None, save_weights_only=False, verbose=1):
        super().__init__()
        atomic_io.model_file_suffix(filepath)
        if latest_path is not None:
            atomic_io.model_file_suffix(latest_path)
        self.filepath, self.latest_path = os.fspath(filepath), latest_path and os.fspath(latest_path)
        self.save_weights_only, self.verbose = save_weights_only, verbose
        self.nan_detected = False

    def on_epoch_begin(self, epoch, logs=None):
        self.nan_detected = False

    def on_train_batch_end(self, batch, logs=None):
        if not is_finite_loss(logs):
            self.nan_detected = True

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        if self.nan_detected or not is_finite_loss(logs):
            if self.verbose:
                logger.warning("Epoch %d: loss is not finite, no checkpoint saved (the previous one is kept)",
                               epoch + 1)
            return
        paths = [self.filepath.format(epoch=epoch + 1, **logs)]
        if self.latest_path:
            paths.append(self.latest_path)
        atomic_io.save_model_atomic(self.model, paths[0], self.save_weights_only)
        for path in paths[1:]:
            atomic_io.copy_file_atomic(paths[0], path)
        if self.verbose:
            logger.info("Epoch %d: saving model to %s", epoch + 1, " and ".join(paths))


class ExitOnNaN(keras.callbacks.Callback):
    """Stop training at the first batch whose loss is NaN or infinite (logs one warning, sets `nan_detected`).

    The process keeps running (the original called `sys.exit()`), so callers can react; `ModelCheckpoint` saves
    nothing for that epoch.
    """

    def __init__(self):
        super().__init__()
        self.nan_detected, self.cur_epoch = False, 0

    def on_epoch_begin(self, epoch, logs=None):
        self.cur_epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if not is_finite_loss(logs):
            logger.warning("ExitOnNaN: loss is %s at epoch %d, batch %d; stopping training", logs["loss"],
                           self.cur_epoch + 1, batch)
            self.nan_detected = True
            self.model.stop_training = True


class Gently_stop_callback(keras.callbacks.Callback):  # noqa: N801 (the original's public name)
    """At each epoch end, ask `prompt` on the terminal and wait `time_out` seconds; an answer containing "n"
    stops training after this epoch. Does nothing when stdin is not a terminal (POSIX `select`)."""

    def __init__(self, prompt="Continue? ([Y]/n)", time_out=3):
        super().__init__()
        self.prompt, self.time_out = prompt, time_out

    def read_answer(self):
        """The line typed within `time_out` seconds, "" when none or when stdin is not a terminal."""
        if not sys.stdin.isatty():
            return ""
        sys.stdout.write(f"{self.prompt}: ")  # an interactive prompt on the terminal, not a log message
        sys.stdout.flush()
        ready, _, _ = select.select([sys.stdin], [], [], self.time_out)
        sys.stdout.write("\n")
        return sys.stdin.readline().strip() if ready else ""

    def on_epoch_end(self, epoch, logs=None):
        if "n" in self.read_answer().lower():
            self.model.stop_training = True


# ----------------------------------------------------------------------------------------------------------------
# Default set
# ----------------------------------------------------------------------------------------------------------------
def literal_format_text(text):
    """`text` as literal text of a `str.format` pattern (braces doubled): a folder or run name such as `ckpt{1}`
    or `run{loss}` is then written as it is, not filled in."""
    return text.replace("{", "{{").replace("}", "}}")


def split_model_name(checkpoint):
    """(stem, ending) of a checkpoint name: `X.keras` → (`X`, `.keras`); no known ending → `.keras`."""
    name = os.path.basename(os.fspath(checkpoint))
    suffix = atomic_io.file_suffix(name)
    if suffix in atomic_io.MODEL_SUFFIXES:
        return name[: -len(suffix)], suffix
    return name, ".keras"


def standard_callbacks(folder, stem, suffix=".keras", evals=(), lr_scheduler=None, verbose=1):
    """`[My_history, ModelCheckpoint, lr_scheduler]` of a run named `stem` writing into `folder` (created).

    Args:
        folder: where the files go.
        stem: the run's name: history `<stem>_hist.json`, per-epoch models `<stem>_epoch01<suffix>`, ... (1-based)
            and the latest model `<stem><suffix>`.
        suffix: `.keras` (full model with optimizer state), `.h5` or `.weights.h5`.
        evals: eval callbacks whose accuracies the history records.
        lr_scheduler: the learning-rate scheduler callback returned last (None: none).
        verbose: `ModelCheckpoint`'s verbosity.
    """
    os.makedirs(folder, exist_ok=True)
    my_history = My_history(os.path.join(folder, stem + "_hist.json"), evals=evals)
    epoch_pattern = literal_format_text(os.path.join(folder, stem)) + "_epoch{epoch:02d}" + suffix
    model_checkpoint = ModelCheckpoint(epoch_pattern, latest_path=os.path.join(folder, stem + suffix),
                                       verbose=verbose)
    return [my_history, model_checkpoint, lr_scheduler]


def basic_callbacks(checkpoint="keras_checkpoints.keras", evals=[], lr=0.001, lr_decay=0.05, lr_min=0,  # noqa: B006
                    lr_decay_steps=0, lr_warmup_steps=0, checkpoint_dir="checkpoints"):
    """`[My_history, ModelCheckpoint, lr_scheduler]` for a training run named by `checkpoint`.

    For `checkpoint="X.keras"` (stem `X`) in `checkpoint_dir` (created): history `X_hist.json`, per-epoch models
    `X_epoch01.keras`, `X_epoch02.keras`, ... (1-based) and the latest model `X.keras`; `.h5` / `.weights.h5`
    names keep their format (`standard_callbacks`). The scheduler is `scheduler_from_options(lr, lr_decay, lr_min,
    lr_decay_steps, lr_warmup_steps)`. Nothing interactive is included (add `Gently_stop_callback()` yourself).
    """
    stem, suffix = split_model_name(checkpoint)
    lr_scheduler = scheduler_from_options(lr, lr_decay, lr_min, lr_decay_steps, lr_warmup_steps)
    return standard_callbacks(checkpoint_dir, stem, suffix, evals, lr_scheduler)
