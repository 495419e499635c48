"""Serialization of every loss and head: config round trips, running state, `.keras` files without custom_objects."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import heads
import losses

C, D = 4, 6


def sample_batch(append_norm=False, seed=0):
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(-0.9, 0.9, size=(8, C)).astype("float32")
    if append_norm:
        cosine = np.concatenate([cosine, -rng.uniform(5, 40, size=(8, 1)).astype("float32")], -1)
    return np.eye(C, dtype="float32")[[0, 1, 2, 3, 0, 1, 2, 3]], cosine


def all_losses():
    """(loss, needs the norm column, works on embeddings of width D)."""
    return [
        (losses.ArcfaceLoss(1.0, 0.3, 0.2, scale=32.0, label_smoothing=0.1), False, False),
        (losses.ArcfaceLossSimple(0.4, 16.0), False, False),
        (losses.CosFaceLoss(0.3, 30.0), False, False),
        (losses.CurricularFaceLoss(hard_scale=0.1), False, False),
        (losses.AirFaceLoss(0.3), False, False),
        (losses.MagFaceLoss(use_cosface_margin=True, regularizer_loss_lambda=5.0), True, False),
        (losses.AdaFaceLoss(margin=0.5, margin_alpha=0.5), True, False),
        (losses.AdaCosLoss(num_classes=C), False, False),
        (losses.MarginSoftmax(power=1, scale=0.5, scale_all=2.0), False, False),
        (losses.DistillKLDivergenceLoss(scale=5), False, False),
        (losses.CenterLoss(C, D, alpha=0.3), False, True),
        (losses.CenterLossCosine(C, D), False, True),
        (losses.BatchHardTripletLoss(0.3), False, True),
        (losses.BatchAllTripletLoss(0.3), False, True),
        (losses.ArcBatchHardTripletLoss(0.3), False, True),
        (losses.BatchHardTripletLossEuclidean(0.3), False, True),
        (losses.BatchHardTripletLossEuclideanAutoAlpha(0.2, init_auto_alpha=0.5), False, True),
        (losses.OfflineTripletLoss(0.3), False, True),
        (losses.OfflineArcTripletLoss(0.3), False, True),
    ]


@pytest.mark.parametrize(("loss", "append_norm", "on_embeddings"), all_losses(), ids=lambda v: type(v).__name__)
def test_loss_round_trip_keeps_parameters_and_state(loss, append_norm, on_embeddings):
    y_true, y_pred = sample_batch(append_norm)
    if on_embeddings:
        y_pred = np.random.default_rng(1).normal(size=(9 if "Offline" in type(loss).__name__ else 8, D))
        y_pred = y_pred.astype("float32")
        y_true = np.eye(C, dtype="float32")[np.arange(len(y_pred)) % C]
    loss(y_true, y_pred)  # moves the running state away from its initial value
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    assert type(clone) is type(loss)
    assert clone.get_config() == loss.get_config()
    if not isinstance(loss, losses.CenterLoss):  # centres travel in model files or .npy, see the tests below
        # the state that shapes the loss (AdaFace mean/std, CurricularFace t, AdaCos scale, auto alpha) came along
        assert float(clone(y_true, y_pred)) == pytest.approx(float(loss(y_true, y_pred)), rel=1e-6)


def test_stateful_values_are_in_the_config():
    _, y_pred = sample_batch(append_norm=True)
    y_true = sample_batch()[0]
    ada = losses.AdaFaceLoss()
    ada(y_true, y_pred)
    config = ada.get_config()
    assert config["_batch_mean_"] == pytest.approx(ada.running_values()["batch_mean"])
    assert config["_batch_std_"] == pytest.approx(ada.running_values()["batch_std"])
    curricular = losses.CurricularFaceLoss()
    curricular(y_true, y_pred[:, :C])
    assert curricular.get_config()["hard_scale"] == pytest.approx(curricular.running_values()["hard_scale"])


def test_functions_and_callback_names_resolve():
    for function in (losses.distiller_loss_cosine, losses.distiller_loss_euclidean):
        assert keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(function)) is function
    assert keras.saving.get_registered_name(losses.ArcfaceLoss) == "keras_insightface>ArcfaceLoss"
    assert keras.saving.get_registered_name(heads.NormDense) == "keras_insightface>NormDense"


def test_legacy_configs_load():
    arc = losses.ArcfaceLoss.from_config({"reduction": "auto", "name": "arcface_loss", "scale": 64.0})
    assert arc.reduction == "sum_over_batch_size"
    center = losses.CenterLoss.from_config({"num_classes": 3, "feature_dim": 5, "factor": 1, "logits_loss": None})
    assert center.centers.shape == (3, 5)


def test_center_loss_centres_round_trip_through_initial_file(tmp_path):
    save_path = str(tmp_path / "model_centers.npy")
    loss = losses.CenterLoss(C, D, initial_file=save_path)
    y_true, emb = np.eye(C, dtype="float32")[[0, 1, 1, 3]], np.ones((4, D), "float32")
    loss(y_true, emb)
    loss.save_centers_callback.on_epoch_end(0)
    clone = losses.CenterLoss.from_config(loss.get_config())
    np.testing.assert_array_equal(clone.centers.numpy(), loss.centers.numpy())
    assert np.abs(clone.centers.numpy()).sum() > 0
    np.save(save_path, np.zeros((C + 1, D), "float32"))
    with pytest.raises(ValueError, match=r"model_centers\.npy"):
        losses.CenterLoss(C, D, initial_file=save_path)


def test_save_numpy_callback_writes_a_complete_file_atomically(tmp_path):
    centers = keras.Variable(np.arange(C * D, dtype="float32").reshape(C, D), trainable=False)
    callback = losses.Save_Numpy_Callback(str(tmp_path / "model_centers.h5"), centers)
    callback.on_epoch_end(0)
    centers.assign(centers + 1)
    callback.on_epoch_end(1)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["model_centers.npy"]  # no temporary file left
    np.testing.assert_array_equal(np.load(tmp_path / "model_centers.npy"), centers.numpy())


def embedding_model(head_kwargs=None, with_center=False):
    inputs = keras.Input((10,))
    embedding = keras.layers.Dense(D, name="embedding")(inputs)
    outputs = [heads.NormDense(C, name="arcface", **(head_kwargs or {}))(embedding)]
    if with_center:
        outputs = [embedding, *outputs]
    return keras.Model(inputs, outputs)


def as_list(outputs):
    return outputs if isinstance(outputs, list) else [outputs]


MODEL_CASES = [
    ({"loss_top_k": 3, "kernel_regularizer": keras.regularizers.L2(2.5e-4)}, lambda: losses.ArcfaceLoss(scale=16.0)),
    ({"append_norm": True}, lambda: losses.AdaFaceLoss()),
    ({"partial_fc_split": 2}, lambda: losses.CurricularFaceLoss()),
    ({}, lambda: [losses.CenterLoss(C, D), losses.CosFaceLoss()]),
]


@pytest.mark.parametrize(("head_kwargs", "make_loss"), MODEL_CASES, ids=["topk", "adaface", "partial_fc", "center"])
def test_saved_training_model_loads_without_custom_objects(tmp_path, head_kwargs, make_loss):
    loss = make_loss()
    model = embedding_model(head_kwargs, with_center=isinstance(loss, list))
    model.compile(optimizer="sgd", loss=loss)
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 10)).astype("float32"), np.eye(C, dtype="float32")[np.arange(16) % C]
    model.fit(x, [y, y] if isinstance(loss, list) else y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    for before, after in zip(as_list(model.predict(x, verbose=0)), as_list(loaded.predict(x, verbose=0)), strict=True):
        np.testing.assert_allclose(after, before, rtol=1e-6)
    for before, after in zip(losses.flatten_losses(model.loss), losses.flatten_losses(loaded.loss), strict=True):
        assert type(after) is type(before) and after.get_config() == before.get_config()
        for name, variable in before.state_variables().items():
            np.testing.assert_array_equal(after.state_variables()[name].numpy(), variable.numpy())
    assert isinstance(loaded.get_layer("arcface"), heads.NormDense)
    if head_kwargs.get("partial_fc_split"):
        assert int(loaded.get_layer("arcface").cur_id.numpy()) == int(model.get_layer("arcface").cur_id.numpy())


def test_running_values_logger_writes_logs():
    model = embedding_model({"append_norm": True})
    loss = losses.AdaFaceLoss()
    model.compile(optimizer="sgd", loss=loss)
    logger = losses.LossRunningValuesLogger()
    x, y = np.ones((8, 10), "float32"), np.eye(C, dtype="float32")[np.arange(8) % C]
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[logger])
    key = f"{loss.name}_batch_mean"
    assert len(logger.history[key]) == 2
    assert logger.history[key][-1] == pytest.approx(loss.running_values()["batch_mean"])
    assert key in history.history
    assert tf.reduce_all(tf.math.is_finite(history.history["loss"]))
