"""schedule.py: the original's scheduler dicts parsed into typed stages, the loss → kind table, and the losses a
stage compiles (order, weights, defaults)."""

import keras
import pytest

import losses
import schedule


def cosine_cross_entropy(y_true, y_pred):
    return keras.losses.categorical_crossentropy(y_true, y_pred)


@pytest.mark.parametrize(("loss", "kind"), [
    ("categorical_crossentropy", "softmax"),
    (losses.ArcfaceLoss(), "arcface"),
    (losses.CosFaceLoss, "arcface"),  # a class (ArcfaceLossSimple's subclass)
    (losses.AdaCosLoss(), "arcface"),
    (losses.BatchHardTripletLoss(), "triplet"),
    (losses.CenterLoss, "center"),
    (losses.distiller_loss_cosine, "distill"),
    (cosine_cross_entropy, "softmax"),
])
def test_loss_type_of_follows_the_one_table(loss, kind):
    assert schedule.loss_type_of(loss) == kind


def test_embedding_kind_by_name_class_or_function():
    assert schedule.embedding_kind("centerloss") == "center"
    assert schedule.embedding_kind("triplet") == "triplet"
    assert schedule.embedding_kind(losses.BatchHardTripletLoss) == "triplet"
    assert schedule.embedding_kind(losses.distiller_loss_cosine) == "distill"
    with pytest.raises(ValueError, match="'center', 'triplet' or 'distill'"):
        schedule.embedding_kind("arcface")


def test_parse_stage_maps_the_original_keys_and_aliases():
    optimizer, arcface = keras.optimizers.SGD(0.1), losses.ArcfaceLoss()
    stage_dict = {"loss": arcface, "epoch": 3, "optimizer": optimizer, "lossWeight": 2, "bottleneckOnly": True,
                  "lossTopK": 3, "type": "arcface", "embLossTypes": ["triplet", losses.CenterLoss],
                  "embLossWeights": [0.5, 0.1], "distill": 4, "alpha": 0.2}
    copy = dict(stage_dict)
    stage = schedule.parse_stage(stage_dict)
    assert stage_dict == copy  # the caller's dict is not changed
    assert stage == schedule.Stage(
        epoch=3, loss=arcface, loss_weight=2, optimizer=optimizer, bottleneck_only=True, loss_top_k=3,
        loss_type="arcface", triplet_alpha=0.2,
        attached=(schedule.AttachedLoss("triplet", None, 0.5), schedule.AttachedLoss("center", losses.CenterLoss, 0.1),
                  schedule.AttachedLoss("distill", None, 4)),
    )
    assert schedule.parse_stage({"epoch": 1, "tripletAlpha": 0.3, "centerloss": 0.01}) == schedule.Stage(
        epoch=1, triplet_alpha=0.3, attached=(schedule.AttachedLoss("center", None, 0.01),)
    )
    assert schedule.parse_schedule({"epoch": 2}) == [schedule.Stage(epoch=2)]


def test_parse_stage_rejects_unknown_keys_and_missing_epoch():
    with pytest.raises(TypeError, match="initial_epoch"):
        schedule.parse_stage({"epoch": 1, "initial_epoch": 3})
    with pytest.raises(TypeError, match="no 'epoch'"):
        schedule.parse_stage({"loss": "categorical_crossentropy"})
    with pytest.raises(ValueError, match="expected 2 values"):
        schedule.parse_stage({"epoch": 1, "embLossTypes": ["triplet", "centerloss"], "embLossWeights": [1, 2, 3]})


def test_resolve_losses_orders_attached_outputs_and_adds_distill(tmp_path):
    arcface = losses.ArcfaceLoss()
    stage = schedule.parse_stage({"loss": arcface, "epoch": 1, "centerloss": 0.1, "triplet": 0.5, "alpha": 0.2,
                                  "lossWeight": 2})
    resolved = schedule.resolve_losses(stage, arcface, True, 6, 16, str(tmp_path / "centers.npy"))
    assert resolved.output_kinds == ["distill", "triplet", "center", "arcface"]
    kinds_and_types = [(kind, type(loss), weight) for kind, loss, weight in resolved.attached]
    assert kinds_and_types[1:] == [("triplet", losses.BatchHardTripletLoss, 0.5), ("center", losses.CenterLoss, 0.1)]
    assert resolved.attached[0][1] is losses.distiller_loss_cosine and resolved.attached[0][2] == 1
    assert resolved.attached[1][1].alpha == 0.2
    arguments = resolved.compile_arguments()
    assert arguments["loss"][-1] is arcface and arguments["loss_weights"] == [1, 0.5, 0.1, 2]
    single = schedule.resolve_losses(schedule.parse_stage({"loss": arcface, "epoch": 1}), arcface, False, 6, 16, None)
    assert single.compile_arguments() == {"loss": arcface, "loss_weights": None}
    with pytest.raises(ValueError, match="teacher embeddings"):
        schedule.resolve_losses(schedule.Stage(epoch=1), losses.distiller_loss_cosine, False, 6, 16, None)


def test_needs_triplet_batches_for_a_main_or_attached_triplet_loss():
    triplet = losses.BatchHardTripletLoss()
    assert schedule.needs_triplet_batches(schedule.Stage(epoch=1), triplet)
    assert schedule.needs_triplet_batches(schedule.parse_stage({"epoch": 1, "triplet": 1}), "categorical_crossentropy")
    assert not schedule.needs_triplet_batches(schedule.Stage(epoch=1), losses.ArcfaceLoss())


def test_optimizer_in_effect_when_a_run_continues_from_a_checkpoint():
    """The optimizer of the last stage started before the checkpoint's epoch; None when the next stage brings its
    own (it replaces the restored one) or no stage gives one."""
    sgd, adam = keras.optimizers.SGD(0.1), keras.optimizers.Adam(0.01)
    stages = [{"loss": "categorical_crossentropy", "epoch": 2, "optimizer": sgd},
              {"loss": "categorical_crossentropy", "epoch": 1, "bottleneckOnly": True, "optimizer": adam},
              {"loss": "categorical_crossentropy", "epoch": 2},
              {"loss": "categorical_crossentropy", "epoch": 1, "optimizer": adam}]
    assert [schedule.optimizer_in_effect(stages, completed) for completed in range(6)] == [
        None, sgd, sgd, sgd, None, adam]
    assert schedule.optimizer_in_effect({"loss": "categorical_crossentropy", "epoch": 3}, 1) is None
