"""Using the models elsewhere (issue 18) and all-or-nothing weight loading (issue 17, item 9).

insightface's model zoo on the insightface export, deepface's ONNX preprocessing (replicated; the real deepface
when installed), the Keras-2 weights layout of the original code, weights-only files given to load_model, and
tf-keras ``.keras`` archives.
"""

import json
import zipfile

import h5py
import keras
import numpy as np
import pytest
from conftest import build_tiny_embedding_model
from test_model_files import V1_STEM, original_v1_recipe

import export
import GhostFaceNets
import inference
import model_files

EXTRAS = "pip install -r requirements-export.txt"


@pytest.fixture(scope="module")
def onnx_extras():
    """Skip (with the reason) unless the ONNX export packages are installed."""
    for name in ("onnx", "tf2onnx", "onnxruntime"):
        pytest.importorskip(name, reason=f"ONNX export needs {name}: {EXTRAS}")


@pytest.fixture(scope="module")
def faces():
    return export.sample_faces(6)


def small_v1(**kwargs):
    """A width-0.5, stride-2 GhostFaceNetV1 (about 2 s to build)."""
    return GhostFaceNets.GhostFaceNetV1(width=0.5, strides=2, weight_decay=0, **kwargs)


def weights_of(model):
    return [np.array(variable.numpy()) for variable in model.weights]


def assert_same_weights(expected, model):
    assert len(expected) == len(model.weights)
    for value, variable in zip(expected, model.weights, strict=True):
        np.testing.assert_array_equal(value, variable.numpy())


def reference_embeddings(model, faces):
    return inference.FaceEmbedder(model, flip=False).embed(faces)


# ----------------------------------------------------------------------------------------------------------------
# Issue 17 item 9: a failed load leaves the model as it was


def test_failed_keras3_load_of_another_architecture_leaves_the_model_unchanged(tmp_path):
    small_v1(emb_shape=256).save_weights(tmp_path / "other.weights.h5")
    model = small_v1()
    before = weights_of(model)
    with pytest.raises(ValueError, match=r"other\.weights\.h5.*left unchanged"):
        GhostFaceNets.load_weights(model, tmp_path / "other.weights.h5")
    assert_same_weights(before, model)


def test_failed_legacy_load_of_another_architecture_leaves_the_model_unchanged(tmp_path):
    GhostFaceNets.save_weights_keras2(small_v1(emb_shape=256), tmp_path / "other.h5")
    model = small_v1()
    before = weights_of(model)
    with pytest.raises(ValueError, match="different architecture"):
        GhostFaceNets.load_weights(model, tmp_path / "other.h5")
    assert_same_weights(before, model)


# ----------------------------------------------------------------------------------------------------------------
# Keras-2 weights layout


def test_keras2_weights_round_trip_v1_and_v2(tmp_path):
    for builder in (GhostFaceNets.GhostFaceNetV1, GhostFaceNets.GhostFaceNetV2):
        source = export.set_batchnorm_statistics(builder(width=0.5, strides=2, weight_decay=0),
                                                 export.sample_faces(4))
        GhostFaceNets.save_weights_keras2(source, tmp_path / "model.h5")
        target = builder(width=0.5, strides=2, weight_decay=0)
        GhostFaceNets.load_weights(target, tmp_path / "model.h5")
        assert_same_weights(weights_of(source), target)


def test_keras2_weights_file_has_the_tf_keras_layout(tmp_path):
    model = small_v1()
    GhostFaceNets.save_weights_keras2(model, tmp_path / "model.h5")
    with h5py.File(tmp_path / "model.h5", "r") as file:
        assert file.attrs["backend"] == "tensorflow" and file.attrs["keras_version"].startswith("2.")
        names = list(file.attrs["layer_names"])
        assert len(names) == len(model.layers)
        assert names[1:4] == ["conv2d", "batch_normalization", "activation"]
        assert names[-2:] == ["pre_embedding", "embedding"]
        assert list(file["conv2d"].attrs["weight_names"]) == ["conv2d/kernel:0"]
        assert len(file[names[0]].attrs["weight_names"]) == 0
    assert not model_files.is_keras3_file(tmp_path / "model.h5")


def layout(file):
    """(layer name, weight names, weight shapes) of every layer but the input (its automatic number depends on
    the session), in file order."""
    return [(name, list(file[name].attrs["weight_names"]),
             [file[name][weight].shape for weight in file[name].attrs["weight_names"]])
            for name in list(file.attrs["layer_names"])[1:]]


def test_keras2_weights_layout_equals_the_original_codes_file(shared_dir, tmp_path):
    original = shared_dir / "fixtures" / f"{V1_STEM}_keras2_weights.h5"
    model = original_v1_recipe()
    GhostFaceNets.load_weights(model, original)
    GhostFaceNets.save_weights_keras2(model, tmp_path / "ours.h5")
    with h5py.File(tmp_path / "ours.h5", "r") as ours, h5py.File(original, "r") as theirs:
        assert layout(ours) == layout(theirs)
        for name, weight_names, _ in layout(theirs):
            for weight in weight_names:
                np.testing.assert_array_equal(ours[name][weight][()], theirs[name][weight][()])


def test_save_weights_keras2_needs_a_plain_h5_name(tmp_path):
    model = build_tiny_embedding_model()
    for name in ("model.weights.h5", "model.keras"):
        with pytest.raises(ValueError, match=r"plain \.h5"):
            GhostFaceNets.save_weights_keras2(model, tmp_path / name)


# ----------------------------------------------------------------------------------------------------------------
# load_model on weights-only files and tf-keras archives


def test_load_model_on_weights_only_files_says_how_to_load_them(tmp_path):
    model = build_tiny_embedding_model()
    GhostFaceNets.save_weights_keras2(model, tmp_path / "keras2.h5")
    model.save_weights(tmp_path / "keras3.weights.h5")
    for name in ("keras2.h5", "keras3.weights.h5"):
        with pytest.raises(ValueError, match=f"{name}: a weights-only file.*load_weights"):
            GhostFaceNets.load_model(tmp_path / name)
    with pytest.raises(ValueError, match="weights-only"):
        inference.FaceEmbedder(tmp_path / "keras2.h5")


def tf_keras_archive(model, path):
    """A ``.keras`` archive of ``model`` as tf-keras names it: the model class ``Functional`` in
    ``tf_keras.src.engine.functional`` and the layers in ``tf_keras.layers``."""
    keras3_path = path.with_name("keras3.keras")
    model.save(keras3_path)
    with zipfile.ZipFile(keras3_path) as source, zipfile.ZipFile(path, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                text = data.decode("utf8").replace('"keras.layers"', '"tf_keras.layers"')
                config = json.loads(text)
                config["module"] = "tf_keras.src.engine.functional"
                data = json.dumps(config).encode("utf8")
            target.writestr(item, data)
    return path


def test_tf_keras_archive_loads_in_load_model_and_face_embedder(tmp_path, faces):
    model = export.set_batchnorm_statistics(small_v1(), faces)
    path = tf_keras_archive(model, tmp_path / "deepface_user.keras")
    assert model_files.is_tf_keras_archive(path)
    expected = reference_embeddings(model, faces)
    np.testing.assert_allclose(reference_embeddings(GhostFaceNets.load_model(path), faces), expected, atol=1e-6)
    np.testing.assert_allclose(reference_embeddings(path, faces), expected, atol=1e-6)


def original_as_tf_keras_archive(shared_dir, path):
    """A tf-keras ``.keras`` archive of the original's reference GhostFaceNetV1: the Keras-2 model config of the
    original's whole-model file as ``config.json`` (class ``tf_keras.src.engine.functional.Functional``) and its
    weights in ``model.weights.h5`` under ``layers/<class name in snake case>[_N]/vars/<i>``, the layout tf-keras
    2.21 writes (checked by hand against an archive tf-keras saved)."""
    whole_model = shared_dir / "fixtures" / f"{V1_STEM}_keras2_model.h5"
    config = {"module": "tf_keras.src.engine.functional", "class_name": "Functional", "registered_name": None,
              "config": model_files.read_model_config(whole_model)["config"]}
    arrays = dict(model_files.read_legacy_weights(whole_model))
    weights = path.with_name("model.weights.h5")
    with h5py.File(weights, "w") as file:
        for layer_name, key in model_files.archive_weight_keys(config):
            variables = file.create_group(f"layers/{key}/vars")
            for index, array in enumerate(arrays.get(layer_name, [])):
                variables.create_dataset(str(index), data=array)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("metadata.json", json.dumps({"keras_version": "2.21.0"}))
        archive.writestr("config.json", json.dumps(config))
        archive.write(weights, "model.weights.h5")
    return path


def test_tf_keras_archive_with_keras2_config_is_rebuilt_as_a_ghostfacenet(shared_dir, tmp_path):
    path = original_as_tf_keras_archive(shared_dir, tmp_path / "ghostfacenet_tf_keras.keras")
    golden = dict(np.load(shared_dir / "fixtures" / f"{V1_STEM}_golden.npz"))
    model = GhostFaceNets.load_model(path)
    assert model.count_params() == 4_088_812
    tolerance = 1e-4 * np.abs(golden["embeddings"]).max()
    np.testing.assert_allclose(np.asarray(model(golden["inputs"], training=False)), golden["embeddings"],
                               atol=tolerance, rtol=0)


def test_archive_weights_are_read_in_layer_order(tmp_path):
    model = small_v1()
    model.save(tmp_path / "model.keras")
    config = model_files.read_archive_config(tmp_path / "model.keras")
    file_layers = model_files.read_archive_weights(tmp_path / "model.keras", config)
    assert [name for name, _ in file_layers] == [layer.name for layer in model.layers if layer.weights]
    for (_, arrays), layer in zip(file_layers, [layer for layer in model.layers if layer.weights], strict=True):
        for array, variable in zip(arrays, layer.weights, strict=True):
            np.testing.assert_array_equal(array, variable.numpy())


def test_keras3_config_maps_tf_keras_modules_and_the_keras2_hard_sigmoid():
    import keras

    gate = {"module": "keras.layers", "class_name": "Activation",
            "config": {"name": "gate", "activation": "hard_sigmoid", "dtype": "float32", "trainable": True}}
    config = {"module": "tf_keras.src.engine.functional", "class_name": "Functional",
              "config": {"layers": [{"module": "tf_keras.layers", "class_name": "Conv2D"}, gate]}}
    converted = model_files.keras3_config(config)
    assert converted["module"] == "keras.src.models.functional"
    assert converted["config"]["layers"][0]["module"] == "keras.layers"
    layer = keras.layers.Activation.from_config(converted["config"]["layers"][1]["config"])
    assert float(layer(np.array([[2.0]], np.float32))[0, 0]) == pytest.approx(0.9)  # 0.2 x + 0.5, not Keras 3's


# ----------------------------------------------------------------------------------------------------------------
# insightface and deepface


def test_insightface_export_starts_with_sub_then_mul_on_raw_nchw_input(onnx_extras, tmp_path, faces):
    import onnx

    model = build_tiny_embedding_model(use_bias=True)
    reports = export.export_targets(model, ["insightface"], tmp_path, images=faces, stem="tiny")
    path = tmp_path / "tiny_insightface.onnx"
    assert reports[str(path)]["min_cosine"] > 0.99999
    graph = onnx.load(str(path)).graph
    assert [node.op_type for node in graph.node[:2]] == ["Sub", "Mul"]
    assert graph.node[0].name.startswith("Sub") and graph.node[1].name.startswith("Mul")
    assert [dim.dim_value for dim in graph.input[0].type.tensor_type.shape.dim[1:]] == [3, 112, 112]
    metadata = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert metadata == {export.RAW_INPUT_METADATA_KEY: export.RAW_INPUT_METADATA_VALUE}


def test_deepface_export_is_named_for_deepface_and_matches_its_preprocessing(onnx_extras, tmp_path, faces):
    model = build_tiny_embedding_model(use_bias=True)
    reports = export.export_targets(model, ["deepface"], tmp_path, images=faces, stem="tiny")
    assert list(reports) == [str(tmp_path / "ghostfacenet_v1.onnx")]
    assert reports[str(tmp_path / "ghostfacenet_v1.onnx")]["min_cosine"] > 0.99999
    np.testing.assert_array_equal(export.deepface_input(faces), inference.normalize(faces))


@pytest.mark.slow  # a GhostFaceNetV1 conversion takes 10-30 s on 2 cores
def test_insightface_model_zoo_gives_our_embeddings(onnx_extras, tmp_path, faces):
    model_zoo = pytest.importorskip("insightface.model_zoo", reason=f"insightface is a test extra: {EXTRAS}")
    model = export.set_batchnorm_statistics(small_v1(), faces)
    path = export.export_insightface(model, tmp_path / "ghostfacenet.onnx")
    recognizer = model_zoo.get_model(str(path))
    assert type(recognizer).__name__ == "ArcFaceONNX"
    assert (recognizer.input_mean, recognizer.input_std) == (0.0, 1.0)
    features = recognizer.get_feat(list(faces[..., ::-1]))  # insightface takes BGR images (cv2)
    assert inference.compare(reference_embeddings(model, faces), features).min() > 0.99999


@pytest.mark.slow  # a GhostFaceNetV1 conversion takes 10-30 s on 2 cores
def test_real_deepface_onnx_engine_gives_our_embeddings(onnx_extras, tmp_path, faces, monkeypatch):
    monkeypatch.setenv("DEEPFACE_HOME", str(tmp_path))
    monkeypatch.setenv("DEEPFACE_BACKEND_ENGINE", "onnx")  # before the import: deepface picks its engine then
    deepface = pytest.importorskip("deepface.DeepFace", reason="deepface is not installed (heavy dependencies)")
    model = export.set_batchnorm_statistics(small_v1(), faces)
    weights = export.deepface_weights_folder()
    weights.mkdir(parents=True, exist_ok=True)  # importing deepface may create it
    export.export_deepface(model, weights)
    features = [deepface.represent(face, model_name="GhostFaceNet", detector_backend="skip",
                                            normalization="ArcFace")[0]["embedding"] for face in faces]
    assert inference.compare(reference_embeddings(model, faces), np.array(features)).min() > 0.99999


@pytest.mark.slow  # conversions take 5-30 s on 2 cores
def test_export_cli_targets(onnx_extras, tmp_path):
    model = build_tiny_embedding_model(embedding_size=32, use_bias=True)
    model.save(tmp_path / "tiny.keras")
    reports = export.main(["-m", str(tmp_path / "tiny.keras"), "-o", str(tmp_path / "out"), "--target", "onnx",
                           "insightface", "deepface", "keras2-h5"])
    assert sorted(reports) == sorted(str(tmp_path / "out" / name) for name in
                                     ["tiny_nhwc.onnx", "tiny_insightface.onnx", "ghostfacenet_v1.onnx",
                                      "tiny_keras2.h5"])
    assert all(report["min_cosine"] > 0.99999 for report in reports.values())


def test_insightface_file_runs_in_our_runner_with_raw_pixels(onnx_extras, tmp_path, faces):
    """The insightface export normalises inside its graph; `load_runner` sees its metadata and feeds 0..255."""
    model = build_tiny_embedding_model(use_bias=True)
    export.export_targets(model, ["insightface"], tmp_path, images=faces, stem="tiny")
    runner = inference.load_runner(str(tmp_path / "tiny_insightface.onnx"))
    assert runner.raw_pixels
    expected = inference.load_runner(model)(faces)
    np.testing.assert_allclose(runner(faces), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_embedding_model_of_a_prelu_recipe_model_is_the_model_itself(faces):
    """replace_ReLU_with_PReLU clones the model; its layers then belong to two graphs."""
    inputs = keras.Input((16, 16, 3))
    features = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(keras.layers.Conv2D(4, 3)(inputs)))
    original = keras.Model(inputs, keras.layers.Dense(8, name="embedding")(features))
    model = GhostFaceNets.replace_ReLU_with_PReLU(original)
    assert any(isinstance(layer, keras.layers.PReLU) for layer in model.layers)
    assert GhostFaceNets.embedding_model(model) is model
    assert inference.load_runner(model)(faces[:2, :16, :16]).shape == (2, 8)
