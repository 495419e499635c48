"""Partial FC v2 (`partial_fc.py`, `NormDense(sample_rate=...)`): the class sample of a step, sparse updates of the
head and its optimizer state, equality with the full head at `sample_rate=1.0` (SGD, AdamW, sub-centres, integer
labels, `train.Train`, MirroredStrategy on two logical CPUs), exact resume, saving."""

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_two_logical_cpus
from test_train import data_dirs, make_train, tiny_basic_model  # noqa: F401  (data_dirs: the fixture)

import keras_compat
import losses
import partial_fc
import partial_fc_sharded
from heads import NormDense, NormDenseVPL

CLASSES, EMB, FEATURES, BATCH, STEPS = 40, 6, 8, 8, 3


def dataset(classes=CLASSES, count=BATCH * STEPS, seed=0):
    """`(features (count, 8), integer labels (count,), one-hot labels (count, classes))`."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, count)
    return rng.normal(size=(count, FEATURES)).astype("float32"), labels, np.eye(classes, dtype="float32")[labels]


def build(sample_rate, optimizer, classes=CLASSES, loss_top_k=1, loss=None, seed=1):
    """Input (8,) → Dense(6, L2) `emb` → NormDense(classes, L2) `arcface`, compiled; a `PartialFCModel` when
    `sample_rate` is set. The same `seed` gives the same initial weights (centres transposed for the rows layout)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    embedding = keras.layers.Dense(EMB, kernel_regularizer=keras.regularizers.L2(1e-3), name="emb")(inputs)
    head = NormDense(classes, keras.regularizers.L2(5e-4), loss_top_k=loss_top_k, sample_rate=sample_rate,
                     sample_seed=3, name="arcface")
    model = (keras.Model if sample_rate is None else partial_fc.PartialFCModel)(inputs, head(embedding))
    columns = np.random.default_rng(seed).normal(size=(EMB, classes * loss_top_k)).astype("float32")
    head.set_weights([columns if sample_rate is None else columns.T])
    model.compile(optimizer=optimizer(), loss=loss or losses.ArcfaceLoss(scale=16.0), metrics=["accuracy"])
    return model


def centres(model):
    """The head's centres as columns (emb, classes*k), whatever the layout."""
    return keras.ops.convert_to_numpy(model.get_layer("arcface").kernel_for_call())


def fit(model, x, y):
    return model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0).history


OPTIMIZERS = {
    "SGD momentum": lambda: keras.optimizers.SGD(0.1, momentum=0.9),
    "SGD Nesterov": lambda: keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
    "AdamW": lambda: keras.optimizers.AdamW(0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("loss_top_k", [1, 3])
def test_sample_rate_one_equals_the_full_head_after_three_steps(name, loss_top_k):
    x, _, y = dataset()
    full, sampled = (build(rate, OPTIMIZERS[name], loss_top_k=loss_top_k) for rate in (None, 1.0))
    full_history, sampled_history = fit(full, x, y), fit(sampled, x, y)
    np.testing.assert_allclose(sampled_history["loss"], full_history["loss"], rtol=1e-6)
    np.testing.assert_allclose(centres(sampled), centres(full), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sampled.get_layer("emb").get_weights()[0], full.get_layer("emb").get_weights()[0],
                               rtol=1e-6, atol=1e-7)
    assert not np.allclose(centres(sampled), build(None, OPTIMIZERS[name], loss_top_k=loss_top_k).get_weights()[-1])


def test_integer_labels_train_like_one_hot_labels():
    x, labels, y = dataset()
    one_hot, integer = build(0.25, OPTIMIZERS["SGD momentum"]), build(0.25, OPTIMIZERS["SGD momentum"])
    assert fit(one_hot, x, y)["loss"] == pytest.approx(fit(integer, x, labels)["loss"], rel=1e-6)
    np.testing.assert_allclose(centres(integer), centres(one_hot), rtol=1e-6, atol=1e-7)


def test_sample_holds_the_batch_classes_and_uniform_others():
    labels = tf.constant([3, 3, 17, 39, 0])
    mask = partial_fc.positive_class_mask(labels, CLASSES)
    assert np.flatnonzero(mask.numpy()).tolist() == [0, 3, 17, 39]
    ids = partial_fc.sample_classes(mask, 10, tf.constant([5, 1], tf.int64)).numpy()
    assert len(ids) == 10 and len(set(ids)) == 10 and np.all(np.diff(ids) > 0)
    assert {0, 3, 17, 39} <= set(ids.tolist())
    again = partial_fc.sample_classes(mask, 10, tf.constant([5, 1], tf.int64)).numpy()
    other = partial_fc.sample_classes(mask, 10, tf.constant([5, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(ids, again)
    assert not np.array_equal(ids, other)
    assert len(partial_fc.sample_classes(mask, 2, tf.constant([5, 1], tf.int64))) == 4  # all positives kept
    draws = np.concatenate([partial_fc.sample_classes(tf.zeros([CLASSES], bool), 10, tf.constant([0, s], tf.int64))
                            for s in range(400)])
    counts = np.bincount(draws, minlength=CLASSES)  # expected 100 per class
    assert counts.min() > 60 and counts.max() < 140


def test_labels_and_rows_of_the_sample():
    ids = tf.constant([2, 5, 9])
    np.testing.assert_array_equal(partial_fc.labels_in_sample(tf.constant([5, 9, 2]), ids).numpy(),
                                  np.eye(3, dtype="float32")[[1, 2, 0]])
    soft = np.zeros((1, 10), "float32")
    soft[0, [5, 9]] = [0.3, 0.7]  # a mixup sample keeps both weights
    np.testing.assert_allclose(partial_fc.labels_in_sample(tf.constant(soft), ids).numpy(), [[0, 0.3, 0.7]])
    assert partial_fc.sampled_row_ids(ids, 2).numpy().tolist() == [4, 5, 10, 11, 18, 19]
    assert partial_fc.sample_size(1_000_000, 0.1) == 100_000 and partial_fc.sample_size(5, 0.01) == 1


@pytest.mark.parametrize("name", ["SGD momentum", "AdamW"])
def test_only_sampled_rows_and_their_optimizer_state_change(name):
    x, labels, y = dataset(count=BATCH)
    model = build(0.1, OPTIMIZERS[name])
    head = model.get_layer("arcface")
    before = head.get_weights()[0]
    fit(model, x, y)
    ids = partial_fc.sample_classes(partial_fc.positive_class_mask(tf.constant(labels), CLASSES), 4,
                                    partial_fc.step_seed(3, 0)).numpy()
    assert set(labels.tolist()) <= set(ids.tolist())
    changed = np.flatnonzero(np.any(head.get_weights()[0] != before, axis=1))
    np.testing.assert_array_equal(changed, ids)
    for slot in keras_compat.optimizer_slots(model.optimizer, head.w_rows).values():
        np.testing.assert_array_equal(np.flatnonzero(np.any(keras.ops.convert_to_numpy(slot) != 0, axis=1)), ids)


def test_sampled_rows_follow_the_numpy_sgd_formula():
    """One SGD-momentum step on the rows of the sample, recomputed in NumPy from the rows' loss gradient."""
    x, labels, y = dataset(count=BATCH)
    model = build(0.2, lambda: keras.optimizers.SGD(0.1, momentum=0.9))
    before = model.get_layer("arcface").get_weights()[0]
    ids = partial_fc.sample_classes(partial_fc.positive_class_mask(tf.constant(labels), CLASSES), 8,
                                    partial_fc.step_seed(3, 0))
    embedding = model.get_layer("emb")(x)
    rows = tf.constant(before[ids.numpy()])
    with tf.GradientTape() as tape:
        tape.watch(rows)
        cosine = model.get_layer("arcface").sampled_output(embedding, rows)
        loss = tf.reduce_mean(losses.ArcfaceLoss(scale=16.0, reduction=None)(
            partial_fc.labels_in_sample(tf.constant(labels), ids), cosine))
        loss += 5e-4 * tf.reduce_sum(tf.square(rows))
    grads = tape.gradient(loss, rows).numpy()
    fit(model, x, y)
    expected = before[ids.numpy()] + (0.9 * 0 - 0.1 * grads)
    np.testing.assert_allclose(model.get_layer("arcface").get_weights()[0][ids.numpy()], expected, rtol=1e-5,
                               atol=1e-7)


def test_saved_model_reloads_and_trains_on_exactly(tmp_path):
    x, _, y = dataset(count=BATCH * 6)
    straight = build(0.25, OPTIMIZERS["AdamW"])
    fit(straight, x, y)
    first = build(0.25, OPTIMIZERS["AdamW"])
    fit(first, x[: BATCH * 3], y[: BATCH * 3])
    first.save(tmp_path / "half.keras")
    reloaded = keras.saving.load_model(tmp_path / "half.keras")
    assert isinstance(reloaded, partial_fc.PartialFCModel)
    assert reloaded.get_layer("arcface").sample_rate == 0.25 and int(reloaded.optimizer.iterations) == 3
    fit(reloaded, x[BATCH * 3 :], y[BATCH * 3 :])
    np.testing.assert_allclose(centres(reloaded), centres(straight), rtol=1e-6, atol=1e-7)


def test_unsupported_settings_are_refused():
    x, _, y = dataset(count=BATCH)
    with pytest.raises(ValueError, match="sample_rate must be in"):
        NormDense(10, sample_rate=1.5)
    with pytest.raises(ValueError, match="partial_fc_split"):
        NormDense(10, partial_fc_split=2, sample_rate=0.5)
    with pytest.raises(ValueError, match="Variational Prototype"):
        NormDenseVPL(8, 10, sample_rate=0.5)
    with pytest.raises(TypeError, match="SGD, Adam or AdamW"):
        fit(build(0.5, lambda: keras.optimizers.RMSprop(0.01)), x, y)
    with pytest.raises(ValueError, match="clipnorm"):
        fit(build(0.5, lambda: keras.optimizers.SGD(0.1, clipnorm=1.0)), x, y)


@pytest.mark.slow
def test_a_million_class_head_trains_with_sparse_updates():
    """1M classes, emb 32, batch 64, sample rate 0.1: three steps on integer labels, finite losses, and only the
    rows of the three samples (at most 3 x 100,000) changed."""
    classes, emb, batch = 1_000_000, 32, 64
    keras.utils.set_random_seed(0)
    inputs = keras.Input((emb,))
    head = NormDense(classes, sample_rate=0.1, name="arcface")
    model = partial_fc.PartialFCModel(inputs, head(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss())
    before = head.w_rows.numpy()
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(batch * 3, emb)).astype("float32"), rng.integers(0, classes, batch * 3)
    history = model.fit(x, labels, batch_size=batch, epochs=1, shuffle=False, verbose=0).history
    assert np.isfinite(history["loss"][0]) and history["loss"][0] > 0
    changed = np.any(head.w_rows.numpy() != before, axis=1)
    assert set(labels.tolist()) <= set(np.flatnonzero(changed).tolist())
    assert 100_000 < changed.sum() <= 300_000


# ----------------------------------------------------------------------------------------------------------------
# train.Train


def train_head(tmp_path, data_dir, sample_rate, epochs=1, initial_epoch=0, model=None, model_parallel=False):
    """`train.Train` of the tiny model with an ArcFace stage of `epochs` epochs; returns the Train."""
    keras.utils.set_random_seed(0)
    basic_model = None if model is not None else tiny_basic_model()
    tt = make_train(tmp_path, data_dir, basic_model=basic_model, model=model, sample_rate=sample_rate,
                    model_parallel=model_parallel)
    stage = {"loss": losses.ArcfaceLoss(scale=16.0), "epoch": epochs}
    if model is None:
        stage["optimizer"] = keras.optimizers.SGD(0.1, momentum=0.9)
    tt.train([stage], initial_epoch)
    return tt


@pytest.mark.parametrize("model_parallel", [False, True], ids=["replicated", "model parallel"])
def test_train_with_sample_rate_one_equals_the_full_head(tmp_path, data_dirs, model_parallel):  # noqa: F811
    full = train_head(tmp_path / "full", data_dirs[0], None)
    sampled = train_head(tmp_path / "sampled", data_dirs[0], 1.0, model_parallel=model_parallel)
    expected_class = partial_fc_sharded.ShardedPartialFCModel if model_parallel else partial_fc.PartialFCModel
    assert type(sampled.model) is expected_class and type(full.model) is not expected_class
    np.testing.assert_allclose(centres(sampled.model), centres(full.model), rtol=1e-5, atol=1e-6)
    for actual, expected in zip(sampled.basic_model.get_weights(), full.basic_model.get_weights(), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_train_resumes_a_sampled_run_exactly(tmp_path, data_dirs):  # noqa: F811
    straight = train_head(tmp_path / "straight", data_dirs[0], 0.5, epochs=2)
    first = train_head(tmp_path / "resumed", data_dirs[0], 0.5, epochs=1)
    checkpoint = first.output_path(".keras")
    resumed = train_head(tmp_path / "resumed", data_dirs[0], 0.5, epochs=1, initial_epoch=1, model=checkpoint)
    assert isinstance(resumed.model, partial_fc.PartialFCModel)
    np.testing.assert_allclose(centres(resumed.model), centres(straight.model), rtol=1e-5, atol=1e-6)
    history = json.loads(Path(straight.output_path("_hist.json")).read_text())
    assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))


# ----------------------------------------------------------------------------------------------------------------
# MirroredStrategy on two logical CPUs

MIRRORED_SCRIPT = """
    import test_partial_fc as t

    x, _, y = t.dataset(count=48)
    result = {}
    for rate in (0.25, 1.0):
        for name in ("SGD momentum", "AdamW"):
            single = t.build(rate, t.OPTIMIZERS[name])
            with strategy.scope():
                mirrored = t.build(rate, t.OPTIMIZERS[name])
            # batch 16 on one device; 8 per replica (global 16) under the strategy
            runs = [model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0) for model in (single, mirrored)]
            result[f"{rate} {name}"] = {
                "loss": [run.history["loss"][0] for run in runs],
                "centres": [t.centres(model).tolist() for model in (single, mirrored)],
                "emb": [model.get_layer("emb").get_weights()[0].tolist() for model in (single, mirrored)],
            }
    print("RESULT" + json.dumps(result))
"""


@pytest.mark.slow
def test_mirrored_strategy_equals_single_device_training():
    result, _ = run_on_two_logical_cpus(MIRRORED_SCRIPT)
    assert len(result) == 4
    for name, run in result.items():
        assert run["loss"][1] == pytest.approx(run["loss"][0], rel=1e-5), name
        np.testing.assert_allclose(*run["centres"][::-1], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(*run["emb"][::-1], rtol=1e-5, atol=1e-6, err_msg=name)
