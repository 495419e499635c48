"""Tests of `train.Train`: what every scheduler key changes, the basic_model / model table, the output head and its
weight decay, exact resume after a SIGKILL, the NaN guard, mixed precision, XLA and tf.distribute training.

A tiny functional model (Conv2D → GlobalAveragePooling2D → Dense "embedding") trains on a few synthetic identities
at 32x32 with `jit_compile=False`, `random_status=-1` (no augmentation) and `seed=0` (deterministic image order).
Runs that need a fresh process (a kill, device setup for tf.distribute) run scripts written into tmp_path.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import GhostFaceNets
import losses
import schedule
import synthetic_faces
import train
import training_heads
from heads import NormDense

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES, IMAGES_PER_CLASS, BATCH = 6, 8, 16
STEPS_PER_EPOCH = CLASSES * IMAGES_PER_CLASS // BATCH


# ----------------------------------------------------------------------------------------------------------------
# Data, models and helpers


@pytest.fixture(scope="module")
def data_dirs(tmp_path_factory):
    """`(six-class folder, four-class folder, val.bin)`: 8 synthetic images per training identity, 20 pairs of
    unseen identities."""
    root = tmp_path_factory.mktemp("train_data")
    train_dir, bin_path = synthetic_faces.build_demo(
        root / "demo", train_ids=CLASSES, images_per_id=IMAGES_PER_CLASS, test_ids=4, test_images_per_id=6,
        num_pairs=10, workers=1,
    )
    four_dir = root / "four" / "train"
    for name in sorted(os.listdir(train_dir))[:4]:
        shutil.copytree(os.path.join(train_dir, name), four_dir / name)
    return str(train_dir), str(four_dir), str(bin_path)


def tiny_basic_model(name="tiny"):
    """Input 32x32x3 → Conv2D(8, 3, strides 2) → global average → Dense(16) named `embedding`."""
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(inputs))
    return keras.Model(inputs, keras.layers.Dense(16, name="embedding")(features), name=name)


def make_train(tmp_path, data_dir, basic_model=None, save_path="tiny.h5", **options):
    """A `Train` writing into tmp_path, without XLA, augmentation or progress bars, deterministic data order."""
    settings = {
        "batch_size": BATCH, "checkpoint_dir": tmp_path / "checkpoints", "cache_dir": tmp_path / "cache",
        "jit_compile": False, "verbose": 0, "seed": 0, "random_status": -1,
    }
    settings.update(options)
    return train.Train(data_dir, save_path, basic_model=basic_model, **settings)


def sgd(lr=0.1, momentum=0.9):
    return keras.optimizers.SGD(lr, momentum=momentum)


def head_layer(model):
    """The single NormDense `arcface` layer of a training model."""
    [layer] = [layer for layer in model.layers if layer.name == "arcface"]
    return layer


def weights_of(model):
    return [np.array(weight) for weight in model.get_weights()]


def assert_weights_equal(actual, expected, **tolerance):
    assert len(actual) == len(expected)
    for left, right in zip(actual, expected, strict=True):
        np.testing.assert_allclose(left, right, **tolerance)


def read_history(tmp_path, stem="tiny"):
    return json.loads((tmp_path / "checkpoints" / f"{stem}_hist.json").read_text())


def sample_images(data_dir, count=8):
    """`count` decoded training images (N, 32, 32, 3) in [-1, 1] and their one-hot labels, in the dataset's order."""
    import data

    dataset, _ = data.prepare_dataset(data_dir, batch_size=count, img_shape=(32, 32), is_train=False)
    images, labels = next(iter(dataset))
    return images.numpy(), labels.numpy()


def normalized(matrix, axis):
    return matrix / np.sqrt(np.maximum(np.sum(matrix**2, axis=axis, keepdims=True), 1e-5))


class HeadSnapshot(keras.callbacks.Callback):
    """Record the NormDense kernel at the start of every fit (after the head was (re)built)."""

    def __init__(self):
        super().__init__()
        self.kernels = []

    def on_train_begin(self, logs=None):
        heads = [layer for layer in self.model.layers if isinstance(layer, NormDense)]
        self.kernels.append(np.array(heads[0].get_weights()[0]) if heads else None)


# ----------------------------------------------------------------------------------------------------------------
# Scheduler keys


def test_loss_type_softmax_then_arcface_heads(tmp_path, data_dirs):
    """A string loss builds Dense + softmax (`softmax` output, probabilities of emb @ W); an ArcFace loss replaces
    it by NormDense `arcface` (cosines of the normalised embedding and columns); the epoch count continues."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    assert tt.train([{"loss": "categorical_crossentropy", "epoch": 1, "optimizer": sgd()}]) == 1
    assert tt.model.output_names == ["softmax"]
    logits_layer = tt.model.get_layer("softmax_logits")
    assert isinstance(logits_layer, keras.layers.Dense) and logits_layer.units == CLASSES
    images, _ = sample_images(data_dirs[0])
    logits = np.array(tt.basic_model(images)) @ logits_layer.get_weights()[0]
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(tt.model(images), expected / expected.sum(1, keepdims=True), rtol=1e-4, atol=1e-6)

    assert tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], initial_epoch=1) == 2
    assert tt.model.output_names == ["arcface"]
    assert not [layer for layer in tt.model.layers if layer.name in ("softmax_logits", "softmax")]
    head = head_layer(tt.model)
    assert isinstance(head, NormDense) and head.units == CLASSES
    cosine = normalized(np.array(tt.basic_model(images)), 1) @ normalized(head.get_weights()[0], 0)
    np.testing.assert_allclose(tt.model(images), cosine, rtol=1e-4, atol=1e-5)
    assert len(read_history(tmp_path)["lr"]) == 2
    assert sorted(os.listdir(tmp_path / "checkpoints")) == [
        "tiny.keras", "tiny_basic_model_latest.h5", "tiny_epoch01.keras", "tiny_epoch02.keras", "tiny_hist.json"
    ]


def cosine_cross_entropy(y_true, y_pred):
    """Softmax cross-entropy of 16 × cosine logits (a loss whose name says nothing about its head)."""
    return keras.losses.categorical_crossentropy(y_true, 16 * y_pred, from_logits=True)


def test_type_key_overrides_the_inferred_head(tmp_path, data_dirs):
    """`type: arcface` gives a NormDense head to a loss that would otherwise get the softmax head."""
    assert schedule.loss_type_of(cosine_cross_entropy) == "softmax"
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    tt.train([{"loss": cosine_cross_entropy, "type": "arcface", "epoch": 1, "optimizer": sgd()}])
    assert tt.model.output_names == ["arcface"] and isinstance(tt.model.layers[-1], NormDense)
    assert np.isfinite(read_history(tmp_path)["loss"][0])


def test_bottleneck_only_trains_the_head_alone(tmp_path, data_dirs):
    """`bottleneckOnly`: the basic model's weights stay, the head's change, the epoch count, history and
    checkpoints do not advance; the next stage trains everything again."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    snapshot = HeadSnapshot()
    tt.custom_callbacks.append(snapshot)
    basic_before = weights_of(tt.basic_model)
    end = tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "bottleneckOnly": True, "optimizer": sgd()}])
    assert end == 0
    assert_weights_equal(weights_of(tt.basic_model), basic_before, rtol=0, atol=0)
    assert np.abs(head_layer(tt.model).get_weights()[0] - snapshot.kernels[0]).max() > 1e-3
    assert int(tt.model.optimizer.iterations) == 2 * STEPS_PER_EPOCH
    assert not (tmp_path / "checkpoints" / "tiny_hist.json").exists()
    assert not list((tmp_path / "checkpoints").glob("*.keras"))

    assert tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}]) == 1
    assert np.abs(weights_of(tt.basic_model)[0] - basic_before[0]).max() > 1e-4
    assert len(read_history(tmp_path)["lr"]) == 1
    assert int(tt.model.optimizer.iterations) == 3 * STEPS_PER_EPOCH  # rebuilt for all variables, count kept


def test_centerloss_adds_an_embedding_output_with_its_weight(tmp_path, data_dirs):
    """`centerloss: 0.1` prepends `center_embedding` with a CenterLoss whose centres are saved to
    `<stem>_centers.npy`; `lossWeight` weights the head; the total loss is 0.1·center + 2·arcface."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    stage = {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "centerloss": 0.1, "lossWeight": 2,
             "optimizer": sgd(0.01)}
    tt.train([stage])
    assert stage == {"loss": stage["loss"], "epoch": 1, "centerloss": 0.1, "lossWeight": 2,
                     "optimizer": stage["optimizer"]}  # the caller's dict is not changed
    assert tt.model.output_names == ["center_embedding", "arcface"]
    center_loss = tt.model.loss[0]
    assert isinstance(center_loss, losses.CenterLoss) and tt.model.loss[1] is stage["loss"]
    assert list(tt.model._compile_loss._user_loss_weights) == [0.1, 2]
    centers = np.load(tmp_path / "checkpoints" / "tiny_centers.npy")
    assert centers.shape == (CLASSES, 16) and np.abs(centers).max() > 0
    np.testing.assert_allclose(centers, keras.ops.convert_to_numpy(center_loss.centers), rtol=1e-6)
    history = read_history(tmp_path)
    total = 0.1 * history["center_embedding_loss"][0] + 2 * history["arcface_loss"][0]
    np.testing.assert_allclose(history["loss"][0], total, rtol=1e-4)

    # Continuing from the checkpoint restores its centres into the .npy file (here clobbered, as a kill could).
    np.save(tmp_path / "checkpoints" / "tiny_centers.npy", np.zeros_like(centers))
    make_train(tmp_path, data_dirs[0], model=tmp_path / "checkpoints" / "tiny_epoch01.keras")
    np.testing.assert_allclose(np.load(tmp_path / "checkpoints" / "tiny_centers.npy"), centers, rtol=1e-6)


def test_triplet_uses_class_grouped_batches_and_alpha(tmp_path, data_dirs):
    """A triplet loss alone trains the embedding (`triplet_embedding`, no head); `triplet: 0.5` + `alpha: 0.2`
    prepends a `triplet_embedding` output with BatchHardTripletLoss(alpha=0.2), weighted 0.5, on batches of
    4 classes × 4 images."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    tt.train([{"loss": losses.BatchHardTripletLoss(alpha=0.3), "epoch": 1, "optimizer": sgd(0.01)}])
    assert tt.model.output_names == ["triplet_embedding"] and not training_heads.head_layers_of(tt.model)
    images, labels = next(iter(tt.train_ds))
    counts = np.bincount(np.argmax(labels, -1), minlength=CLASSES)
    assert sorted(counts[counts > 0]) == [4, 4, 4, 4] and images.shape == (BATCH, 32, 32, 3)

    tt.train([{"loss": "categorical_crossentropy", "epoch": 1, "triplet": 0.5, "alpha": 0.2}], initial_epoch=1)
    assert tt.model.output_names == ["triplet_embedding", "softmax"]
    triplet_loss = tt.model.loss[0]
    assert isinstance(triplet_loss, losses.BatchHardTripletLoss) and triplet_loss.alpha == 0.2
    history = read_history(tmp_path)
    total = 0.5 * history["triplet_embedding_loss"][-1] + history["softmax_loss"][-1]
    np.testing.assert_allclose(history["loss"][-1], total, rtol=1e-4)


def test_loss_top_k_rebuilds_the_head_and_copies_matching_weights(tmp_path, data_dirs):
    """`lossTopK: 3` rebuilds NormDense with 3·classes columns (logit = best sub-centre); a later head with the
    same kernel shape (MagFace: one more norm column) starts from the previous kernel."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    snapshot = HeadSnapshot()
    tt.custom_callbacks.append(snapshot)
    tt.train([
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": sgd(0.01)},
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "lossTopK": 3},
    ])
    head = head_layer(tt.model)
    assert head.loss_top_k == 3 and head.get_weights()[0].shape == (16, 3 * CLASSES)
    assert snapshot.kernels[1].shape == (16, 3 * CLASSES)
    images, _ = sample_images(data_dirs[0])
    cosine = normalized(np.array(tt.basic_model(images)), 1) @ normalized(head.get_weights()[0], 0)
    np.testing.assert_allclose(tt.model(images), cosine.reshape(-1, CLASSES, 3).max(-1), rtol=1e-4, atol=1e-5)

    top_k_kernel = head.get_weights()[0]
    tt.train([{"loss": losses.MagFaceLoss(scale=16), "epoch": 1, "lossTopK": 3}], initial_epoch=2)
    new_head = head_layer(tt.model)
    assert new_head is not head and new_head.append_norm
    np.testing.assert_array_equal(snapshot.kernels[2], top_k_kernel)
    assert tt.model.output_shape == (None, CLASSES + 1)


def test_optimizer_none_reuses_the_previous_optimizer(tmp_path, data_dirs):
    """A stage without `optimizer` keeps the same optimizer object; its iterations continue across stages. When
    the head is rebuilt (`lossTopK`), the optimizer is rebuilt with the same configuration, iteration count and
    the momentum of the backbone variables."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    optimizer = sgd()
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": optimizer},
              {"loss": losses.ArcfaceLoss(scale=32), "epoch": 2}])
    assert tt.model.optimizer is optimizer
    assert int(optimizer.iterations) == 3 * STEPS_PER_EPOCH
    assert tt.model.loss.scale == 32

    momentum = {variable.path: keras.ops.convert_to_numpy(variable) for variable in optimizer.variables}
    model = tt.model
    tt.init_dataset(triplet=False, initial_epoch=3)
    tt.build_model("arcface", losses.ArcfaceLoss(), 3, [])
    rebuilt = train.optimizer_for(optimizer, tt.model)
    assert rebuilt is not optimizer and rebuilt.get_config() == optimizer.get_config()
    assert int(rebuilt.iterations) == 3 * STEPS_PER_EPOCH
    carried = {variable.path: keras.ops.convert_to_numpy(variable) for variable in rebuilt.variables}
    kernel_momentum = f"{optimizer.name}/{model.layers[1].kernel.path.replace('/', '_')}_momentum"
    np.testing.assert_array_equal(carried[kernel_momentum], momentum[kernel_momentum])
    assert np.abs(carried[kernel_momentum]).max() > 0
    [head_momentum] = [path for path in carried if path.startswith(f"{optimizer.name}/arcface")]
    assert carried[head_momentum].shape == (16, 3 * CLASSES) and not carried[head_momentum].any()


# ----------------------------------------------------------------------------------------------------------------
# basic_model / model table, class count, output weight decay


def test_basic_model_and_model_table(tmp_path, data_dirs):
    """Each row of the table: a basic model file gets a new head; a model file resumes with its head, loss and
    optimizer; a model object (with an embedding layer index) keeps its head; both None reload
    `<checkpoint_dir>/<stem>.keras` or fail with the help table."""
    keras.utils.set_random_seed(0)
    basic = tiny_basic_model()
    basic_path = tmp_path / "basic.keras"
    basic.save(basic_path)
    tt = make_train(tmp_path, data_dirs[0], str(basic_path))
    assert tt.model is None and tt.basic_model is not basic
    assert_weights_equal(weights_of(tt.basic_model), weights_of(basic), rtol=0, atol=0)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": sgd()}])
    saved_head = head_layer(tt.model).get_weights()[0]

    # None + model file: the saved head, loss and optimizer state come back.
    checkpoint = tmp_path / "checkpoints" / "tiny.keras"
    resumed = make_train(tmp_path, data_dirs[0], model=str(checkpoint))
    np.testing.assert_array_equal(head_layer(resumed.model).get_weights()[0], saved_head)
    assert resumed.basic_model.output_shape == (None, 16)
    assert int(resumed.model.optimizer.iterations) == STEPS_PER_EPOCH
    loaded_head = head_layer(resumed.model)
    resumed.train([{"epoch": 1}], initial_epoch=1)
    assert head_layer(resumed.model) is loaded_head
    assert int(resumed.model.optimizer.iterations) == 2 * STEPS_PER_EPOCH
    assert isinstance(resumed.model.loss, losses.ArcfaceLoss) and resumed.model.loss.scale == 16
    latest_weights = weights_of(resumed.model)

    # int (embedding layer index) + model object: the basic model ends at that layer, the head is kept.
    index = [layer.name for layer in tt.model.layers].index("embedding")
    given = make_train(tmp_path / "given", data_dirs[0], basic_model=index, model=tt.model)
    assert given.basic_model.output is tt.model.layers[index].output
    given.train([{"loss": losses.ArcfaceLoss(scale=16), "type": "arcface", "epoch": 1}])
    assert head_layer(given.model) is head_layer(tt.model)
    assert given.model.outputs[-1] is tt.model.outputs[-1]

    # None + None: reload <checkpoint_dir>/<stem>.keras, or a clear error with the table.
    reloaded = make_train(tmp_path, data_dirs[0])
    assert_weights_equal(weights_of(reloaded.model), latest_weights, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match=r"missing\.keras does not exist") as error:
        make_train(tmp_path, data_dirs[0], save_path="missing.h5")
    assert train.MODEL_HELP in str(error.value)
    with pytest.raises(ValueError, match="basic_model / model combinations"):
        make_train(tmp_path, data_dirs[0], basic_model=3.5, model=None)


def test_head_rebuilt_when_the_class_count_changes(tmp_path, data_dirs):
    """`reset_dataset(path)` with 4 classes instead of 6: the next stage's NormDense has 4 units."""
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": sgd()}])
    assert head_layer(tt.model).units == CLASSES
    tt.reset_dataset(data_dirs[1])
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], initial_epoch=1)
    head = head_layer(tt.model)
    assert tt.classes == 4 and head.units == 4 and head.get_weights()[0].shape == (16, 4)
    assert tt.steps_per_epoch == 4 * IMAGES_PER_CLASS // BATCH


@pytest.mark.parametrize(
    ("output_weight_decay", "backbone_decay", "expected"), [(0, 0, None), (0.5, 0, 0.25), (1, 5e-4, 2.5e-4)]
)
def test_output_weight_decay(tmp_path, data_dirs, output_weight_decay, backbone_decay, expected):
    """0: no head regulariser; (0, 1): L2(v/2); 1 after `add_l2_regularizer_2_model(m, 5e-4)`: L2(2.5e-4), whose
    penalty is 2.5e-4 · sum(W²)."""
    basic = tiny_basic_model()
    if backbone_decay:
        basic = GhostFaceNets.add_l2_regularizer_2_model(basic, backbone_decay)
    tt = make_train(tmp_path, data_dirs[0], basic, output_weight_decay=output_weight_decay)
    tt.init_dataset(triplet=False, initial_epoch=0)
    tt.build_model("arcface", losses.ArcfaceLoss(), 1, [])
    head = head_layer(tt.model)
    if expected is None:
        assert head.kernel_regularizer is None and not head.losses
        return
    assert isinstance(head.kernel_regularizer, keras.regularizers.L2)
    np.testing.assert_allclose(head.kernel_regularizer.l2, expected, rtol=1e-6)
    [penalty] = head.losses
    np.testing.assert_allclose(float(penalty), expected * np.sum(head.get_weights()[0] ** 2), rtol=1e-5)


class BestAccuracyProbe(keras.callbacks.Callback):
    """Record the eval callbacks' best accuracy when a fit starts."""

    def __init__(self, evals):
        super().__init__()
        self.evals, self.values = evals, []

    def on_train_begin(self, logs=None):
        self.values.append([callback.max_accuracy for callback in self.evals])


def test_continued_run_starts_from_the_best_recorded_accuracy(tmp_path, data_dirs, monkeypatch):
    """With `eval_paths`, `_hist.json` holds the bin's accuracy every epoch and the best basic model is saved; a
    run continued at epoch 2 (model= checkpoint, new process state) starts from the best recorded accuracy, so
    only a better model replaces that file."""
    monkeypatch.chdir(tmp_path)
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model(), eval_paths=[data_dirs[2]])
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": sgd()}])
    accuracies = read_history(tmp_path)["val"]
    assert len(accuracies) == 2 and all(0.5 <= value <= 1 for value in accuracies)
    assert tt.my_evals[0].max_accuracy == max(accuracies)
    [best_file] = (tmp_path / "checkpoints").glob("tiny_basic_val_epoch_*.h5")
    assert best_file.name.endswith(f"_{max(accuracies):f}.h5")

    checkpoint = tmp_path / "checkpoints" / "tiny_epoch02.keras"
    continued = make_train(tmp_path, data_dirs[0], model=checkpoint, eval_paths=[data_dirs[2]])
    probe = BestAccuracyProbe(continued.my_evals)
    continued.custom_callbacks.append(probe)
    continued.train([{"epoch": 1}], initial_epoch=2)
    assert probe.values == [[max(accuracies)]]
    history = read_history(tmp_path)["val"]
    assert history[:2] == accuracies and len(history) == 3
    assert continued.my_evals[0].max_accuracy == max(history)


def test_resume_runs_the_bottleneck_stages_not_run_yet(tmp_path, data_dirs):
    """`resume` after epoch 1 of [bottleneckOnly, 1 epoch, bottleneckOnly, 1 epoch] skips the first two stages
    and runs the other two (a bottleneck stage saves no checkpoint, so epoch 1's is from before it)."""
    keras.utils.set_random_seed(0)
    schedule = [
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "bottleneckOnly": True, "optimizer": sgd()},
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1},
        {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "bottleneckOnly": True},
        {"loss": losses.ArcfaceLoss(scale=32), "epoch": 1},
    ]
    assert make_train(tmp_path, data_dirs[0], tiny_basic_model()).train(schedule[:2]) == 1
    resumed = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    snapshot = HeadSnapshot()
    resumed.custom_callbacks.append(snapshot)
    assert resumed.resume(schedule) == 2
    assert len(snapshot.kernels) == 2 and resumed.model.loss.scale == 32
    assert int(resumed.model.optimizer.iterations) == 4 * STEPS_PER_EPOCH
    assert len(read_history(tmp_path)["lr"]) == 2


# ----------------------------------------------------------------------------------------------------------------
# Exact resume after SIGKILL


RESUME_SCRIPT = """
import os, signal, sys
sys.path.insert(0, {repo!r})
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import keras, numpy as np, tensorflow as tf
import losses, train

tf.config.experimental.enable_op_determinism()
mode, data_dir, checkpoint_dir, out = sys.argv[1:5]
keras.utils.set_random_seed(0)
inputs = keras.Input((32, 32, 3))
features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(inputs))
basic_model = keras.Model(inputs, keras.layers.Dense(16, name="embedding")(features), name="tiny")
options = dict(batch_size={batch}, checkpoint_dir=checkpoint_dir, cache_dir=checkpoint_dir, jit_compile=False,
               verbose=0, seed=0, random_status=-1, lr_base=0.1, lr_decay=0.5, lr_decay_steps=3, lr_min=1e-3)
schedule = [
    {{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9),
      "centerloss": 0.1}},
    {{"loss": losses.ArcfaceLoss(scale=32), "epoch": 1}},
]


class KillInEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if self.epoch == 1 and batch == 1:
            os.kill(os.getpid(), signal.SIGKILL)


if mode == "killed_saving":
    replace_file = os.replace

    def replace_unless_epoch2_checkpoint(source, target):
        if str(target).endswith("run_epoch02.keras"):
            os.kill(os.getpid(), signal.SIGKILL)
        replace_file(source, target)

    os.replace = replace_unless_epoch2_checkpoint
if mode == "model_file":
    tt = train.Train(data_dir, "run.h5", model=os.path.join(checkpoint_dir, "run_epoch01.keras"), **options)
    end = tt.train([{{"epoch": 1, "centerloss": 0.1}}, schedule[1]], initial_epoch=1)
else:
    tt = train.Train(data_dir, "run.h5", basic_model=basic_model, **options)
    if mode == "killed_in_epoch":
        tt.custom_callbacks.append(KillInEpoch2())
    end = tt.resume(schedule) if mode == "resume" else tt.train(schedule)
iterations = int(keras.ops.convert_to_numpy(tt.model.optimizer.iterations))
np.savez(out, end=end, iterations=iterations, *tt.model.get_weights())
"""


def start_script(path, *args, env=None):
    """Start a Python script in a fresh interpreter from the repository root (output captured)."""
    return subprocess.Popen([sys.executable, str(path), *map(str, args)], cwd=REPO_ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish_scripts(processes, expected_codes=None, timeout=300):
    """Wait for the processes; assert each exit code (0 by default), showing the output's end on failure."""
    expected_codes = expected_codes or [0] * len(processes)
    for process, expected in zip(processes, expected_codes, strict=True):
        output = process.communicate(timeout=timeout)[0]
        assert process.returncode == expected, output[-3000:]


def saved_run(path):
    """(final epoch, optimizer iterations, weights) of a run saved by the scripts."""
    saved = np.load(path)
    weights = [saved[f"arr_{index}"] for index in range(len(saved.files) - 2)]
    return int(saved["end"]), int(saved["iterations"]), weights


@pytest.mark.slow
def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, data_dirs):
    """Run A trains 2 stages (3 epochs, cosine LR per batch, SGD momentum, center loss in the first)
    uninterrupted. Run B is SIGKILLed in the middle of epoch 2, then continues in a new process with
    `resume(schedule)` (B1); run C is SIGKILLed while the epoch-2 checkpoint is being written, then continues
    with `model=` the epoch-1 checkpoint and `train(rest, initial_epoch=1)` (C1). Both end with A's weights,
    centres, optimizer iterations, learning rates and `_hist.json` (3 entries each, none lost or duplicated)."""
    script = tmp_path / "resume_run.py"
    script.write_text(RESUME_SCRIPT.format(repo=str(REPO_ROOT), batch=BATCH))
    full_dir, killed_dir, saving_dir = tmp_path / "full", tmp_path / "killed", tmp_path / "killed_saving"
    finish_scripts([start_script(script, "full", data_dirs[0], full_dir, tmp_path / "full.npz"),
                    start_script(script, "killed_in_epoch", data_dirs[0], killed_dir, tmp_path / "unused.npz"),
                    start_script(script, "killed_saving", data_dirs[0], saving_dir, tmp_path / "unused.npz")],
                   expected_codes=[0, -signal.SIGKILL, -signal.SIGKILL])
    assert sorted(path.name for path in killed_dir.glob("run*")) == [
        "run.keras", "run_centers.npy", "run_epoch01.keras", "run_hist.json"
    ]
    assert not list(killed_dir.glob(".*tmp*"))
    # Killed while the epoch-2 checkpoint was being written: the history already has epoch 2, the file is not there.
    assert not (saving_dir / "run_epoch02.keras").exists() and list(saving_dir.glob(".run_epoch02.tmp*.keras"))
    assert len(json.loads((saving_dir / "run_hist.json").read_text())["lr"]) == 2

    end, iterations, weights = saved_run(tmp_path / "full.npz")
    assert (end, iterations) == (3, 3 * STEPS_PER_EPOCH)
    full_history = json.loads((full_dir / "run_hist.json").read_text())
    assert len(full_history["lr"]) == 3 and len(full_history["center_embedding_loss"]) == 2
    full_centers = np.load(full_dir / "run_centers.npy")
    runs = (("resume", killed_dir), ("model_file", saving_dir))
    finish_scripts([start_script(script, mode, data_dirs[0], run_dir, tmp_path / f"{mode}.npz")
                    for mode, run_dir in runs])
    for mode, run_dir in runs:
        resumed_end, resumed_iterations, resumed_weights = saved_run(tmp_path / f"{mode}.npz")
        assert (resumed_end, resumed_iterations) == (3, 3 * STEPS_PER_EPOCH), mode
        assert_weights_equal(resumed_weights, weights, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.load(run_dir / "run_centers.npy"), full_centers, rtol=1e-5, atol=1e-6)
        history = json.loads((run_dir / "run_hist.json").read_text())
        assert history.keys() == full_history.keys(), mode
        for key, values in full_history.items():
            assert len(history[key]) == len(values), (mode, key)
            np.testing.assert_allclose(history[key], values, rtol=1e-5, err_msg=f"{mode} {key}")
        assert sorted(path.name for path in run_dir.glob("run_epoch*.keras")) == [
            "run_epoch01.keras", "run_epoch02.keras", "run_epoch03.keras"
        ]


# ----------------------------------------------------------------------------------------------------------------
# NaN guard, mixed precision, XLA

POISON = keras.Variable(0.0, trainable=False, name="poison")


@keras.saving.register_keras_serializable(package="test_train")
class PoisonedArcface(losses.ArcfaceLoss):
    """ArcFace plus the module's POISON variable (0.0, or NaN to simulate a diverging run)."""

    def call(self, y_true, y_pred):
        return super().call(y_true, y_pred) + POISON


class PoisonAtEpoch2(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        POISON.assign(float("nan") if epoch == 1 else 0.0)


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, data_dirs):
    """A loss that turns NaN in epoch 2 stops training at that batch, skips the next stage and saves nothing for
    that epoch: `<stem>.keras` stays the epoch-1 model, loadable with finite weights."""
    keras.utils.set_random_seed(0)
    POISON.assign(0.0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    snapshot = HeadSnapshot()
    tt.custom_callbacks += [PoisonAtEpoch2(), snapshot]
    try:
        tt.train([{"loss": PoisonedArcface(scale=16), "epoch": 3, "optimizer": sgd()},
                  {"loss": losses.ArcfaceLoss(scale=32), "epoch": 1}])
    finally:
        POISON.assign(0.0)
    assert tt.nan_guard.nan_detected and len(snapshot.kernels) == 1
    assert int(tt.model.optimizer.iterations) == STEPS_PER_EPOCH + 1
    checkpoints = tmp_path / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("*.keras")) == ["tiny.keras", "tiny_epoch01.keras"]
    assert not (checkpoints / "tiny_basic_model_latest.h5").exists()
    latest = tt.load(str(checkpoints / "tiny.keras"))
    epoch1 = tt.load(str(checkpoints / "tiny_epoch01.keras"))
    assert all(np.isfinite(weight).all() for weight in latest.get_weights())
    assert_weights_equal(weights_of(latest), weights_of(epoch1), rtol=0, atol=0)
    assert int(latest.optimizer.iterations) == STEPS_PER_EPOCH


def test_command_line_exit_status_says_whether_training_failed(tmp_path, data_dirs, monkeypatch, capsys):
    """`python train.py` (`train.command_line`) returns 1 when a NaN loss stopped training, 0 after a good run;
    `main` returns the accuracies either way. An accuracy that is missing or NaN is a failure too."""
    monkeypatch.setattr(train, "build_basic_model", lambda args: tiny_basic_model())
    monkeypatch.setattr(train, "build_schedule", lambda args: [
        {"loss": PoisonedArcface(scale=16), "epoch": args.epochs, "optimizer": sgd()}
    ])
    argv = ["--data_path", data_dirs[0], "--eval_paths", data_dirs[2], "--epochs", "1", "--batch_size", str(BATCH),
            "--input_size", "32", "--random_status", "-1"]
    POISON.assign(float("nan"))
    try:
        assert train.command_line([*argv, "--checkpoint_dir", str(tmp_path / "nan"), "--save_path", "n.h5"]) == 1
    finally:
        POISON.assign(0.0)
    assert "Training failed: a NaN loss stopped training" in capsys.readouterr().out
    assert train.command_line([*argv, "--checkpoint_dir", str(tmp_path / "good"), "--save_path", "g.h5"]) == 0
    before, after = train.main([*argv, "--checkpoint_dir", str(tmp_path / "main"), "--save_path", "m.h5"])
    assert list(before) == list(after) == ["val"] and 0 <= after["val"] <= 1

    class Finished:
        nan_guard = None

    assert train.training_failure(Finished(), {"val": 0.9}, [data_dirs[2]]) is None
    assert "not computed for ['val']" in train.training_failure(Finished(), {"val": float("nan")}, [data_dirs[2]])
    assert "not computed" in train.training_failure(Finished(), {}, [data_dirs[2]])


def test_mixed_precision_keeps_heads_and_losses_float32(tmp_path, data_dirs):
    """Under mixed_float16 the backbone computes in float16 while the heads (NormDense, center embedding) and
    the losses are float32; two stages (the second rebuilds the head) train to finite losses."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        keras.utils.set_random_seed(0)
        tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
        tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": sgd(0.01)},
                  {"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "lossTopK": 2, "centerloss": 0.1}])
        assert tt.basic_model.outputs[0].dtype == "float16"
        assert [output.dtype for output in tt.model.outputs] == ["float32", "float32"]
        assert head_layer(tt.model).compute_dtype == "float32"
        assert isinstance(tt.model.optimizer, keras.optimizers.LossScaleOptimizer)
        images, labels = sample_images(data_dirs[0])
        center_out, head_out = tt.model(images)
        assert keras.ops.convert_to_numpy(tt.model.loss[1](labels, head_out)).dtype == np.float32
        assert keras.ops.convert_to_numpy(tt.model.loss[0](labels, center_out)).dtype == np.float32
        history = read_history(tmp_path)
        assert len(history["loss"]) == 2 and all(np.isfinite(history["loss"]))
    finally:
        keras.mixed_precision.set_global_policy("float32")


@pytest.mark.slow
def test_xla_training_matches_the_graph_run(tmp_path, data_dirs):
    """`jit_compile=True` (XLA) trains one epoch to the weights of the run without XLA."""
    results = []
    for jit_compile in (True, False):
        keras.utils.set_random_seed(0)
        tt = make_train(tmp_path / str(jit_compile), data_dirs[0], tiny_basic_model(), jit_compile=jit_compile)
        tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1, "optimizer": sgd()}])
        results.append((tt.model.jit_compile, weights_of(tt.model)))
    assert [jit for jit, _ in results] == [True, False]
    assert_weights_equal(results[0][1], results[1][1], rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------
# tf.distribute

DISTRIBUTED_SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
import tensorflow as tf

mode, data_dir, out_dir, sample_rate, model_parallel = sys.argv[1:6]
if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
elif mode == "multiworker":
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
else:
    strategy = tf.distribute.get_strategy()
import keras, numpy as np
import losses, train

tf.config.experimental.enable_op_determinism()
with strategy.scope():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(inputs))
    basic_model = keras.Model(inputs, keras.layers.Dense(16, name="embedding")(features), name="tiny")
    initial = basic_model.get_weights()
    tt = train.Train(data_dir, "dist.h5", basic_model=basic_model, batch_size={images} // strategy.num_replicas_in_sync,
                     checkpoint_dir=out_dir, cache_dir=out_dir, jit_compile=False, verbose=0, seed=0,
                     random_status=-1, lr_base=0.1, lr_decay=0,
                     sample_rate=None if sample_rate == "None" else float(sample_rate),
                     model_parallel=model_parallel == "True")
    tt.train([{{"loss": losses.ArcfaceLoss(scale=16), "epoch": 2, "optimizer": keras.optimizers.SGD(0.1)}}])
iterations = int(keras.ops.convert_to_numpy(tt.model.optimizer.iterations))
weights = [weight for layer in tt.model.layers for weight in layer.get_weights()]  # a sharded head: every class
np.savez(os.path.join(out_dir, "weights.npz"), global_batch=tt.global_batch_size, steps=tt.steps_per_epoch,
         iterations=iterations, *weights)
np.savez(os.path.join(out_dir, "initial.npz"), *initial)
"""


def distributed_weights(out_dir):
    """({global_batch, steps, iterations}, weights, initial basic-model weights) saved by DISTRIBUTED_SCRIPT."""
    saved, initial = np.load(Path(out_dir) / "weights.npz"), np.load(Path(out_dir) / "initial.npz")
    counts = {key: int(saved[key]) for key in ("global_batch", "steps", "iterations")}
    weights = [saved[f"arr_{index}"] for index in range(len(saved.files) - 3)]
    return counts, weights, [initial[f"arr_{index}"] for index in range(len(initial.files))]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_runs_of(root, data_dir, sample_rate=None, model_parallel=False):
    """Start the distributed runs of DISTRIBUTED_SCRIPT on `data_dir` (32 images = one global batch per step)
    together: single device (waited for), Mirrored, and two MultiWorker processes (loopback TF_CONFIG, ports chosen
    free); returns {"root", "single", "mirrored", "workers"} (the processes of the last two)."""
    script = root / "distributed_run.py"
    script.write_text(DISTRIBUTED_SCRIPT.format(repo=str(REPO_ROOT), images=4 * IMAGES_PER_CLASS))
    head = (sample_rate, model_parallel)
    single = start_script(script, "single", data_dir, root / "single", *head)
    mirrored = start_script(script, "mirrored", data_dir, root / "mirrored", *head)
    cluster = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)]}
    workers = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config))
        workers.append(start_script(script, "multiworker", data_dir, root / f"worker{index}", *head, env=env))
    finish_scripts([single])
    return {"root": root, "single": distributed_weights(root / "single"), "mirrored": mirrored, "workers": workers}


def stop_distributed_runs(runs):
    """Kill the Mirrored and MultiWorker processes of `runs` still running."""
    for process in [runs["mirrored"], *runs["workers"]]:
        if process.poll() is None:
            process.kill()
            process.communicate()


@pytest.fixture(scope="module", params=[
    pytest.param((None, False), id="full head"),
    pytest.param((0.5, False), id="partial fc 0.5"),
    # the sharded head is also compared with single-device training in tests/test_partial_fc_sharded.py (in CI)
    pytest.param((1.0, True), id="model-parallel partial fc", marks=pytest.mark.extended),
])
def distributed_runs(data_dirs, tmp_path_factory, request):
    """The distributed runs on the four-class folder with the full head, with Partial FC (`sample_rate`), and with
    the class centres sharded over the replicas (`model_parallel`)."""
    runs = distributed_runs_of(tmp_path_factory.mktemp("distributed"), data_dirs[1], *request.param)
    try:
        yield runs
    finally:
        stop_distributed_runs(runs)


@pytest.mark.slow
def test_mirrored_strategy_equals_single_device(distributed_runs):
    """MirroredStrategy on two logical CPUs, batch 16 per replica (global 32, the whole data set): after 2
    epochs of ArcFace + SGD the weights equal single-device training with batch 32."""
    single_counts, single_weights, initial = distributed_runs["single"]
    finish_scripts([distributed_runs["mirrored"]])
    counts, weights, mirrored_initial = distributed_weights(distributed_runs["root"] / "mirrored")
    assert single_counts == counts == {"global_batch": 32, "steps": 1, "iterations": 2}
    assert_weights_equal(mirrored_initial, initial, rtol=0, atol=0)
    assert np.abs(single_weights[0] - initial[0]).max() > 1e-2  # training moved the weights
    assert_weights_equal(weights, single_weights, rtol=1e-4, atol=5e-5)


@pytest.mark.slow
def test_multi_worker_strategy_equals_single_device(distributed_runs):
    """MultiWorkerMirroredStrategy with two local workers over loopback (TF_CONFIG), batch 16 per worker: the
    chief's weights after 2 epochs equal single-device training with batch 32; only the chief writes into its
    checkpoint folder."""
    single_counts, single_weights, _ = distributed_runs["single"]
    finish_scripts(distributed_runs["workers"])
    root = distributed_runs["root"]
    counts, weights, _ = distributed_weights(root / "worker0")
    assert counts == single_counts
    assert_weights_equal(weights, single_weights, rtol=1e-4, atol=5e-5)
    assert (root / "worker0" / "dist_epoch02.keras").is_file() and (root / "worker0" / "dist_hist.json").is_file()
    assert not list((root / "worker1").glob("dist*"))  # the other worker writes into a private temporary folder


def test_remaining_stages_after_a_break_point():
    """Epochs 0-1 at scale 32, 2-5 at scale 64, then a bottleneck stage: after 3 completed epochs the second
    stage has 3 epochs left and no optimizer (the restored one continues); the bottleneck stage is kept."""
    first, second = {"loss": "a", "epoch": 2, "optimizer": "sgd"}, {"loss": "b", "epoch": 4, "optimizer": "sgd"}
    bottleneck = {"loss": "c", "epoch": 1, "bottleneckOnly": True}
    assert train.remaining_stages([first, second, bottleneck], 3) == [
        {"loss": "b", "epoch": 3, "optimizer": None}, bottleneck
    ]
    assert train.remaining_stages([first, second], 2) == [second]
    assert train.remaining_stages([first, second], 6) == []
    assert train.remaining_stages(first, 0) == [first]
    assert first["epoch"] == 2 and second["optimizer"] == "sgd"  # the caller's dicts are unchanged


def test_build_compiled_state_traces_the_train_step_once_with_the_same_result():
    """Built before `fit`, the optimizer has one momentum slot per trainable variable and the compiled metric its
    state, the train step is traced once instead of twice, and training ends with the same weights and metric as
    when Keras builds everything inside the first step."""

    def trained(prebuild):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse", metrics=["mae"])
        data = np.random.default_rng(0).normal(size=(8, 4)).astype("float32")
        dataset = tf.data.Dataset.from_tensor_slices((data, data[:, :2])).batch(4, drop_remainder=True)
        if prebuild:
            train.build_compiled_state(model, dataset)
            assert model.optimizer.built and len(model.optimizer.momentums) == len(model.trainable_variables) == 4
            assert model.metrics[-1].built
        traces = []
        keras_train_step = model.train_step
        model.train_step = lambda batch: traces.append(1) or keras_train_step(batch)
        history = model.fit(dataset, epochs=2, verbose=0)
        return len(traces), model.get_weights(), history.history["mae"]

    traces_eager, weights_eager, mae_eager = trained(True)
    traces_lazy, weights_lazy, mae_lazy = trained(False)
    assert (traces_eager, traces_lazy) == (1, 2)
    np.testing.assert_allclose(mae_eager, mae_lazy, rtol=1e-6)
    for eager, lazy in zip(weights_eager, weights_lazy, strict=True):
        np.testing.assert_allclose(eager, lazy, rtol=1e-6, atol=1e-7)
