"""Model-parallel Partial FC (`partial_fc_sharded.py`): class centres sharded over replicas, the cross-replica
softmax, equality with single-device training of the full head (one replica here, two logical CPUs in a
subprocess), saving and loading across replica counts."""

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import run_on_two_logical_cpus
from test_partial_fc import EMB, FEATURES, OPTIMIZERS, build, centres, dataset, fit

import losses
import partial_fc
import partial_fc_sharded
from partial_fc_sharded import ShardedNormDense, ShardedPartialFCModel

REPO_ROOT = Path(__file__).resolve().parents[1]


def build_sharded(sample_rate, optimizer, classes=40, loss_top_k=1, loss=None, seed=1):
    """The model of `test_partial_fc.build` with a `ShardedNormDense` head (build it in a strategy's scope to
    shard it), starting from the same centres."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((FEATURES,))
    embedding = keras.layers.Dense(EMB, kernel_regularizer=keras.regularizers.L2(1e-3), name="emb")(inputs)
    optimizer = optimizer()
    head = ShardedNormDense(classes, keras.regularizers.L2(5e-4), loss_top_k, sample_rate, sample_seed=3,
                            optimizer_slots=partial_fc_sharded.optimizer_slot_names(optimizer), name="arcface")
    model = ShardedPartialFCModel(inputs, head(embedding))
    columns = np.random.default_rng(seed).normal(size=(EMB, classes * loss_top_k)).astype("float32")
    head.set_all_rows(columns.T)
    model.compile(optimizer=optimizer, loss=loss or losses.ArcfaceLoss(scale=16.0))
    return model


@pytest.mark.parametrize("name", ["SGD momentum", "AdamW"])
def test_one_shard_at_rate_one_equals_the_full_head(name):
    x, _, y = dataset()
    full, sharded = build(None, OPTIMIZERS[name]), build_sharded(1.0, OPTIMIZERS[name])
    full_loss, sharded_loss = fit(full, x, y)["loss"], fit(sharded, x, y)["loss"]
    np.testing.assert_allclose(sharded_loss, full_loss, rtol=1e-6)
    np.testing.assert_allclose(centres(sharded), centres(full), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(sharded.get_layer("emb").get_weights()[0], full.get_layer("emb").get_weights()[0],
                               rtol=1e-6, atol=1e-7)


def test_one_shard_samples_as_the_replicated_head():
    x, labels, _ = dataset()
    replicated, sharded = build(0.25, OPTIMIZERS["SGD momentum"]), build_sharded(0.25, OPTIMIZERS["SGD momentum"])
    fit(replicated, x, labels)
    fit(sharded, x, labels)
    np.testing.assert_allclose(centres(sharded), centres(replicated), rtol=1e-6, atol=1e-7)


def test_cross_replica_cross_entropy_is_the_softmax_cross_entropy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(5, 7)).astype("float32") * 10, np.array([0, 6, 3, 3, 1])
    targets = np.eye(7, dtype="float32")[labels]
    expected = np.log(np.exp(logits).sum(1)) - logits[np.arange(5), labels]
    actual = partial_fc_sharded.sharded_cross_entropy(tf.constant(logits), tf.constant(targets),
                                                      tf.distribute.get_replica_context())
    np.testing.assert_allclose(actual.numpy(), expected, rtol=1e-5)


def test_shard_sample_and_targets():
    head = ShardedNormDense(41, sample_rate=0.5, num_shards=2)  # shards of 21 classes; the second has 20
    labels = tf.constant([0, 20, 21, 40, 40])
    first = partial_fc_sharded.shard_sample(head, labels, 0, tf.constant([1, 2], tf.int64)).numpy()
    second = partial_fc_sharded.shard_sample(head, labels, 1, tf.constant([1, 2], tf.int64)).numpy()
    assert {0, 20} <= set(first.tolist()) and len(first) == 10 and first.max() < 21
    assert {0, 19} <= set(second.tolist()) and len(second) == 10 and second.max() < 20  # class 41 is padding
    everything = partial_fc_sharded.shard_sample(ShardedNormDense(41, sample_rate=1.0, num_shards=2), labels, 1,
                                                 tf.constant([1, 2], tf.int64)).numpy()
    np.testing.assert_array_equal(everything, np.arange(20))
    targets = partial_fc_sharded.shard_targets(labels, tf.constant(second, tf.int32), 21).numpy()
    assert targets[:2].sum() == 0 and targets[2:].sum(axis=1).tolist() == [1, 1, 1]
    assert second[targets[2].argmax()] == 0 and second[targets[3].argmax()] == 19


def test_centres_move_between_the_replicated_and_the_sharded_head():
    x, labels, _ = dataset()
    replicated = build(0.5, OPTIMIZERS["SGD momentum"])
    fit(replicated, x, labels)
    sharded = build_sharded(0.5, OPTIMIZERS["SGD momentum"], seed=2)
    sharded.get_layer("emb").set_weights(replicated.get_layer("emb").get_weights())
    sharded.get_layer("arcface").set_all_rows(replicated.get_layer("arcface").get_weights()[0])
    np.testing.assert_array_equal(centres(sharded), centres(replicated))
    np.testing.assert_allclose(sharded.predict(x, verbose=0), replicated.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_unsupported_losses_and_slots_are_refused():
    x, labels, _ = dataset()
    with pytest.raises(ValueError, match="model-parallel Partial FC trains one output"):
        fit(build_sharded(1.0, OPTIMIZERS["SGD momentum"], loss=losses.CurricularFaceLoss()), x, labels)
    with pytest.raises(ValueError, match="optimizer_slots"):
        model = build_sharded(1.0, OPTIMIZERS["SGD momentum"])
        model.compile(optimizer=keras.optimizers.AdamW(0.01), loss=losses.ArcfaceLoss())
        fit(model, x, labels)


TWO_REPLICAS_SCRIPT = """
    import test_partial_fc as t
    import test_partial_fc_sharded as s

    result = {}
    for name, classes, k in [("SGD momentum", 40, 1), ("AdamW", 40, 1), ("SGD Nesterov", 41, 3)]:
        x, labels, y = t.dataset(classes=classes, count=48)
        full = t.build(None, t.OPTIMIZERS[name], classes=classes, loss_top_k=k)
        with strategy.scope():
            sharded = s.build_sharded(1.0, t.OPTIMIZERS[name], classes=classes, loss_top_k=k)
        # batch 16 on one device; 8 per replica (global 16) under the strategy
        runs = [model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0) for model in (full, sharded)]
        result[name] = {
            "loss": [run.history["loss"][0] for run in runs],
            "centres": [t.centres(model).tolist() for model in (full, sharded)],
            "emb": [model.get_layer("emb").get_weights()[0].tolist() for model in (full, sharded)],
            "shard rows": [int(local.shape[0]) for local in sharded.get_layer("arcface").shards()],
        }
    x, labels, _ = t.dataset(count=48)
    with strategy.scope():
        sampled = s.build_sharded(0.5, t.OPTIMIZERS["SGD momentum"])
    before = sampled.get_layer("arcface").all_rows()
    sampled.fit(x, labels, batch_size=16, epochs=1, shuffle=False, verbose=0)
    sampled.save(sys.argv[2])
    result["sampled"] = {
        "changed": np.flatnonzero(np.any(sampled.get_layer("arcface").all_rows() != before, axis=1)).tolist(),
        "centres": t.centres(sampled).tolist(),
        "predict": sampled.predict(x[:6], verbose=0).tolist(),
    }
    print("RESULT" + json.dumps(result))
"""


@pytest.mark.slow
def test_two_replicas_equal_single_device_training_and_save_every_centre(tmp_path):
    saved = tmp_path / "sharded.keras"
    result, _ = run_on_two_logical_cpus(TWO_REPLICAS_SCRIPT, saved)
    for name in ("SGD momentum", "AdamW", "SGD Nesterov"):
        run = result[name]
        assert run["loss"][1] == pytest.approx(run["loss"][0], rel=1e-5), name
        np.testing.assert_allclose(*run["centres"][::-1], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(*run["emb"][::-1], rtol=1e-5, atol=1e-6, err_msg=name)
    assert result["SGD momentum"]["shard rows"] == [20, 20] and result["SGD Nesterov"]["shard rows"] == [63, 63]
    changed = result["sampled"]["changed"]
    x, labels, _ = dataset(count=48)
    assert set(labels.tolist()) <= set(changed) and len(changed) < 40
    loaded = keras.saving.load_model(saved)  # one replica now: a single shard holding every centre
    assert isinstance(loaded, ShardedPartialFCModel) and loaded.get_layer("arcface").num_shards == 1
    np.testing.assert_array_equal(centres(loaded), np.asarray(result["sampled"]["centres"], "float32"))
    np.testing.assert_allclose(loaded.predict(x[:6], verbose=0), result["sampled"]["predict"], rtol=1e-5, atol=1e-6)
    assert isinstance(loaded, partial_fc.PartialFCModel)


MULTI_WORKER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path[:0] = [sys.argv[1], sys.argv[1] + "/tests"]
    import numpy as np, tensorflow as tf
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import keras
    import keras_compat
    import test_partial_fc as t
    import test_partial_fc_sharded as s

    x, labels, _ = t.dataset(count=48)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = tf.data.Dataset.from_tensor_slices((x, labels)).batch(16).with_options(options)
    with strategy.scope():
        sharded = s.build_sharded(1.0, t.OPTIMIZERS["AdamW"])
        keras_compat.symbolic_build(sharded, dataset.element_spec)  # as train.Train does before a multi-worker fit
    with keras_compat.multi_worker_fit_patches(sharded):
        loss = sharded.fit(dataset, epochs=1, verbose=0).history["loss"][0]
    head = sharded.get_layer("arcface")
    print("RESULT" + json.dumps({"loss": loss, "centres": t.centres(sharded).tolist(), "shards": head.num_shards,
                                 "emb": sharded.get_layer("emb").get_weights()[0].tolist()}))
    """
)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_equal_single_device_training(tmp_path):
    """MultiWorkerMirroredStrategy, two local workers over loopback, one shard each, global batch 16 (8 per
    worker): the loss and every centre equal single-device training of the full head."""
    script = tmp_path / "two_workers.py"
    script.write_text(MULTI_WORKER_SCRIPT)
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    processes = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        processes.append(subprocess.Popen([sys.executable, str(script), str(REPO_ROOT)], env=env, text=True,
                                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [process.communicate(timeout=600)[0] for process in processes]
    results = [json.loads(line[len("RESULT") :]) for output in outputs for line in output.splitlines()
               if line.startswith("RESULT")]
    assert len(results) == 2, outputs[0][-3000:]
    x, _, y = dataset(count=48)
    full = build(None, OPTIMIZERS["AdamW"])
    full_loss = full.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0]
    for result in results:
        assert result["shards"] == 2 and result["loss"] == pytest.approx(full_loss, rel=1e-5)
        np.testing.assert_allclose(result["centres"], centres(full), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(result["emb"], full.get_layer("emb").get_weights()[0], rtol=1e-5, atol=1e-6)
