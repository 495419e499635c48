"""export.py: ONNX and TFLite exports of small GhostFaceNets agree with Keras; the Resize fix; the CLI."""

import collections

import numpy as np
import pytest
from conftest import build_tiny_embedding_model

import export
import GhostFaceNets
import inference

EXTRAS = "pip install -r requirements-export.txt"


@pytest.fixture(scope="module")
def onnxruntime():
    """onnxruntime, after checking that every ONNX export package is installed (else skip with the reason)."""
    for name in ("onnx", "tf2onnx"):
        pytest.importorskip(name, reason=f"ONNX export needs {name}: {EXTRAS}")
    return pytest.importorskip("onnxruntime", reason=f"ONNX parity checks need onnxruntime: {EXTRAS}")


@pytest.fixture(scope="module")
def faces():
    return export.sample_faces(8)


def small_model(builder, faces, **kwargs):
    """A width-0.5, stride-2 GhostFaceNet with batch-norm statistics from real-looking faces."""
    model = builder(width=0.5, strides=2, weight_decay=0, **kwargs)
    return export.set_batchnorm_statistics(model, faces)


@pytest.fixture(scope="module")
def v1(faces):
    model = small_model(GhostFaceNets.GhostFaceNetV1, faces)
    return model, export.inference_function(model)


@pytest.fixture(scope="module")
def v1_reference(v1, faces):
    return np.asarray(v1[0](inference.normalize(faces), training=False))


def tiny_model(embedding_size):
    """A two-layer embedding model (pooling + dense): converts in about a second."""
    return build_tiny_embedding_model(embedding_size=embedding_size, use_bias=True)


def operator_counts(path):
    import onnx

    return collections.Counter(node.op_type for node in onnx.load(str(path)).graph.node)


@pytest.mark.slow  # conversions (or a GhostFaceNet build) take 5-30 s on 2 cores
def test_onnx_v1_nchw_agrees_with_keras(onnxruntime, v1, v1_reference, faces, tmp_path):
    model, function = v1
    path = export.export_onnx(model, tmp_path / "v1.onnx", input_layout="NCHW", function=function)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model_input = session.get_inputs()[0]
    assert (model_input.name, model_input.shape) == ("input", ["batch", 3, 112, 112])
    assert session.get_outputs()[0].name == "embedding"
    outputs = session.run(None, {"input": inference.normalize(faces).transpose(0, 3, 1, 2)})[0]
    report = export.parity_report(v1_reference, outputs)
    assert report["min_cosine"] > 0.9999 and report["relative_diff"] < 1e-4, report
    assert operator_counts(path)["Transpose"] <= 2  # the transpose optimiser ran (the scalar-add workaround)
    from_file = inference.FaceEmbedder(path).embed(faces)
    assert inference.compare(from_file, inference.FaceEmbedder(model).embed(faces)).min() > 0.9999


@pytest.mark.slow  # conversions (or a GhostFaceNet build) take 5-30 s on 2 cores
def test_onnx_v2_with_odd_size_resizes_loads_and_agrees(onnxruntime, faces, tmp_path):
    import onnx

    # DFC attention from stack 9 on (default 2) halves the conversion time; its stacks with 7x7 maps still have the
    # 3x3 -> 7x7 resizes that tf2onnx writes as fractional scales.
    model = small_model(GhostFaceNets.GhostFaceNetV2, faces, num_ghost_module_v1_stacks=9)
    path = export.export_onnx(model, tmp_path / "v2.onnx")
    proto = onnx.load(str(path))
    constants = export.graph_constants(proto)
    resizes = [node for node in proto.graph.node if node.op_type == "Resize"]
    assert resizes and not any(export.fractional_resize(node, constants) for node in resizes)
    assert sum(len(node.input) == 4 and node.input[3] != "" for node in resizes) > 0
    report = export.check_parity(model, path, faces)
    assert report["min_cosine"] > 0.9999 and report["relative_diff"] < 1e-4, report


def test_resize_rewrite_on_a_hand_made_graph(onnxruntime):
    """Resize(3x3 -> scale 7/3) times a 7x7 tensor: the GhostNetV2 DFC pattern that fails to load as written."""
    import tensorflow as tf
    from onnx import TensorProto, helper, numpy_helper

    scales = np.array([1, 1, 7 / 3, 7 / 3], np.float32)
    nodes = [helper.make_node("Resize", ["x", "roi", "scales"], ["up"], name="up", mode="linear",
                              coordinate_transformation_mode="half_pixel"),
             helper.make_node("Mul", ["up", "gate"], ["y"], name="gate")]
    graph = helper.make_graph(
        nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3, 3]),
                          helper.make_tensor_value_info("gate", TensorProto.FLOAT, ["n", 2, 7, 7])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.zeros(0, np.float32), "roi"), numpy_helper.from_array(scales, "scales")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    assert export.static_shapes(proto)["up"] == [None, 2, 6, 6]  # floor(3 * float32(7/3)) = 6
    with pytest.raises(Exception, match="Incompatible dimensions"):
        onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    assert export.set_resize_output_sizes(proto) == 1
    assert "scales" not in {tensor.name for tensor in proto.graph.initializer}
    session = onnxruntime.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).normal(size=(2, 2, 3, 3)).astype(np.float32)
    resized = session.run(None, {"x": x, "gate": np.ones((2, 2, 7, 7), np.float32)})[0]
    expected = tf.image.resize(x.transpose(0, 2, 3, 1), (7, 7), method="bilinear").numpy().transpose(0, 3, 1, 2)
    np.testing.assert_allclose(resized, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("quantization", "min_cosine", "size_ratio"),
                         [("float32", 0.9999, 1.0), ("float16", 0.999, 0.6), ("int8", 0.99, 0.35)])
def test_tflite_v1_agrees_with_keras(v1, v1_reference, faces, tmp_path, quantization, min_cosine, size_ratio):
    model, function = v1
    path = export.export_tflite(model, tmp_path / f"v1_{quantization}.tflite", quantization, function=function)
    report = export.check_parity(model, path, faces, f"TFLite {quantization}")
    assert report["min_cosine"] > min_cosine, report
    float32_bytes = 4 * model.count_params()
    assert path.stat().st_size < size_ratio * float32_bytes + 200_000
    if quantization == "float32":
        assert report["relative_diff"] < 1e-4
        runner = inference.load_runner(path)
        assert runner.kind == "tflite" and runner.fixed_batch is None
        single = runner(faces[:1])
        np.testing.assert_allclose(single, v1_reference[:1], rtol=1e-3, atol=1e-3 * np.abs(v1_reference).max())


@pytest.mark.slow  # conversions (or a GhostFaceNet build) take 5-30 s on 2 cores
def test_export_cli_on_a_saved_model(onnxruntime, tmp_path):
    model = tiny_model(32)
    model.save(tmp_path / "tiny.keras")
    reports = export.main(["-m", str(tmp_path / "tiny.keras"), "-o", str(tmp_path / "out"), "--onnx", "NHWC",
                           "NCHW", "--tflite", "float16"])
    assert sorted(reports) == sorted(str(tmp_path / "out" / name) for name in
                                     ["tiny_nhwc.onnx", "tiny_nchw.onnx", "tiny_float16.tflite"])
    assert all(report["min_cosine"] > 0.999 for report in reports.values())
    with pytest.raises(SystemExit, match="nothing to export"):
        export.main(["-m", str(tmp_path / "tiny.keras")])


@pytest.mark.slow  # conversions (or a GhostFaceNet build) take 5-30 s on 2 cores
def test_bad_export_arguments(onnxruntime, v1, tmp_path):
    model, _ = v1
    with pytest.raises(ValueError, match="input_layout"):
        export.export_onnx(model, tmp_path / "x.onnx", input_layout="CHW")
    with pytest.raises(ValueError, match="quantization"):
        export.export_tflite(model, tmp_path / "x.tflite", quantization="int4")


@pytest.mark.slow  # conversions (or a GhostFaceNet build) take 5-30 s on 2 cores
def test_fixed_batch_files_are_filled_by_padding(onnxruntime, tmp_path, faces):
    model = tiny_model(16)
    function = export.inference_function(model, batch_size=2)
    expected = inference.FaceEmbedder(model).embed(faces[:5])
    for path in (export.export_onnx(model, tmp_path / "fixed.onnx", function=function),
                 export.export_tflite(model, tmp_path / "fixed.tflite", function=function)):
        embedder = inference.FaceEmbedder(path)
        assert embedder.runner.fixed_batch == 2
        np.testing.assert_allclose(embedder.embed(faces[:5]), expected, atol=1e-5)


def test_mixed_precision_models_are_exported_in_float32():
    model = tiny_model(8)
    mixed = GhostFaceNets.convert_to_mixed_float16(model)
    assert export.float32_model(model) is model
    converted = export.float32_model(mixed)
    assert {layer.compute_dtype for layer in converted.layers} == {"float32"}
    np.testing.assert_array_equal(converted.get_layer("embedding").get_weights()[0],
                                  model.get_layer("embedding").get_weights()[0])


def test_sample_faces_are_seeded_uint8_images():
    first = export.sample_faces(4, 64, seed=1)
    assert first.shape == (4, 64, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, export.sample_faces(4, 64, seed=1))
    assert not np.array_equal(first, export.sample_faces(4, 64, seed=2))
    assert first.std() > 20  # not a flat image
