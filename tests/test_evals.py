"""evals.py: the 10-fold verification protocol, the original callback's max accuracy, VAL@FAR, the callback, CLI."""

import logging
import os

import cv2
import keras
import numpy as np
import pytest
from conftest import run_on_two_logical_cpus

import evals
from bin_files import make_bin


def unit_pairs_with_distances(distances):
    """(2N, 2) unit vectors whose pair k has squared L2 distance `distances[k]` (d = 2 − 2 cos θ)."""
    rows = []
    for distance in distances:
        angle = np.arccos(1 - distance / 2)
        rows += [[1.0, 0.0], [np.cos(angle), np.sin(angle)]]
    return np.array(rows)


def reference_kfold_accuracy(embeddings, issame, nrof_folds):
    """The published protocol written out with plain loops: normalise, squared L2, contiguous folds."""
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    distances = np.array([np.sum((embeddings[2 * k] - embeddings[2 * k + 1]) ** 2) for k in range(len(issame))])
    thresholds = np.arange(0, 4, 0.01)
    folds = np.array_split(np.arange(len(issame)), nrof_folds)
    accuracies = []
    for test in folds:
        train = np.setdiff1d(np.arange(len(issame)), test)
        train_acc = [np.mean((distances[train] < t) == issame[train]) for t in thresholds]
        best = thresholds[int(np.argmax(train_acc))]
        accuracies.append(np.mean((distances[test] < best) == issame[test]))
    return np.mean(accuracies), np.std(accuracies)


def test_perfectly_separable_embeddings_score_one():
    rng = np.random.default_rng(0)
    anchors = rng.normal(size=(40, 16))
    others = rng.normal(size=(40, 16))
    issame = np.arange(40) % 2 == 0
    second = np.where(issame[:, None], anchors + 0.01 * rng.normal(size=(40, 16)), -anchors + 0.1 * others)
    embeddings = np.stack([anchors, second], axis=1).reshape(80, 16)
    metrics = evals.evaluate_embeddings(embeddings, issame)
    assert metrics["accuracy_mean"] == 1.0 and metrics["accuracy_std"] == 0.0
    assert metrics["max_accuracy"] == 1.0
    assert metrics["val"] == 1.0  # FAR 1e-3 is unreachable with 18 training negatives: the protocol interpolates


def test_two_fold_protocol_hand_computed():
    # Fold 1 (pairs 0-9) separates at any threshold in (0.333, 1.555]; the first grid value is 0.34.
    # Fold 2 has one far positive (1.777) and one close negative (0.222): trained on fold 2 the best threshold is
    # also 0.34 (8/10). Test accuracies: fold 1 → 10/10, fold 2 → 8/10: mean 0.9, std 0.1.
    distances = [0.333] * 5 + [1.555] * 5 + [0.333] * 4 + [1.777] + [1.555] * 4 + [0.222]
    issame = np.array([True] * 5 + [False] * 5 + [True] * 5 + [False] * 5)
    metrics = evals.evaluate_embeddings(unit_pairs_with_distances(distances), issame, nrof_folds=2)
    assert metrics["accuracy_mean"] == pytest.approx(0.9, abs=1e-12)
    assert metrics["accuracy_std"] == pytest.approx(0.1, abs=1e-12)


@pytest.mark.parametrize("nrof_folds", [2, 10])
def test_kfold_accuracy_matches_loop_reference(nrof_folds):
    rng = np.random.default_rng(1)
    issame = rng.random(203) < 0.5
    first = rng.normal(size=(203, 8))
    second = np.where(issame[:, None], first + 0.9 * rng.normal(size=(203, 8)), rng.normal(size=(203, 8)))
    embeddings = np.stack([first, second], axis=1).reshape(406, 8)
    expected_mean, expected_std = reference_kfold_accuracy(embeddings, issame, nrof_folds)
    metrics = evals.evaluate_embeddings(embeddings, issame, nrof_folds=nrof_folds)
    assert 0.6 < metrics["accuracy_mean"] < 1.0
    assert metrics["accuracy_mean"] == pytest.approx(expected_mean, abs=1e-12)
    assert metrics["accuracy_std"] == pytest.approx(expected_std, abs=1e-12)


def test_flip_embeddings_are_added_before_normalising():
    rng = np.random.default_rng(2)
    embeddings, flipped = rng.normal(size=(60, 4)), rng.normal(size=(60, 4))
    issame = rng.random(30) < 0.5
    with_flip = evals.evaluate_embeddings(embeddings, issame, embeddings_flip=flipped, nrof_folds=3)
    assert with_flip == evals.evaluate_embeddings(embeddings + flipped, issame, nrof_folds=3)
    assert with_flip != evals.evaluate_embeddings(embeddings, issame, nrof_folds=3)


def test_max_accuracy_searches_only_the_top_ten_percent_of_negatives():
    negatives = [i / 100 for i in range(18)] + [0.5, 0.9]  # 20 negatives → candidates 0.5 and 0.9
    positives = [0.95, 0.8, 0.7, 0.6, 0.45, 0.4]
    cosines = np.array(positives + negatives)
    issame = np.array([True] * 6 + [False] * 20)
    # t=0.5: 4 positives above + 19 negatives at or below = 23; t=0.9: 1 + 20 = 21. A threshold of 0.3 would give
    # 24 but is not a candidate.
    accuracy, threshold = evals.max_threshold_accuracy(cosines, issame)
    assert accuracy == 23 / 26 and threshold == 0.5


def test_max_accuracy_with_fewer_than_ten_negatives_uses_all_of_them():
    cosines = np.array([0.9, 0.3, 0.2, 0.5, 0.1])  # positives 0.9, 0.3; negatives 0.1, 0.2, 0.5
    issame = np.array([True, True, False, False, False])
    # t=0.1: 2 + 1 = 3; t=0.2: 2 + 2 = 4; t=0.5: 1 + 3 = 4 → 4/5, the tie goes to the lower threshold 0.2
    assert evals.max_threshold_accuracy(cosines, issame) == (0.8, 0.2)


def test_val_at_far_two_folds_hand_computed():
    # Fold A negatives reach FAR 0.25 just above 0.5005 → threshold 0.501; fold B negatives just above 0.3005 →
    # 0.301. Test A at 0.301: VAL 1/6, FAR 0; test B at 0.501: VAL 2/6, FAR 1/4.
    distances = np.array([0.2, 0.4, 0.6, 0.8, 1.2, 1.4, 0.5005, 1.0005, 1.5005, 2.0005,
                          0.1, 0.45, 0.55, 0.9, 1.1, 1.3, 0.3005, 1.7, 2.5, 3.0])
    issame = np.array(([True] * 6 + [False] * 4) * 2)
    val, val_std, far = evals.calculate_val(distances, issame, far_target=0.25, nrof_folds=2)
    assert val == pytest.approx(0.25, abs=1e-12)
    assert val_std == pytest.approx(1 / 12, abs=1e-12)
    assert far == pytest.approx(0.125, abs=1e-12)


def test_threshold_at_far_interpolates_and_tolerates_repeated_far_values():
    thresholds = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    fars = np.array([0.0, 0.0, 0.5, 0.5, 1.0])
    assert evals.threshold_at_far(thresholds, fars, 0.25) == 1.5
    assert evals.threshold_at_far(thresholds, fars, 0.5) == 2.0
    assert evals.threshold_at_far(thresholds, np.zeros(5), 0.25) == 0.0


def test_threshold_at_far_without_interpolation_is_the_last_threshold_within_the_target():
    thresholds = np.array([0.0, 1.0, 2.0, 3.0, 4.0])
    fars = np.array([0.0, 0.0, 0.5, 0.5, 1.0])
    assert evals.threshold_at_far(thresholds, fars, 0.25, interpolate=False) == 1.0
    assert evals.threshold_at_far(thresholds, fars, 0.5, interpolate=False) == 3.0
    assert evals.threshold_at_far(thresholds, fars, 1.0, interpolate=False) == 4.0
    assert evals.threshold_at_far(thresholds, fars + 0.1, 0.05, interpolate=False) == 0.0


def test_non_finite_embeddings_give_a_clear_error():
    embeddings = np.ones((4, 3))
    embeddings[1, 2] = np.nan
    with pytest.raises(evals.NonFiniteEmbeddingsError, match="1 non-finite"):
        evals.evaluate_embeddings(embeddings, [True, False])


# ----------------------------------------------------------------------------------------------------------------
# The callback and the CLI on a tiny model and a tiny .bin


def tiny_model(size=32):
    inputs = keras.Input((size, size, 3))
    features = keras.layers.Conv2D(4, 3, strides=2, name="conv")(inputs)
    features = keras.layers.GlobalAveragePooling2D()(features)
    embedding = keras.layers.Dense(8, name="embedding")(features)
    return keras.Model(inputs, embedding)


def write_tiny_bin(path, size=32, pairs=10, seed=0):
    """Pairs of random images: positive pairs show the same image twice. Returns (images, issame)."""
    rng = np.random.default_rng(seed)
    issame = np.arange(pairs) % 2 == 0
    images = rng.integers(0, 256, size=(2 * pairs, size, size, 3), dtype=np.uint8)
    images[1::2][issame] = images[0::2][issame]
    make_bin(list(zip(images[0::2], images[1::2], strict=True)), issame, path)
    return images, issame


def test_eval_callback_embeds_prints_and_saves_best(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="evals")
    monkeypatch.chdir(tmp_path)
    images, issame = write_tiny_bin(tmp_path / "tiny.bin")
    model = tiny_model()
    callback = evals.eval_callback(model, str(tmp_path / "tiny.bin"), batch_size=8, save_model="run", PCA_acc=True)
    callback.on_epoch_end(0)

    normalized = (images.astype(np.float32) - 127.5) * 0.0078125
    expected = model.predict(normalized, verbose=0) + model.predict(normalized[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(callback.embs, expected, rtol=1e-4, atol=1e-5)
    metrics = evals.evaluate_embeddings(expected, issame)
    assert callback.cur_acc == callback.max_accuracy == pytest.approx(metrics["max_accuracy"])
    assert callback.steps == 3 and callback.tt.size == 5 and callback.ff.size == 5
    out = caplog.text
    assert ">>>> tiny evaluation max accuracy:" in out and "PCA accuray = " in out and ">>>> Improved" in out
    saved = os.listdir(tmp_path / "checkpoints")
    assert saved == [f"run_basic_tiny_epoch_1_{callback.max_accuracy:f}.h5"]
    reloaded = keras.saving.load_model(tmp_path / "checkpoints" / saved[0], compile=False)
    np.testing.assert_allclose(reloaded.predict(normalized, verbose=0), model.predict(normalized, verbose=0),
                               rtol=1e-5, atol=1e-6)

    callback.eval_freq = 2
    callback.on_batch_end(2)  # an equal accuracy counts as improved, so the best file is replaced
    assert os.listdir(tmp_path / "checkpoints") == [f"run_basic_tiny_epoch_1_batch_2_{callback.max_accuracy:f}.h5"]
    # Batches of 8, 8 and 4 images, two evaluations: the embedding function was traced once.
    assert callback.embedding_function().experimental_get_tracing_count() == 1


def test_failed_save_keeps_the_previous_best_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_tiny_bin(tmp_path / "tiny.bin")
    model = tiny_model()
    callback = evals.eval_callback(model, str(tmp_path / "tiny.bin"), batch_size=8, save_model="run")
    callback.on_epoch_end(0)
    first = os.listdir(tmp_path / "checkpoints")

    def interrupted_save(path, **kwargs):
        with open(path, "wb") as file:
            file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(model, "save", interrupted_save)
    with pytest.raises(OSError, match="disk full"):
        callback.on_epoch_end(1)
    assert os.listdir(tmp_path / "checkpoints") == first and len(first) == 1
    keras.saving.load_model(tmp_path / "checkpoints" / first[0], compile=False)


def test_eval_callback_saves_in_the_checkpoint_dir_given_at_construction(tmp_path):
    write_tiny_bin(tmp_path / "tiny.bin")
    callback = evals.eval_callback(tiny_model(), str(tmp_path / "tiny.bin"), batch_size=8, save_model="run",
                                   checkpoint_dir=str(tmp_path / "best"))
    assert callback.checkpoint_dir == str(tmp_path / "best")
    callback.on_epoch_end(0)
    assert os.listdir(tmp_path / "best") == [f"run_basic_tiny_epoch_1_{callback.max_accuracy:f}.h5"]


def test_eval_callback_skips_non_finite_embeddings(tmp_path, caplog):
    write_tiny_bin(tmp_path / "tiny.bin")
    model = tiny_model()
    model.get_layer("embedding").kernel.assign(np.full((4, 8), np.nan, dtype=np.float32))
    callback = evals.eval_callback(model, str(tmp_path / "tiny.bin"), batch_size=8)
    callback.on_epoch_end(0)
    assert "NAN or inf in embs" in caplog.text
    assert callback.embs is None and callback.max_accuracy == 0.0


def test_eval_callback_resizes_other_sizes_with_a_warning(tmp_path):
    images, _ = write_tiny_bin(tmp_path / "big.bin", size=40)
    callback = evals.eval_callback(tiny_model(), str(tmp_path / "big.bin"), batch_size=8, flip=False)
    with pytest.warns(UserWarning, match="40x40"):
        embeddings = callback.compute_embeddings()
    resized = np.stack([cv2.resize(image, (32, 32), interpolation=cv2.INTER_LINEAR) for image in images])
    expected = callback.basic_model.predict((resized.astype(np.float32) - 127.5) * 0.0078125, verbose=0)
    np.testing.assert_allclose(embeddings, expected, atol=0.05)


def test_cli_prints_a_table_per_bin(tmp_path, capsys):
    write_tiny_bin(tmp_path / "first.bin", seed=1)
    write_tiny_bin(tmp_path / "second.bin", seed=2)
    model_path = str(tmp_path / "tiny.keras")
    tiny_model().save(model_path)
    table = evals.main(["-m", model_path, "-t", str(tmp_path / "first.bin"), str(tmp_path / "second.bin"), "-F"])
    assert list(table.index) == ["first", "second"]
    assert list(table.columns) == ["accuracy_mean", "accuracy_std", "max_accuracy", "max_accuracy_threshold",
                                   "val", "val_std", "far"]
    assert (table["max_accuracy"] > 0.5).all()
    out = capsys.readouterr().out
    assert "accuracy_mean" in out and "second" in out


MIRRORED_SCRIPT = r"""
import logging
logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(message)s")
import keras
import evals
from bin_files import make_bin

rng = np.random.default_rng(0)
issame = np.arange(8) % 2 == 0
images = rng.integers(0, 256, size=(16, 32, 32, 3), dtype=np.uint8)
images[1::2][issame] = images[0::2][issame]
make_bin(list(zip(images[0::2], images[1::2])), issame, "tiny.bin")
with strategy.scope():
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3, strides=2)(inputs))
    basic = keras.Model(inputs, keras.layers.Dense(8)(features))
    model = keras.Model(inputs, keras.layers.Dense(2)(basic.output))
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
callback = evals.eval_callback(basic, "tiny.bin", batch_size=4, save_model="mirrored", eval_freq=2)
x = (images.astype("float32") - 127.5) * 0.0078125
model.fit(x, np.arange(16) % 2, batch_size=4, epochs=1, callbacks=[callback], verbose=0)
expected = basic.predict(x, verbose=0) + basic.predict(x[:, :, ::-1], verbose=0)
print("RESULT" + json.dumps({
    "replicas": strategy.num_replicas_in_sync,
    "max_difference": float(np.abs(callback.embs - expected).max()),
    "saved": sorted(os.listdir("checkpoints")),
}))
"""


@pytest.mark.slow
def test_eval_callback_under_mirrored_strategy(tmp_path):
    result, stdout = run_on_two_logical_cpus(MIRRORED_SCRIPT, cwd=tmp_path, timeout=300)
    assert result["replicas"] == 2 and result["max_difference"] < 1e-4
    assert ">>>> tiny evaluation max accuracy:" in stdout
    saved = result["saved"]
    assert len(saved) == 1 and saved[0].startswith("mirrored_basic_tiny_epoch_1_") and saved[0].endswith(".h5")
