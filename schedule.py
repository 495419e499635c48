"""Scheduler stages of `train.Train`: the original's stage dicts (camelCase keys) parsed once into a typed `Stage`,
the one table that maps a loss to its kind, and the losses a stage trains with (`resolve_losses`).

A stage dict, as in the original Keras_insightface / GhostFaceNets READMEs:
`{"loss": losses.ArcfaceLoss(scale=64), "epoch": 50, "optimizer": sgd, "lossWeight": 1, "bottleneckOnly": False,
"lossTopK": 1, "type": None, "embLossTypes": [...], "embLossWeights": 1, "tripletAlpha": 0.35}` plus the
aliases `centerloss: weight`, `triplet: weight`, `distill: weight` (attach that embedding loss) and `alpha`
(the triplet margin). Any other key is a `TypeError`.
"""

import dataclasses

import losses

MARGIN_LOSSES = (losses.ArcfaceLoss, losses.ArcfaceLossSimple, losses.AdaCosLoss, losses.DistillKLDivergenceLoss)
NORM_APPENDING_LOSSES = (losses.MagFaceLoss, losses.AdaFaceLoss)
# The loss → kind table, in the original's order of checks: (kind, loss base classes, name fragment). A loss is of
# the first kind whose classes it derives from or whose fragment its (class or function) name contains.
LOSS_KINDS = (
    ("triplet", (losses.TripletLossWapper,), "triplet"),
    ("center", (losses.CenterLoss,), "center"),
    ("arcface", MARGIN_LOSSES, "arcface"),
    ("distill", (), "distill"),
    ("softmax", (), "softmax"),
)
EMBEDDING_KINDS = ("distill", "triplet", "center")  # kinds that train the embedding itself, in output order
HEAD_KINDS = ("softmax", "arcface")
ALIAS_KEYS = {"centerloss": "center", "triplet": "triplet", "distill": "distill"}  # stage key → embedding kind
STAGE_KEYS = {  # the original's stage keys → `Stage` fields
    "epoch": "epoch",
    "loss": "loss",
    "lossWeight": "loss_weight",
    "optimizer": "optimizer",
    "bottleneckOnly": "bottleneck_only",
    "lossTopK": "loss_top_k",
    "type": "loss_type",
    "tripletAlpha": "triplet_alpha",
    "alpha": "triplet_alpha",
}


def loss_name(loss):
    """The lower-case name of a loss given as a string, class, object or function."""
    if isinstance(loss, str):
        return loss.lower()
    loss_class = loss if isinstance(loss, type) else type(loss)
    return getattr(loss, "__name__", loss_class.__name__).lower()


def loss_type_of(loss):
    """The training kind a main loss calls for: "softmax", "arcface", "triplet", "center" or "distill".

    A string (a Keras loss name) is softmax; otherwise the first `LOSS_KINDS` row the loss matches; else softmax.
    """
    if isinstance(loss, str):
        return "softmax"
    loss_class = loss if isinstance(loss, type) else type(loss)
    name = loss_name(loss)
    for kind, classes, fragment in LOSS_KINDS:
        if issubclass(loss_class, classes) or fragment in name:
            return kind
    return "softmax"


def embedding_kind(loss):
    """"center" / "triplet" / "distill" of an attached embedding loss given as a name, class, object or function.

    A string is matched by name (`"centerloss"` → center); anything else by `loss_type_of`. ValueError otherwise.
    """
    if isinstance(loss, str):
        kind = next((kind for kind, _, fragment in LOSS_KINDS if fragment in loss.lower()), None)
    else:
        kind = loss_type_of(loss)
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"embedding loss {loss!r}: the name must contain 'center', 'triplet' or 'distill'")
    return kind


@dataclasses.dataclass(frozen=True)
class AttachedLoss:
    """An embedding loss attached to a stage: its `kind` (center / triplet / distill), the `loss` as given (None:
    the kind's default; a class: instantiated for the stage; an object or function: used as it is) and its
    `weight` in the total loss."""

    kind: str
    loss: object = None
    weight: float = 1


@dataclasses.dataclass(frozen=True)
class Stage:
    """One scheduler stage, typed (see the module docstring for the original's keys).

    Attributes:
        epoch: epochs of the stage.
        loss: the main loss (None: the loss compiled into the current model).
        loss_weight: weight of the main output (`lossWeight`).
        optimizer: None continues with the compiled optimizer (Adam for a first stage without one).
        bottleneck_only: freeze the basic model and train the head only, from epoch 0 (`bottleneckOnly`).
        loss_top_k: sub-centres of the NormDense head (`lossTopK`).
        loss_type: kind overriding the one inferred from the loss (`type`).
        attached: the embedding losses attached to the stage (`embLossTypes` / `embLossWeights` and aliases).
        triplet_alpha: margin of an attached triplet loss (`tripletAlpha`, `alpha`).
    """

    epoch: int
    loss: object = None
    loss_weight: float = 1
    optimizer: object = None
    bottleneck_only: bool = False
    loss_top_k: int = 1
    loss_type: str = None
    attached: tuple = ()
    triplet_alpha: float = 0.35


def as_list(value, length):
    """`value` repeated `length` times, or `value` itself when it is already a list / tuple of that length."""
    if isinstance(value, (list, tuple)):
        if len(value) != length:
            raise ValueError(f"expected {length} values, got {value!r}")
        return list(value)
    return [value] * length


def attached_losses(stage_dict):
    """The `AttachedLoss` entries of a stage dict: `embLossTypes` / `embLossWeights`, then the alias keys."""
    types = list(stage_dict.get("embLossTypes") or [])
    weights = as_list(stage_dict.get("embLossWeights", 1), len(types)) if types else []
    attached = [
        AttachedLoss(embedding_kind(loss), None if isinstance(loss, str) else loss, weight)
        for loss, weight in zip(types, weights, strict=True)
    ]
    aliases = [AttachedLoss(kind, None, stage_dict[key]) for key, kind in ALIAS_KEYS.items() if key in stage_dict]
    return attached + aliases


def parse_stage(stage_dict):
    """The typed `Stage` of one scheduler dict (the caller's dict is not changed); TypeError on an unknown key."""
    unknown = set(stage_dict) - set(STAGE_KEYS) - set(ALIAS_KEYS) - {"embLossTypes", "embLossWeights"}
    if unknown:
        raise TypeError(f"unknown scheduler keys {sorted(unknown)}; known: {sorted(STAGE_KEYS)}, "
                        f"{sorted(ALIAS_KEYS)}, embLossTypes, embLossWeights")
    if "epoch" not in stage_dict:
        raise TypeError(f"scheduler stage {stage_dict!r} has no 'epoch'")
    fields = {STAGE_KEYS[key]: value for key, value in stage_dict.items() if key in STAGE_KEYS}
    return Stage(**fields, attached=tuple(attached_losses(stage_dict)))


def parse_schedule(train_schedule):
    """`[Stage, ...]` of a scheduler dict or list of dicts."""
    schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
    return [parse_stage(stage) for stage in schedule]


def remaining_stages(train_schedule, completed):
    """The part of a schedule left after `completed` epochs: the stages not started yet, and the current one
    shortened to its remaining epochs with `optimizer: None` (so a restored optimizer keeps its state). A
    `bottleneckOnly` stage (which saves no epoch checkpoint) is kept when it starts at or after `completed`.
    Pass the result to `Train.train(..., initial_epoch=completed)`; the dicts returned are new ones."""
    remaining, start = [], 0
    schedule = [train_schedule] if isinstance(train_schedule, dict) else list(train_schedule)
    for stage in schedule:
        if parse_stage(stage).bottleneck_only:
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


def optimizer_in_effect(train_schedule, completed):
    """The optimizer a schedule trains with when a run is continued after `completed` epochs from a checkpoint
    whose optimizer is restored: the one given by the last (not `bottleneckOnly`) stage that starts before
    `completed`; None when none gives one, or when the stage starting at `completed` gives its own (which replaces
    the restored one)."""
    optimizer, start = None, 0
    for stage in parse_schedule(train_schedule):
        if stage.bottleneck_only:
            continue
        if start >= completed:
            return None if start == completed and stage.optimizer is not None else optimizer
        optimizer, start = stage.optimizer if stage.optimizer is not None else optimizer, start + stage.epoch
    return optimizer


# ----------------------------------------------------------------------------------------------------------------
# The losses of a stage


@dataclasses.dataclass(frozen=True)
class StageLosses:
    """The losses a stage compiles, in model-output order: the `attached` embedding losses `(kind, loss, weight)`
    (distill, triplet, center), then the `main` loss of kind `main_kind` with `main_weight`."""

    main: object
    main_kind: str
    main_weight: float
    attached: tuple = ()

    @property
    def attached_kinds(self):
        """Kinds of the attached embedding outputs, in output order."""
        return [kind for kind, _, _ in self.attached]

    @property
    def output_kinds(self):
        """Kind of every model output, in output order (the main one last)."""
        return [*self.attached_kinds, self.main_kind]

    def compile_arguments(self):
        """`{"loss": ..., "loss_weights": ...}` for `model.compile`: single values with one output, lists else."""
        all_losses = [loss for _, loss, _ in self.attached] + [self.main]
        weights = [weight for _, _, weight in self.attached] + [self.main_weight]
        if len(all_losses) == 1:
            return {"loss": self.main, "loss_weights": None}
        return {"loss": all_losses, "loss_weights": weights}


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


def with_distill(attached, main_kind, is_distill_dataset):
    """`attached` plus a distill loss (weight 1) when the dataset has teacher embeddings and no loss uses them."""
    if is_distill_dataset and "distill" not in [*(item.kind for item in attached), main_kind]:
        return (*attached, AttachedLoss("distill"))
    return tuple(attached)


def resolve_losses(stage, main_loss, is_distill_dataset, classes, emb_shape, centers_file):
    """The `StageLosses` of `stage` with `main_loss` (the stage's loss, or the compiled one when it has none), for a
    dataset of `classes` classes (with teacher embeddings when `is_distill_dataset`) and embeddings of `emb_shape`;
    a CenterLoss starts from `centers_file` when it exists."""
    main_kind = main_kind_of(stage, main_loss)
    if main_kind == "distill" and not is_distill_dataset:
        raise ValueError("a distill loss needs a dataset with teacher embeddings")
    attached = sorted(with_distill(stage.attached, main_kind, is_distill_dataset),
                      key=lambda item: EMBEDDING_KINDS.index(item.kind))
    resolved = tuple(
        (item.kind, embedding_loss(item.kind, item.loss, classes, emb_shape, stage.triplet_alpha, centers_file),
         item.weight)
        for item in attached
    )
    return StageLosses(main_loss, main_kind, stage.loss_weight, resolved)


def main_kind_of(stage, main_loss):
    """The kind of a stage's main output: its `type` key, else the kind of `main_loss`."""
    return stage.loss_type or loss_type_of(main_loss)


def needs_triplet_batches(stage, main_loss):
    """Whether `stage` trains a triplet loss (main or attached), which needs class-grouped batches."""
    return main_kind_of(stage, main_loss) == "triplet" or any(item.kind == "triplet" for item in stage.attached)
