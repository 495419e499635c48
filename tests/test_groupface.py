"""GNAP against its formula, GroupFace against NumPy (embedding, pseudo groups, grouping loss), the grouping loss
balancing groups, serialization, mixed precision, and ArcFace training through train.Train on a JSON-built
TFRecord."""

import json

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import GhostFaceNets
import groupface
import losses
import prepare_data
import train


def numpy_gnap(feature_map):
    """GNAP by its definition: rescale each location by mean_norm / its norm, then average over H, W."""
    norms = np.sqrt(np.sum(feature_map**2, axis=-1, keepdims=True))
    mean_norm = norms.mean(axis=(1, 2), keepdims=True)
    return (feature_map * mean_norm / norms).mean(axis=(1, 2))


def test_gnap_equals_its_formula_on_a_crafted_map():
    feature_map = np.ones((2, 2, 3, 4), dtype=np.float32)
    feature_map[0, 0, 0] = [30.0, 0.0, 0.0, 40.0]  # one location of norm 50 among norms of 2
    feature_map[1] = np.arange(24, dtype=np.float32).reshape(2, 3, 4) - 11.5
    pooled = np.asarray(GhostFaceNets.GlobalNormAwarePooling()(feature_map))
    np.testing.assert_allclose(pooled, numpy_gnap(feature_map.astype(np.float64)), rtol=1e-5)
    # by hand for sample 0: mean norm (50 + 5 * 2) / 6 = 10; the big location becomes (6, 0, 0, 8), the others 5s
    np.testing.assert_allclose(pooled[0], (np.array([6, 0, 0, 8]) + 5 * np.full(4, 5.0)) / 6, rtol=1e-5)
    assert not np.allclose(pooled[0], feature_map[0].mean(axis=(0, 1)))  # differs from average pooling


def test_gnap_head_of_buildin_models_pools_the_batchnormed_map():
    inputs = keras.Input((8, 8, 3))
    stem = keras.Model(inputs, keras.layers.Conv2D(6, 3, strides=2, padding="same")(inputs), name="stem")
    model = GhostFaceNets.buildin_models(stem, dropout=0, emb_shape=5, output_layer="GNAP")
    probe = keras.Model(model.inputs, [model.get_layer("GNAP_batchnorm").output, model.get_layer("GNAP_pool").output])
    images = np.random.default_rng(0).normal(size=(3, 8, 8, 3)).astype("float32")
    normed, pooled = (np.asarray(value, dtype=np.float64) for value in probe(images))
    np.testing.assert_allclose(pooled, numpy_gnap(normed), rtol=1e-4, atol=1e-6)
    assert model.output_shape == (None, 5) and model.layers[-1].name == "embedding"


def feature_model(features=12):
    inputs = keras.Input((features,))
    return keras.Model(inputs, keras.layers.Dense(features, name="features")(inputs), name="toy")


def test_groupface_embedding_is_instance_plus_probability_weighted_groups():
    layer = groupface.GroupFace(groups=3, emb_shape=5, gdn_hidden=7)
    x = np.random.default_rng(1).normal(size=(4, 12)).astype("float32")
    out = np.asarray(layer(x))
    probabilities = np.asarray(layer.group_probabilities(x))
    instance = x @ layer.instance.kernel.numpy()
    groups = (x @ layer.group_embeddings.kernel.numpy()).reshape(4, 3, 5)
    np.testing.assert_allclose(out, instance + np.einsum("nk,nke->ne", probabilities, groups), rtol=1e-4, atol=1e-5)
    assert out.shape == (4, 5) and probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-6)
    assert layer(x).shape == layer.compute_output_shape((4, 12))


def test_pseudo_groups_and_grouping_loss_by_hand():
    probabilities = np.array([[0.7, 0.1, 0.1, 0.1], [0.6, 0.3, 0.05, 0.05], [0.8, 0.05, 0.1, 0.05]], np.float32)
    # batch mean (0.7, 0.15, 0.0833, 0.0667); centred + 1/4 -> row 0 (0.25, 0.2, 0.2667, 0.2833) -> group 3,
    # row 1 (0.15, 0.4, 0.2167, 0.2333) -> 1, row 2 (0.35, 0.15, 0.2667, 0.2333) -> 0
    labels = np.asarray(groupface.balanced_group_labels(probabilities))
    np.testing.assert_array_equal(labels, [3, 1, 0])
    expected = -np.mean(np.log([0.1, 0.3, 0.8]))
    assert float(groupface.self_distributed_grouping_loss(probabilities)) == pytest.approx(expected, rel=1e-5)
    assert float(groupface.group_imbalance(probabilities)) == pytest.approx(4 * 0.7 - 1, rel=1e-5)


def test_grouping_loss_alone_balances_collapsed_groups():
    keras.utils.set_random_seed(0)
    x = tf.constant(np.random.default_rng(0).normal(size=(256, 16)).astype("float32"))
    network = groupface.GroupDecisionNetwork(groups=4, hidden=32, blocks=1)
    network.build((None, 16))
    network.logits.kernel.assign(network.logits.kernel * 0.3)
    network.logits.bias.assign([4.0, 0.0, 0.0, 0.0])  # every sample starts almost surely in group 0
    before = float(groupface.group_imbalance(network(x, training=True)))
    optimizer = keras.optimizers.Adam(0.01)
    for _ in range(40):
        with tf.GradientTape() as tape:
            loss = groupface.self_distributed_grouping_loss(network(x, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, network.trainable_variables), network.trainable_variables,
                                      strict=True))
    after = float(groupface.group_imbalance(network(x, training=True)))
    assignments = np.bincount(np.argmax(network(x, training=False), axis=1), minlength=4)
    assert before > 2.5 and after < 0.4 * before, (before, after)  # 3 = all in one group, 0 = balanced
    assert assignments.max() < 0.55 * len(x) and assignments.min() > 0, assignments


def test_grouping_loss_enters_the_training_loss():
    model = groupface.build_groupface_model(feature_model(), groups=3, emb_shape=6, gdn_hidden=8,
                                            grouping_loss_weight=0.5)
    classifier = keras.Model(model.inputs, keras.layers.Dense(4, name="logits")(model.outputs[0]))
    classifier.compile(keras.optimizers.SGD(0.0), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(16, 12)).astype("float32"), rng.integers(0, 4, 16)
    logits = np.asarray(classifier(x, training=True), dtype=np.float64)
    cross_entropy = np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(16), y])
    probabilities = groupface.group_probability_model(model)(x, training=True)
    grouping = float(groupface.self_distributed_grouping_loss(probabilities))
    step_loss = classifier.train_on_batch(x, y)
    assert step_loss == pytest.approx(cross_entropy + 0.5 * grouping, rel=1e-4)
    assert classifier.losses == []  # the traced step's loss tensor is not handed to eager readers


def test_builder_from_a_basic_model_config_round_trip_and_saving(tmp_path):
    inputs = keras.Input((8, 8, 3))
    stem = keras.Model(inputs, keras.layers.Conv2D(6, 3, padding="same")(inputs), name="stem")
    basic = GhostFaceNets.buildin_models(stem, dropout=0, emb_shape=10, output_layer="GNAP")
    model = groupface.build_groupface_model(basic, groups=2, emb_shape=7, gdn_hidden=4,
                                            kernel_regularizer=keras.regularizers.L2(0.01))
    assert model.get_layer("groupface").input.shape == (None, 10)  # starts from the basic model's embedding input
    assert model.output_shape == (None, 7) and [layer.name for layer in model.layers].count("embedding") == 1
    layer = model.get_layer("groupface")
    clone = groupface.GroupFace.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.get_config()["kernel_regularizer"] is not None
    kernels = [layer.instance.kernel, layer.group_embeddings.kernel, layer.group_decision.logits.kernel,
               *(dense.kernel for dense, _ in layer.group_decision.hidden_layers)]
    expected_l2 = sum(0.01 * float(np.sum(np.square(kernel.numpy()))) for kernel in kernels)
    assert sum(float(loss) for loss in model.losses) == pytest.approx(expected_l2, rel=1e-5)
    images = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    for path in (tmp_path / "gf.keras", tmp_path / "gf.h5"):
        model.save(path)
        loaded = GhostFaceNets.load_model(str(path))
        np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(model(images)), rtol=1e-5, atol=1e-6)
    probabilities = groupface.group_probability_model(model)(images)
    assert probabilities.shape == (2, 2)
    with pytest.raises(ValueError, match="has no GroupFace layer"):
        groupface.group_probability_model(basic)


def test_builder_refuses_a_weighted_embedding_layer():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3, name="embedding")(inputs), name="dense_emb")
    with pytest.raises(ValueError, match="'embedding' layer \\(Dense\\) holds weights"):
        groupface.build_groupface_model(model)


def test_mixed_precision_outputs_float32():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = groupface.build_groupface_model(feature_model(), groups=3, emb_shape=6, gdn_hidden=8)
        x = np.ones((2, 12), "float32")
        embedding, probabilities = model(x), groupface.group_probability_model(model)(x)
        layer = model.get_layer("groupface")
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert layer.compute_dtype == "float16" and layer.group_decision.logits.compute_dtype == "float16"
    assert embedding.dtype == "float32" and probabilities.dtype == "float32"
    converted = GhostFaceNets.convert_to_mixed_float16(groupface.build_groupface_model(feature_model(), 3, 6))
    assert converted.get_layer("groupface").compute_dtype == "float16" and converted(x).dtype == "float32"


def write_pattern_dataset(root, classes=4, per_class=8, seed=0):
    """`classes` identities, each a fixed random 48x48 pattern plus per-image noise, listed in an FFEM JSON with
    a face box of (8, 8, 40, 40)."""
    rng = np.random.default_rng(seed)
    entries = {}
    for label in range(classes):
        pattern = cv2.resize(rng.uniform(0, 255, (6, 6, 3)), (48, 48), interpolation=cv2.INTER_CUBIC)
        for index in range(per_class):
            image = np.clip(pattern + rng.normal(0, 12, pattern.shape), 0, 255).astype(np.uint8)
            name = f"{label}/{index}.png"
            (root / str(label)).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / name), image)
            entries[name] = {"label": label, "x1": 8, "y1": 8, "x2": 40, "y2": 40}
    (root / "image_list.json").write_text(json.dumps(entries))
    return root / "image_list.json"


@pytest.mark.slow
def test_arcface_training_of_groupface_on_a_json_tfrecord_reduces_the_loss(tmp_path):
    json_path = write_pattern_dataset(tmp_path / "images")
    [record], report = prepare_data.json_to_tfrecord(json_path, tmp_path / "images", tmp_path / "faces.tfrecord",
                                                     size=32, shuffle_seed=0)
    assert report.written == 32 and report.problems == []
    keras.utils.set_random_seed(0)
    inputs = keras.Input((32, 32, 3))
    nn = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    backbone = keras.Model(inputs, keras.layers.Conv2D(16, 3, strides=2, activation="relu")(nn), name="tiny")
    model = groupface.build_groupface_model(backbone, groups=4, emb_shape=16, gdn_hidden=16)
    tt = train.Train(record, "gf.h5", basic_model=model, batch_size=8, lr_base=0.01, checkpoint_dir=tmp_path / "ck",
                     jit_compile=False, verbose=0, random_status=-1, seed=0)
    tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 6}])
    history = tt.my_history.history
    total = np.add(history["loss"], history.get("regular_loss", 0))
    assert tt.classes == 4 and len(total) == 6
    assert total[-1] < 0.7 * total[0], total
    assert (tmp_path / "ck" / "gf_basic_model_latest.h5").exists()
