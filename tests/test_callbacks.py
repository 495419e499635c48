"""myCallbacks: LR schedules against closed forms and the READMEs' numbers, resumed fits, history file, checkpoints,
NaN handling, weight decay."""

import json
import math
import os
import sys

import keras
import numpy as np
import pytest

import atomic_io
import losses
import myCallbacks as mc  # noqa: N813 (short name for the module under test)

STEPS_PER_EPOCH = 4
BATCH_SIZE = 8


# ----------------------------------------------------------------------------------------------------------------
# Independent closed forms (Keras 2 formulas, logarithm restart index as in CosineDecayRestarts)
def keras2_cosine_restarts(lr_base, step, first_period, t_mul, m_mul, alpha):
    fraction = step / first_period
    restart = np.floor(np.log(1 - fraction * (1 - t_mul)) / np.log(t_mul) + 1e-12)
    fraction = (fraction - (1 - t_mul**restart) / (1 - t_mul)) / t_mul**restart
    return lr_base * ((1 - alpha) * 0.5 * m_mul**restart * (1 + np.cos(np.pi * fraction)) + alpha)


def read_json(path):
    with open(path) as ff:
        return json.load(ff)


def cooldown_epochs(epochs_lr, lr_min):
    return [ee for ee, lr in enumerate(epochs_lr) if lr == lr_min]


def restart_epochs(epochs_lr):
    return [ee for ee in range(1, len(epochs_lr)) if epochs_lr[ee] > epochs_lr[ee - 1]]


# ----------------------------------------------------------------------------------------------------------------
# Pure schedules
def test_exp_scheduler_matches_formula():
    for epoch in [0, 1, 5, 10, 33]:
        assert mc.exp_scheduler(epoch, 0.001, 0.05) == pytest.approx(0.001 * np.exp(-0.05 * epoch), rel=1e-12)
    # warm-up of 4 epochs from lr_min, then decay counted from the warm-up end, floored at lr_min
    assert mc.exp_scheduler(1, 0.1, 0.5, lr_min=0.01, warmup_steps=4) == pytest.approx(0.01 + 0.09 / 4)
    assert mc.exp_scheduler(6, 0.1, 0.5, lr_min=0.01, warmup_steps=4) == pytest.approx(0.1 * np.exp(-1.0))
    assert mc.exp_scheduler(100, 0.1, 0.5, lr_min=0.01, warmup_steps=4) == 0.01


def test_constant_scheduler_boundaries():
    steps = [3, 5, 7]
    expected = {0: 0.1, 2: 0.1, 3: 0.01, 4: 0.01, 5: 0.001, 6: 0.001, 7: 1e-4, 50: 1e-4}
    for epoch, lr in expected.items():
        assert mc.constant_scheduler(epoch, 0.1, steps, 0.1) == pytest.approx(lr, rel=1e-12)
    # warm-up starts at the final LR (0.1 * 0.1**3)
    assert mc.constant_scheduler(0, 0.1, steps, 0.1, warmup_steps=2) == pytest.approx(1e-4)
    assert mc.constant_scheduler(1, 0.1, steps, 0.1, warmup_steps=2) == pytest.approx((1e-4 + 0.1) / 2)
    scheduler = mc.ConstantDecayScheduler(0.1, steps, decay_rate=0.1)
    assert not scheduler.is_on_batch
    assert [scheduler.lr_at(ee) for ee in (2, 3, 7)] == pytest.approx([0.1, 0.01, 1e-4])
    assert scheduler.on_epoch_begin(5) == pytest.approx(0.001)  # works without a model, as in the README


def test_cosine_epoch_warmup_cooldown_restarts_closed_form():
    lr_base, lr_min, warmup, first = 0.01, 1e-5, 2, 4
    scheduler = mc.CosineLrSchedulerEpoch(lr_base, first, m_mul=0.5, t_mul=2.0, lr_min=lr_min, lr_warmup=1e-3,
                                          warmup_steps=warmup, cooldown_steps=1)
    alpha = lr_min / lr_base
    assert scheduler.lr_at(0) == pytest.approx(1e-3)
    assert scheduler.lr_at(1) == pytest.approx(1e-3 + (lr_base - 1e-3) / 2)
    for epoch in range(2, 6):  # first period: position epoch - warm-up
        expected = keras2_cosine_restarts(lr_base, epoch - warmup, first, 2.0, 0.5, alpha)
        assert scheduler.lr_at(epoch) == pytest.approx(expected, rel=1e-9)
    assert scheduler.lr_at(6) == lr_min  # cool-down 1 at 2 + 4
    assert scheduler.lr_at(7) == pytest.approx(lr_base * ((1 - alpha) * 0.5 + alpha))  # restart at m_mul
    for epoch in range(7, 15):  # second period, one cool-down passed
        expected = keras2_cosine_restarts(lr_base, epoch - warmup - 1, first, 2.0, 0.5, alpha)
        assert scheduler.lr_at(epoch) == pytest.approx(expected, rel=1e-9)
    assert scheduler.lr_at(15) == lr_min  # cool-down 2 at 2 + floor(4 + 8 + 1)
    assert scheduler.lr_at(16) == pytest.approx(lr_base * ((1 - alpha) * 0.25 + alpha))


def test_readme_example_restarts_at_17_50_115():
    scheduler = mc.CosineLrSchedulerEpoch(0.001, first_restart_step=16, m_mul=0.5, lr_min=1e-7)
    lrs = [scheduler.lr_at(ee) for ee in range(130)]
    assert cooldown_epochs(lrs, 1e-7) == [16, 49, 114]
    assert restart_epochs(lrs) == [17, 50, 115]


def test_official_recipe_cooldowns_and_restart_value():
    scheduler = mc.scheduler_from_options(lr_base=0.1, lr_decay=0.5, lr_min=1e-5, lr_decay_steps=45,
                                          lr_warmup_steps=0)
    assert isinstance(scheduler, mc.CosineLrScheduler) and scheduler.is_on_batch
    scheduler.build(3)
    lrs = [scheduler.lr_at(ee) for ee in range(700)]
    assert cooldown_epochs(lrs, 1e-5) == [45, 136, 317, 678]
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[44] > 1e-5 and lrs[45] == 1e-5
    assert lrs[46] == pytest.approx(0.1 * ((1 - 1e-4) * 0.5 + 1e-4), rel=1e-12)  # 0.050005: restarts at 0.05
    assert lrs[679] == pytest.approx(0.1 * ((1 - 1e-4) * 0.5**4 + 1e-4), rel=1e-9)  # continues past restart 4


def test_no_restart_when_lr_min_equals_lr_base_times_m_mul():
    scheduler = mc.CosineLrSchedulerEpoch(0.001, 24, m_mul=1e-4, lr_min=1e-7, warmup_steps=2)
    for epoch in [2, 10, 20, 26]:
        expected = 0.001 * ((1 - 1e-4) * 0.5 * (1 + np.cos(np.pi * (epoch - 2) / 24)) + 1e-4)
        assert scheduler.lr_at(epoch) == pytest.approx(expected, rel=1e-9)
    assert [scheduler.lr_at(ee) for ee in (26, 27, 60, 200)] == pytest.approx([1e-7] * 4, rel=1e-9)


def test_batch_level_equals_epoch_level_and_rebuild():
    kwargs = dict(m_mul=0.5, t_mul=2.0, lr_min=1e-6, lr_warmup=1e-4, warmup_steps=2, cooldown_steps=1)
    epoch_level = mc.CosineLrSchedulerEpoch(0.01, 5, **kwargs)
    batch_level = mc.CosineLrScheduler(0.01, 5, steps_per_epoch=10, **kwargs)
    for steps in [10, 4]:  # build() again with another steps_per_epoch recomputes everything
        batch_level.build(steps)
        batch_level.build(None)  # keeps the value (Train passes None when the dataset length is unknown)
        assert batch_level.steps_per_epoch == steps
        for epoch in range(40):
            assert batch_level.lr_at(epoch, 0) == pytest.approx(epoch_level.lr_at(epoch), rel=1e-12)
            for batch in range(1, steps):  # inside an epoch: the epoch schedule at a fractional epoch
                expected = epoch_level.cosine(epoch + batch / steps)
                assert batch_level.lr_at(epoch, batch) == pytest.approx(expected, rel=1e-9)


def test_lr_decay_steps_dispatch_table():
    assert isinstance(mc.scheduler_from_options(0.1, 0.1, 0, [3, 5], 0), mc.ConstantDecayScheduler)
    for steps in (0, 1):
        scheduler = mc.scheduler_from_options(0.001, 0.05, 0, steps, 0)
        assert isinstance(scheduler, mc.ExpScheduler)
        assert scheduler.lr_at(10) == pytest.approx(0.001 * np.exp(-0.5))
    in_epochs = mc.scheduler_from_options(0.001, 0.5, 1e-7, 24, 1)
    in_batches = mc.scheduler_from_options(0.001, 0.5, 1e-7, 2400, 1)  # >= 500: a number of batches
    assert in_epochs.first_restart_unit == "epochs" and in_batches.first_restart_unit == "batches"
    in_epochs.build(100)
    in_batches.build(100)
    for epoch, batch in [(0, 0), (0, 50), (1, 0), (12, 30), (25, 0), (26, 0), (40, 99)]:
        assert in_batches.lr_at(epoch, batch) == pytest.approx(in_epochs.lr_at(epoch, batch), rel=1e-12)
    assert in_epochs.lr_at(0) == pytest.approx(1e-7)  # lr_warmup = lr_min


def test_cosine_rejects_bad_lengths():
    with pytest.raises(ValueError, match="first_restart_step"):
        mc.CosineLrSchedulerEpoch(0.1, 0)
    unbuilt = mc.CosineLrScheduler(0.1, 5)
    unbuilt.build(None)  # unknown yet: stays unbuilt until the first epoch
    assert not unbuilt.is_built
    with pytest.raises(ValueError, match="build"):
        unbuilt.lr_at(0)
    with pytest.raises(ValueError, match="steps per epoch is unknown"):
        unbuilt.on_epoch_begin(0)
    with pytest.raises(ValueError, match="steps_per_epoch > 0"):
        unbuilt.build(0)
    with pytest.raises(ValueError, match="t_mul"):
        mc.CosineLrScheduler(0.1, 5, t_mul=0.5)


# ----------------------------------------------------------------------------------------------------------------
# Training with a tiny model
def tiny_data(seed=0, classes=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(STEPS_PER_EPOCH * BATCH_SIZE, 4)).astype("float32")
    y = keras.utils.to_categorical(rng.integers(0, classes, len(x)), classes)
    return x, y


def tiny_model(optimizer=None, loss=None, regularizer=None, seed=0, run_eagerly=True):
    """A softmax Dense layer, compiled; eager by default (faster than tracing for 4 batches)."""
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(3, activation="softmax", kernel_regularizer=regularizer),
    ])
    model.compile(optimizer or keras.optimizers.SGD(0.1), loss or keras.losses.CategoricalCrossentropy(),
                  metrics=["accuracy"], run_eagerly=run_eagerly)
    return model


class LrRecorder(keras.callbacks.Callback):
    """Records (epoch, batch, optimizer LR, bias after the step) at each batch (placed after the scheduler)."""

    def __init__(self):
        super().__init__()
        self.records, self.epoch = [], None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.records.append([self.epoch, batch, mc.current_learning_rate(self.model.optimizer)])

    def on_train_batch_end(self, batch, logs=None):
        self.records[-1].append(float(self.model.layers[0].bias.numpy()[0]))


@pytest.mark.parametrize("make_scheduler", [
    lambda: mc.CosineLrScheduler(0.1, 2, m_mul=0.5, lr_min=1e-4, warmup_steps=1),  # built from params["steps"]
    lambda: mc.ExpScheduler(0.1, 0.3),
])
def test_fit_resumed_at_initial_epoch_follows_lr_at(make_scheduler):
    scheduler, recorder = make_scheduler(), LrRecorder()
    x, _ = tiny_data()
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    # loss = mean prediction: its bias gradient is 1, so plain SGD moves the bias by exactly -lr each step
    model.compile(keras.optimizers.SGD(1.0), lambda y_true, y_pred: keras.ops.mean(y_pred, axis=-1))
    bias_before = float(model.layers[0].bias.numpy()[0])
    model.fit(x, np.zeros(len(x)), batch_size=BATCH_SIZE, epochs=5, initial_epoch=2, verbose=0, shuffle=False,
              callbacks=[scheduler, recorder])
    assert [(ee, bb) for ee, bb, _, _ in recorder.records] == [(ee, bb) for ee in (2, 3, 4) for bb in range(4)]
    biases = [bias_before] + [record[3] for record in recorder.records]
    for (epoch, batch, lr, _), step in zip(recorder.records, -np.diff(biases), strict=True):
        assert lr == pytest.approx(scheduler.lr_at(epoch, batch), rel=1e-6)
        assert step == pytest.approx(scheduler.lr_at(epoch, batch), rel=1e-3)  # the LR the update used
    if scheduler.is_on_batch:  # the LR changes inside the epoch, and epoch 3 is the cool-down at lr_min
        assert scheduler.steps_per_epoch == STEPS_PER_EPOCH
        assert len({record[2] for record in recorder.records if record[0] == 2}) == 4
        assert all(record[2] == pytest.approx(1e-4) for record in recorder.records if record[0] == 3)


# ----------------------------------------------------------------------------------------------------------------
# My_history
class StubEval:
    """Stands in for evals.eval_callback: the attributes My_history reads."""

    def __init__(self, name, accuracy, thresh):
        self.test_names, self.cur_acc, self.acc_thresh = name, accuracy, thresh


class CountingLoss(losses.InsightfaceLoss):
    """Cross-entropy with one running value (the number of calls), to check the running-values keys."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = losses.state_variable(0.0, "calls")

    def state_variables(self):
        return {"calls": self.calls}

    def compute_loss(self, y_true, y_pred):
        self.calls.assign_add(1.0)
        return keras.losses.categorical_crossentropy(y_true, y_pred)


def test_rename_accuracy_keys():
    assert mc.rename_accuracy_keys(["loss", "arcface_accuracy"]) == {"loss": "loss", "arcface_accuracy": "accuracy"}
    several = mc.rename_accuracy_keys(["softmax_accuracy", "arcface_accuracy", "val_arcface_accuracy"])
    assert several == {"softmax_accuracy": "softmax_accuracy", "arcface_accuracy": "arcface_accuracy",
                       "val_arcface_accuracy": "val_accuracy"}


def test_my_history_keys_values_and_file(tmp_path):
    hist_file = tmp_path / "X_hist.json"
    evals = [StubEval("lfw", 0.75, 0.3)]
    history = mc.My_history(str(hist_file), evals=evals, custom_obj={"const": lambda: np.array([1.0, 3.0])})
    x, y = tiny_data()
    model = tiny_model(loss=CountingLoss(name="counting"), regularizer=keras.regularizers.L2(0.01))
    keras_history = model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0,
                              callbacks=[mc.ExpScheduler(0.1, 0.5), history])
    saved = json.loads(hist_file.read_text())
    assert saved == history.history
    assert list(saved) == ["lr", "loss", "accuracy", "lfw", "lfw_thresh", "const", "regular_loss", "counting_calls"]
    assert all(len(values) == 2 for values in saved.values())
    assert saved["lr"] == pytest.approx([0.1, 0.1 * np.exp(-0.5)], rel=1e-6)
    assert saved["lfw"] == [0.75, 0.75] and saved["lfw_thresh"] == [0.3, 0.3] and saved["const"] == [2.0, 2.0]
    assert saved["accuracy"] == pytest.approx(keras_history.history["accuracy"])
    kernel = model.layers[0].kernel.numpy()
    assert saved["regular_loss"][-1] == pytest.approx(0.01 * np.sum(kernel**2), rel=1e-5)
    total = np.add(saved["loss"], saved["regular_loss"])
    assert total[-1] == pytest.approx(keras_history.history["loss"][-1], rel=1e-5)
    assert saved["counting_calls"] == [4.0, 8.0]  # one call per batch
    assert sorted(os.listdir(tmp_path)) == ["X_hist.json"]  # no temporary file left


def test_my_history_write_is_atomic(tmp_path, monkeypatch):
    hist_file = tmp_path / "X_hist.json"
    hist_file.write_text(json.dumps({"lr": [0.1], "loss": [1.0]}))
    history = mc.My_history(str(hist_file))
    history.history["lr"].append(0.2)

    def broken_write(path, text, **kwargs):
        with open(path, "w") as ff:
            ff.write(text[:10])
        raise OSError("disk full")

    monkeypatch.setattr(atomic_io.Path, "write_text", broken_write)
    with pytest.raises(OSError, match="disk full"):
        atomic_io.write_json_atomic(hist_file, history.history)  # what My_history.on_epoch_end calls
    assert json.loads(hist_file.read_text()) == {"lr": [0.1], "loss": [1.0]}
    assert sorted(os.listdir(tmp_path)) == ["X_hist.json"]


def test_my_history_resume_truncates_without_duplicates(tmp_path):
    hist_file = str(tmp_path / "X_hist.json")
    x, y = tiny_data()
    model = tiny_model()
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, verbose=0,
              callbacks=[mc.My_history(hist_file, evals=[StubEval("lfw", 0.5, 0.1)])])
    first = read_json(hist_file)
    assert len(first["lfw"]) == 3
    resumed = mc.My_history(hist_file, evals=[StubEval("lfw", 0.9, 0.2)])  # reloaded at construction
    assert resumed.history == first
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=3, initial_epoch=2, verbose=0, callbacks=[resumed])
    saved = read_json(hist_file)
    assert all(len(values) == 3 for values in saved.values())
    assert saved["lfw"] == [0.5, 0.5, 0.9] and saved["lfw_thresh"] == [0.1, 0.1, 0.2]
    assert saved["loss"][:2] == first["loss"][:2]


def test_my_history_truncate_right_aligns_late_keys_and_rejects_bad_file(tmp_path):
    history = mc.My_history()
    history.history = {"lr": [1, 2, 3, 4, 5], "loss": [1, 2, 3, 4, 5], "triplet_embedding_loss": [7, 8]}
    history.truncate(4)
    assert history.history == {"lr": [1, 2, 3, 4], "loss": [1, 2, 3, 4], "triplet_embedding_loss": [7]}
    history.truncate(3)
    assert history.history == {"lr": [1, 2, 3], "loss": [1, 2, 3]}
    bad = tmp_path / "bad_hist.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad_hist\.json"):
        mc.My_history(str(bad))


class EvalSkippingEpoch2(keras.callbacks.Callback):
    """Stands in for evals.eval_callback: evaluates at the end of epoch 1 (new `embs`, accuracy 0.8), skips the
    evaluation of epoch 2 (non-finite embeddings: `embs`, `cur_acc` and `acc_thresh` keep their old values)."""

    def __init__(self):
        super().__init__()
        self.test_names, self.cur_acc, self.acc_thresh, self.embs = "val", 0.0, 0.0, None

    def on_epoch_end(self, epoch, logs=None):
        if epoch == 0:
            self.embs, self.cur_acc, self.acc_thresh = np.ones((2, 3)), 0.8, 0.3


def test_my_history_records_a_skipped_evaluation_as_null(tmp_path):
    """A skipped evaluation is null in `_hist.json` (not its stale or initial 0.0 value); plot reads it as a gap."""
    import plot

    hist_file = tmp_path / "X_hist.json"
    evaluation = EvalSkippingEpoch2()
    x, y = tiny_data()
    tiny_model().fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0,
                     callbacks=[evaluation, mc.My_history(str(hist_file), evals=[evaluation])])
    saved = read_json(hist_file)
    assert saved["val"] == [0.8, None] and saved["val_thresh"] == [0.3, None]
    epochs, values = plot.aligned_series(plot.load_history(str(hist_file)), "val")
    assert epochs.tolist() == [0, 1] and values[0] == 0.8 and np.isnan(values[1])


def test_braces_in_the_folder_and_stem_of_standard_callbacks_are_literal(tmp_path):
    """`standard_callbacks("ckpt{1}", "X{loss}")` writes `ckpt{1}/X{loss}_epoch01.keras`, not a formatted name."""
    folder = tmp_path / "ckpt{1}"
    callbacks = mc.standard_callbacks(str(folder), "X{loss}", verbose=0)
    x, y = tiny_data()
    tiny_model().fit(x, y, batch_size=BATCH_SIZE, epochs=1, verbose=0, callbacks=callbacks[:2])
    assert sorted(os.listdir(folder)) == ["X{loss}.keras", "X{loss}_epoch01.keras", "X{loss}_hist.json"]
    assert mc.literal_format_text("a{1}/{loss}") == "a{{1}}/{{loss}}"


# ----------------------------------------------------------------------------------------------------------------
# ModelCheckpoint and NaN handling
class WeightsAtEpochEnd(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = {}

    def on_epoch_end(self, epoch, logs=None):
        self.weights[epoch] = [ww.copy() for ww in self.model.get_weights()]


def test_model_checkpoint_writes_epoch_and_latest_files(tmp_path):
    checkpoint = mc.ModelCheckpoint(str(tmp_path / "X_epoch{epoch:02d}.keras"), latest_path=str(tmp_path / "X.keras"),
                                    verbose=0)
    weights = WeightsAtEpochEnd()
    x, y = tiny_data()
    tiny_model().fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0, callbacks=[checkpoint, weights])
    assert sorted(os.listdir(tmp_path)) == ["X.keras", "X_epoch01.keras", "X_epoch02.keras"]
    for name, iterations, epoch in [("X_epoch01.keras", 4, 0), ("X.keras", 8, 1)]:
        loaded = keras.models.load_model(tmp_path / name)
        assert int(loaded.optimizer.iterations.numpy()) == iterations
        for saved, expected in zip(loaded.get_weights(), weights.weights[epoch], strict=True):
            np.testing.assert_array_equal(saved, expected)


def test_model_checkpoint_weights_and_h5_formats(tmp_path):
    model = tiny_model()
    atomic_io.save_model_atomic(model, tmp_path / "W.weights.h5")
    atomic_io.save_model_atomic(model, tmp_path / "M.h5")
    assert sorted(os.listdir(tmp_path)) == ["M.h5", "W.weights.h5"]
    other = tiny_model(seed=1)
    other.load_weights(tmp_path / "W.weights.h5")
    np.testing.assert_array_equal(other.layers[0].kernel.numpy(), model.layers[0].kernel.numpy())
    with pytest.raises(ValueError, match=r"weights\.h5"):
        mc.ModelCheckpoint(str(tmp_path / "X.keras"), save_weights_only=True).on_epoch_end(0, {"loss": 1.0})
    with pytest.raises(ValueError, match=r"X\.ckpt"):
        mc.ModelCheckpoint(str(tmp_path / "X.ckpt"))


def test_failed_save_keeps_previous_file_and_no_temporary(tmp_path, monkeypatch):
    model = tiny_model()
    atomic_io.save_model_atomic(model, tmp_path / "X.keras")
    before = (tmp_path / "X.keras").read_bytes()
    written = []

    def interrupted_save(path, *args, **kwargs):
        assert str(path).endswith(".keras") and os.path.dirname(path) == str(tmp_path)  # Keras needs the suffix
        written.append(path)
        with open(path, "wb") as ff:
            ff.write(b"half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(model, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        atomic_io.save_model_atomic(model, tmp_path / "X.keras")
    assert written and (tmp_path / "X.keras").read_bytes() == before
    assert os.listdir(tmp_path) == ["X.keras"]


def test_nan_batch_stops_training_and_keeps_last_good_checkpoint(tmp_path, caplog):
    x, y = tiny_data()
    model = tiny_model()
    poison_from = STEPS_PER_EPOCH + 2  # epoch 1, batch 2

    def poisoned_loss(y_true, y_pred):
        loss = keras.losses.categorical_crossentropy(y_true, y_pred)
        bad = keras.ops.cast(model.optimizer.iterations >= poison_from, "float32")
        return loss + keras.ops.where(bad > 0, np.nan, 0.0)

    model.compile(keras.optimizers.SGD(0.1), poisoned_loss, run_eagerly=True)
    exit_on_nan, weights = mc.ExitOnNaN(), WeightsAtEpochEnd()
    checkpoint = mc.ModelCheckpoint(str(tmp_path / "X_epoch{epoch:02d}.keras"), latest_path=str(tmp_path / "X.keras"),
                                    verbose=0)
    history = mc.My_history(str(tmp_path / "X_hist.json"))
    result = model.fit(x, y, batch_size=BATCH_SIZE, epochs=4, verbose=0,
                       callbacks=[exit_on_nan, history, checkpoint, weights])
    assert exit_on_nan.nan_detected and model.stop_training and checkpoint.nan_detected
    assert "epoch 2, batch 2" in caplog.text
    assert len(result.history["loss"]) == 2  # stopped inside epoch 1, no epoch 2 or 3
    assert sorted(os.listdir(tmp_path)) == ["X.keras", "X_epoch01.keras", "X_hist.json"]
    latest = keras.models.load_model(tmp_path / "X.keras", compile=False)
    for saved, expected in zip(latest.get_weights(), weights.weights[0], strict=True):
        np.testing.assert_array_equal(saved, expected)
    saved_history = json.loads((tmp_path / "X_hist.json").read_text())
    assert saved_history["loss"][0] is not None and saved_history["loss"][1] is None  # NaN written as null


def test_exit_on_nan_does_not_exit():
    class StubModel:
        stop_training = False

    callback = mc.ExitOnNaN()
    callback.set_model(StubModel())
    callback.on_train_batch_end(0, {"loss": 1.5})
    assert not callback.nan_detected and not callback.model.stop_training
    callback.on_train_batch_end(1, {"loss": float("inf")})
    assert callback.nan_detected and callback.model.stop_training


# ----------------------------------------------------------------------------------------------------------------
# Weight decay, gentle stop, default set
def test_optimizer_weight_decay_matches_tfa_decoupled_decay():
    assert mc.keras3_weight_decay(5e-4, 0.1) == pytest.approx(5e-3)
    x, y = tiny_data()
    zero_gradient = lambda y_true, y_pred: 0.0 * keras.ops.sum(y_pred, axis=-1)  # noqa: E731
    model = tiny_model(loss=zero_gradient, run_eagerly=False)  # traced: the decay must be set before tracing
    kernel = model.layers[0].kernel.numpy().copy()
    scheduler = mc.ConstantDecayScheduler(0.1, [1], decay_rate=0.5)  # lr 0.1 in epoch 0, 0.05 in epoch 1
    model.fit(x, y, batch_size=BATCH_SIZE, epochs=2, verbose=0,
              callbacks=[scheduler, mc.OptimizerWeightDecay(lr_base=0.1, wd_base=5e-4)])
    assert model.optimizer.weight_decay == pytest.approx(5e-3)
    # tfa SGDW + the original callback: w *= 1 - wd_base * lr / lr_base at each step
    expected = kernel * (1 - 5e-4) ** STEPS_PER_EPOCH * (1 - 5e-4 * 0.05 / 0.1) ** STEPS_PER_EPOCH
    np.testing.assert_allclose(model.layers[0].kernel.numpy(), expected, rtol=1e-6)


def test_gently_stop_reads_the_terminal_only(monkeypatch):
    class StubModel:
        stop_training = False

    callback = mc.Gently_stop_callback(time_out=0.5)
    callback.set_model(StubModel())
    callback.on_epoch_end(0)  # pytest's stdin is not a terminal: nothing happens, no wait
    assert not callback.model.stop_training
    if not hasattr(os, "openpty"):
        pytest.skip("no pseudo-terminals on this platform")
    master, slave = os.openpty()
    with open(slave) as terminal:
        monkeypatch.setattr(sys, "stdin", terminal)
        os.write(master, b"y\n")
        callback.on_epoch_end(0)
        assert not callback.model.stop_training
        os.write(master, b"No\n")
        callback.on_epoch_end(1)
        assert callback.model.stop_training
    os.close(master)


def test_standard_callbacks_is_the_one_builder(tmp_path, monkeypatch):
    """basic_callbacks builds its set through standard_callbacks, with the checkpoint's stem and ending."""
    calls = []
    builder = mc.standard_callbacks
    monkeypatch.setattr(mc, "standard_callbacks", lambda *args: calls.append(args) or builder(*args))
    _, checkpoint, scheduler = mc.basic_callbacks("Z.weights.h5", checkpoint_dir=str(tmp_path))
    assert [args[:3] for args in calls] == [(str(tmp_path), "Z", ".weights.h5")] and calls[0][4] is scheduler
    assert checkpoint.filepath == str(tmp_path / "Z_epoch{epoch:02d}.weights.h5") and checkpoint.verbose == 1
    quiet = builder(str(tmp_path / "run"), "R", verbose=0)
    assert quiet[0].initial_file == str(tmp_path / "run" / "R_hist.json") and quiet[2] is None
    assert quiet[1].latest_path == str(tmp_path / "run" / "R.keras") and quiet[1].verbose == 0


def test_basic_callbacks_names(tmp_path):
    evals = [StubEval("lfw", 0.5, 0.1)]
    history, checkpoint, scheduler = mc.basic_callbacks("X.keras", evals=evals, lr=0.1, lr_decay=0.5, lr_min=1e-5,
                                                        lr_decay_steps=45, checkpoint_dir=str(tmp_path / "ck"))
    assert isinstance(history, mc.My_history) and history.evals == evals
    assert history.initial_file == str(tmp_path / "ck" / "X_hist.json")
    assert isinstance(checkpoint, mc.ModelCheckpoint)
    assert checkpoint.filepath.format(epoch=3) == str(tmp_path / "ck" / "X_epoch03.keras")
    assert checkpoint.latest_path == str(tmp_path / "ck" / "X.keras")
    assert isinstance(scheduler, mc.CosineLrScheduler) and scheduler.first_restart_step == 45
    assert (tmp_path / "ck").is_dir()
    h5 = mc.basic_callbacks("Y.h5", checkpoint_dir=str(tmp_path))
    assert h5[1].latest_path.endswith("Y.h5") and isinstance(h5[2], mc.ExpScheduler)
    assert math.isclose(h5[2].lr_at(2), 0.001 * math.exp(-0.1))
