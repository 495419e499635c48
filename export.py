"""Export a basic (embedding) model to ONNX and TFLite, each checked against the Keras model.

ONNX (needs the optional packages of ``requirements-export.txt``): `export_onnx` converts with tf2onnx.
The input is named ``input``, float32 ``(batch, H, W, 3)`` (``input_layout="NHWC"``, the default) or
``(batch, 3, H, W)`` (``"NCHW"``), normalised with `preprocess.normalize` (the runners of `embedding`
do it); the output ``embedding`` is the raw (not
L2-normalised) embedding (batch, D); the batch dimension is dynamic. Two tf2onnx 1.17 problems are handled at
export time:

- GhostNetV2's DFC branch resizes 3x3 maps back to 7x7; tf2onnx writes that as a float scale 7/3, which
  onnxruntime floors to 6, so the file would not load. `set_resize_output_sizes` rewrites every such Resize
  node to take explicit output sizes.
- GhostNetV1's squeeze-excite gate adds a scalar (``0.2 x + 0.5``) right after a bias-free convolution, which makes
  tf2onnx's transpose optimiser fail and leave ~190 layout transposes in the graph; the scalar is given shape (1,)
  before conversion (`scalars_as_vectors`), which leaves the numbers unchanged.

TFLite (TensorFlow's own converter; run with ``ai-edge-litert`` or ``tf.lite.Interpreter``): `export_tflite`
writes ``float32``, ``float16`` (float16 weights) or ``int8`` (dynamic-range: int8 weights, float activations)
models with built-in ops only, a float32 NHWC input with dynamic batch and the same output.

Every export is followed by `parity_report` on sample images (the caller's aligned faces, or
`sample_faces`' seeded random images), both models run through `embedding.load_runner`: max abs
difference of the raw embeddings, that difference relative to the largest Keras value, and min / mean cosine
between Keras and exported embeddings.

Client targets (`export_targets`, CLI ``--target``), each checked by running the file as its client runs it
(`check_client_parity`):

- ``insightface``: NCHW ONNX whose graph starts with the normalisation as ``Sub`` then ``Mul`` nodes on raw
  0–255 RGB input (`prepend_normalization`), so ``insightface.model_zoo.get_model(path)`` picks input mean 0
  / std 1 and ``get_feat(bgr_images)`` returns this model's embeddings.
- ``deepface``: the NHWC ONNX as ``ghostfacenet_v1.onnx``, the file deepface's ONNX engine loads for
  ``model_name="GhostFaceNet"``; where to copy it is logged (`deepface_weights_folder`).
- ``keras2-h5``: the weights in tf-keras' ``save_weights("x.h5")`` layout with the original's layer names
  (`GhostFaceNets.save_weights_keras2`), for the original GhostFaceNets code and deepface's Keras builder.
- ``onnx`` / ``tflite``: NHWC ONNX and float32 TFLite, as ``--onnx`` / ``--tflite`` give.

Command line::

    python export.py -m model.keras -o exported/ --onnx --tflite float32 float16 int8
    python export.py -m model.keras -o exported/ --target insightface deepface keras2-h5
"""

import argparse
import logging
import warnings
from pathlib import Path

import numpy as np

import inference
from atomic_io import atomic_path, write_bytes_atomic
from embedding import RAW_INPUT_METADATA_KEY, embed_images, load_runner
from logs import show_library_logs
from preprocess import NORMALIZE_MEAN, NORMALIZE_SCALE, normalize

logger = logging.getLogger(__name__)

TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")
INPUT_LAYOUTS = ("NHWC", "NCHW")
DEFAULT_OPSET = 17
TARGETS = ("onnx", "tflite", "insightface", "deepface", "keras2-h5")
# ONNX metadata marking a graph that takes raw 0-255 pixels (the insightface target), for runners to read.
RAW_INPUT_METADATA_VALUE = "raw RGB 0-255, normalised inside the graph"
DEEPFACE_FILE_NAME = "ghostfacenet_v1.onnx"  # the file deepface's ONNX GhostFaceNet client loads
EXTRAS_HINT = "install the export extras: pip install -r requirements-export.txt"


def require(module_name):
    """Import an optional export dependency, or ImportError saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"{module_name} is needed for this export; {EXTRAS_HINT}") from error


def float32_model(model):
    """``model`` itself when every layer computes in float32, else a float32 copy (mixed-precision models)."""
    from GhostFaceNets import convert_mixed_float16_to_float32, iterate_layers

    if all(getattr(layer, "compute_dtype", "float32") == "float32" for layer in iterate_layers(model)):
        return model
    return convert_mixed_float16_to_float32(model)


def inference_function(model, batch_size=None):
    """``tf.function`` computing ``{"embedding": model(x, training=False)}`` for float32 NHWC ``x``, with
    ``model``'s batch normalisation folded into the layers before it (`bn_folding.fold_batch_norms`, equal to
    float rounding), so every exported file holds the folded graph.

    Its input signature is ``(batch_size, H, W, 3)`` (None: any batch), named ``input``; traced once and reused by
    every export of the same model. The folded model it runs is its attribute ``inference_model``.
    """
    import tensorflow as tf

    from bn_folding import fold_batch_norms

    height, width = model.input_shape[1:3]
    if not height or not width:
        raise ValueError(f"model {model.name!r} has no static input size; build it with a full input_shape")
    spec = tf.TensorSpec((batch_size, height, width, 3), tf.float32, name="input")
    folded = fold_batch_norms(model)
    function = tf.function(lambda x: {"embedding": folded(x, training=False)}, input_signature=[spec])
    function.inference_model = folded
    return function


# ----------------------------------------------------------------------------------------------------------------
# ONNX


def scalars_as_vectors(graph, nodes):
    """tf2onnx rewriter: give shape (1,) to scalar constants added to a tensor (numerically the same).

    tf2onnx 1.17's transpose optimiser crashes on ``Conv -> Add(scalar)`` and then keeps every layout transpose.
    """
    binary_ops = {"Add", "AddV2", "BiasAdd"}
    for node in nodes:
        if node.type not in binary_ops:
            continue
        for index, operand in enumerate(node.inputs):
            if operand is not None and operand.is_const() and operand.get_tensor_value(as_list=False).ndim == 0:
                value = operand.get_tensor_value(as_list=False).reshape(1)
                vector = graph.make_const(f"{operand.name}_as_vector_{node.name}", value)
                graph.replace_input(node, node.input[index], vector.output[0], index)
    return graph.get_nodes()


def graph_constants(model_proto):
    """Constant tensors of an ONNX graph (initializers and Constant nodes), name → numpy array."""
    from onnx import numpy_helper

    constants = {tensor.name: numpy_helper.to_array(tensor) for tensor in model_proto.graph.initializer}
    for node in model_proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return constants


def static_shapes(model_proto):
    """Shapes ONNX shape inference finds, tensor name → list of ints (None for unknown dimensions)."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model_proto)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    return {
        value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        for value in values
    }


def fractional_resize(node, constants):
    """True for a Resize node given by constant scales that are not all whole numbers."""
    if node.op_type != "Resize" or len(node.input) < 3 or (len(node.input) > 3 and node.input[3]):
        return False
    scales = constants.get(node.input[2])
    return scales is not None and scales.size > 0 and not np.allclose(scales, np.round(scales))


def replace_scales_with_sizes(model_proto, node, scales, input_shape):
    """Make Resize ``node`` take ``sizes``: the leading dimensions (scale 1) from ``Shape(x)``, the resized ones
    ``round(dim * scale)`` as constants."""
    from onnx import helper, numpy_helper

    first_resized = int(np.argmax(~np.isclose(scales, 1.0)))
    target = np.round(np.array(input_shape[first_resized:], np.float64) * scales[first_resized:]).astype(np.int64)
    prefix = f"{node.name}_sizes"
    graph = model_proto.graph
    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), f"{prefix}_start"),
        numpy_helper.from_array(np.array([first_resized], np.int64), f"{prefix}_end"),
        numpy_helper.from_array(target, f"{prefix}_resized"),
    ])
    new_nodes = [
        helper.make_node("Shape", [node.input[0]], [f"{prefix}_shape"], name=f"{prefix}_shape"),
        helper.make_node("Slice", [f"{prefix}_shape", f"{prefix}_start", f"{prefix}_end"], [f"{prefix}_kept"],
                         name=f"{prefix}_kept"),
        helper.make_node("Concat", [f"{prefix}_kept", f"{prefix}_resized"], [prefix], axis=0, name=prefix),
    ]
    position = list(graph.node).index(node)
    for offset, new_node in enumerate(new_nodes):
        graph.node.insert(position + offset, new_node)
    del node.input[2:]
    node.input.extend(["", prefix])


def set_resize_output_sizes(model_proto):
    """Rewrite, in place, every Resize node with fractional constant scales to explicit output sizes.

    onnxruntime computes a Resize output size as ``floor(dim * scale)``: a 3 → 7 resize stored as the float32
    scale 2.3333333 gives 6. Nodes are fixed in graph order, re-running shape inference after each one, because
    a wrong size upstream hides the shapes downstream. Returns the number of nodes rewritten.
    """
    rewritten = 0
    while True:
        constants = graph_constants(model_proto)
        node = next((node for node in model_proto.graph.node if fractional_resize(node, constants)), None)
        if node is None:
            return rewritten
        scales = constants[node.input[2]].astype(np.float64)
        input_shape = static_shapes(model_proto).get(node.input[0])
        first_resized = int(np.argmax(~np.isclose(scales, 1.0)))
        if not input_shape or any(dim is None for dim in input_shape[first_resized:]):
            raise ValueError(f"Resize node {node.name}: the resized dimensions of its input are not static, "
                             "export from a model with a fixed input size")
        replace_scales_with_sizes(model_proto, node, scales, input_shape)
        remove_unused_initializers(model_proto)
        rewritten += 1


def remove_unused_initializers(model_proto):
    """Drop, in place, the initializers no node reads (the scales a rewritten Resize no longer uses)."""
    used = {name for node in model_proto.graph.node for name in node.input}
    unused = [tensor for tensor in model_proto.graph.initializer if tensor.name not in used]
    for tensor in unused:
        model_proto.graph.initializer.remove(tensor)


def name_batch_dimension(model_proto, name="batch"):
    """Call the first (dynamic) dimension of the graph's inputs and outputs ``name``, in place."""
    for value in [*model_proto.graph.input, *model_proto.graph.output]:
        first = value.type.tensor_type.shape.dim[0]
        if not first.HasField("dim_value"):
            first.dim_param = name


def onnx_model_proto(model, input_layout="NHWC", opset=DEFAULT_OPSET, function=None):
    """The checked ONNX ModelProto of a Keras embedding model (see `export_onnx`), not yet written."""
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    require("onnx")
    tf2onnx = require("tf2onnx")
    function = function or inference_function(float32_model(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset,
            inputs_as_nchw=["input"] if input_layout == "NCHW" else None, custom_rewriter=[scalars_as_vectors])
    set_resize_output_sizes(model_proto)
    name_batch_dimension(model_proto)
    return model_proto


def save_onnx(model_proto, output_path):
    """Check ``model_proto`` with the ONNX checker and write it atomically to ``output_path``; returns the path."""
    onnx = require("onnx")
    onnx.checker.check_model(model_proto)
    with atomic_path(output_path) as temporary:
        onnx.save(model_proto, str(temporary))
    return output_path


def export_onnx(model, output_path, input_layout="NHWC", opset=DEFAULT_OPSET, function=None):
    """Convert a Keras embedding model to an ONNX file with tf2onnx; returns ``output_path``.

    ``input_layout``: "NHWC" (input (N, H, W, 3)) or "NCHW" (input (N, 3, H, W)); the input is named ``input``
    and the output ``embedding``. ``function``: an already traced `inference_function` of ``model``.
    """
    return save_onnx(onnx_model_proto(model, input_layout, opset, function), output_path)


def prepend_normalization(model_proto):
    """Make the graph take raw 0–255 RGB pixels: ``Sub`` (mean) then ``Mul`` (scale) of
    `preprocess.normalize` become its first two nodes, in place.

    insightface's ``ArcFaceONNX`` looks for nodes named ``Sub*`` and ``Mul*`` among the first 8 and then feeds
    pixels unnormalised (input mean 0, std 1).
    """
    from onnx import helper, numpy_helper

    graph, input_name = model_proto.graph, model_proto.graph.input[0].name
    for node in graph.node:
        node.input[:] = ["input_normalized" if name == input_name else name for name in node.input]
    graph.initializer.extend([
        numpy_helper.from_array(np.array([NORMALIZE_MEAN], np.float32), "normalize_mean"),
        numpy_helper.from_array(np.array([NORMALIZE_SCALE], np.float32), "normalize_scale"),
    ])
    graph.node.insert(0, helper.make_node("Mul", ["input_centered", "normalize_scale"], ["input_normalized"],
                                          name="Mul_normalize"))
    graph.node.insert(0, helper.make_node("Sub", [input_name, "normalize_mean"], ["input_centered"],
                                          name="Sub_normalize"))
    helper.set_model_props(model_proto, {RAW_INPUT_METADATA_KEY: RAW_INPUT_METADATA_VALUE})
    return model_proto


def export_insightface(model, output_path, opset=DEFAULT_OPSET, function=None):
    """An ONNX file for insightface's model zoo: NCHW input ``(N, 3, H, W)`` of raw 0–255 RGB pixels (the
    normalisation is in the graph, `prepend_normalization`), output the raw embedding. Returns the path.

    ``insightface.model_zoo.get_model(path)`` then returns an ``ArcFaceONNX`` whose ``get_feat(bgr_images)``
    (cv2's ``blobFromImages(..., swapRB=True)``: BGR in, RGB to the graph) gives this model's embeddings.
    """
    model_proto = prepend_normalization(onnx_model_proto(model, "NCHW", opset, function))
    return save_onnx(model_proto, output_path)


def deepface_weights_folder():
    """Where deepface looks for its weight files: ``$DEEPFACE_HOME/.deepface/weights`` (``DEEPFACE_HOME``
    defaults to the home folder), as deepface's ``folder_utils.get_deepface_home`` reads it."""
    import os

    return Path(os.environ.get("DEEPFACE_HOME", str(Path.home()))) / ".deepface" / "weights"


def export_deepface(model, output_dir, opset=DEFAULT_OPSET, function=None):
    """The NHWC ONNX file deepface's ONNX engine runs for ``model_name="GhostFaceNet"``, written as
    ``<output_dir>/ghostfacenet_v1.onnx`` (the name deepface loads); logs where to copy it. Returns the path.

    deepface feeds it the RGB array given to ``represent``, normalised as ``normalization="ArcFace"`` does, which
    equals `preprocess.normalize`: see `deepface_input`.
    """
    path = export_onnx(model, Path(output_dir) / DEEPFACE_FILE_NAME, "NHWC", opset, function)
    logger.info("deepface: copy %s to %s (set DEEPFACE_BACKEND_ENGINE=onnx), then call DeepFace.represent(rgb, "
                "model_name='GhostFaceNet', detector_backend='skip', normalization='ArcFace')", path,
                deepface_weights_folder() / DEEPFACE_FILE_NAME)
    return path


# ----------------------------------------------------------------------------------------------------------------
# TFLite


def tflite_converter(model, function, quantization):
    """A ``tf.lite.TFLiteConverter`` for ``function`` set up for ``quantization`` (built-in ops only)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()  # tracks the variables of the model the function runs
    archive.track(getattr(function, "inference_model", model))
    converter = tf.lite.TFLiteConverter.from_concrete_functions([function.get_concrete_function()], archive)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter


def export_tflite(model, output_path, quantization="float32", function=None):
    """Convert a Keras embedding model to a TFLite file; returns ``output_path``.

    ``quantization``: "float32", "float16" (weights stored as float16, about half the size) or "int8"
    (dynamic-range quantisation: int8 weights, float activations, about a quarter of the size). Input float32
    (N, H, W, 3) with a dynamic batch, output the raw embedding (N, D).
    """
    if quantization not in TFLITE_QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {TFLITE_QUANTIZATIONS}, got {quantization!r}")
    model = float32_model(model)
    function = function or inference_function(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flatbuffer = tflite_converter(model, function, quantization).convert()
    write_bytes_atomic(output_path, flatbuffer)
    return output_path


# ----------------------------------------------------------------------------------------------------------------
# Parity


def sample_faces(count=8, size=112, seed=0):
    """``count`` deterministic test images, uint8 RGB (count, size, size, 3), for parity checks and batch-norm
    statistics: smooth random colour fields (an 8x8 grid of colours drawn from ``seed``, resized bicubically)
    plus pixel noise (standard deviation 8), so that they have an image's mix of low and high frequencies."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (count, 8, 8, 3)).astype(np.float32)
    smooth = tf.image.resize(coarse, (size, size), method="bicubic").numpy()
    return np.clip(np.round(smooth + rng.normal(0, 8, smooth.shape)), 0, 255).astype(np.uint8)


def set_batchnorm_statistics(model, images):
    """Set every BatchNormalization layer's moving mean / variance to its batch statistics on ``images`` (uint8
    faces), in place. An untrained model then gives activations of a realistic scale (its random-init
    statistics let them grow to ~1e6), which makes parity figures and benchmarks meaningful."""
    import keras

    from GhostFaceNets import iterate_layers

    batch_norms = [layer for layer in iterate_layers(model) if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in batch_norms]
    for layer in batch_norms:
        layer.momentum = 0.0
    model(normalize(images), training=True)
    for layer, momentum in zip(batch_norms, momenta, strict=True):
        layer.momentum = momentum
    return model


def parity_report(reference, exported):
    """How close exported raw embeddings are to Keras ones, both (N, D): dict of ``max_abs_diff``,
    ``relative_diff`` (max abs diff / max abs Keras value), ``min_cosine`` and ``mean_cosine``."""
    reference, exported = np.asarray(reference, np.float64), np.asarray(exported, np.float64)
    max_abs_diff = float(np.max(np.abs(reference - exported)))
    cosines = inference.compare(reference, exported)
    return {"max_abs_diff": max_abs_diff, "relative_diff": max_abs_diff / float(np.max(np.abs(reference))),
            "min_cosine": float(np.min(cosines)), "mean_cosine": float(np.mean(cosines))}


def check_parity(model, exported_path, images, label=None):
    """Compare the raw embeddings of ``exported_path`` (.onnx / .tflite) with ``model`` on uint8 ``images`` (N, H,
    W, 3), both run through `embedding.embed_images` without flip; logs one line and returns
    `parity_report`'s dict."""
    reference = embed_images(load_runner(model), images, flip=False)
    exported = embed_images(load_runner(exported_path), images, flip=False)
    report = parity_report(reference, exported)
    logger.info(f"{label or exported_path}: max abs diff {report['max_abs_diff']:.3g} (relative "
                f"{report['relative_diff']:.3g}), cosine min {report['min_cosine']:.7f} "
                f"mean {report['mean_cosine']:.7f}")
    return report


def export_all(model, output_dir, onnx_layouts=("NHWC",), tflite_quantizations=TFLITE_QUANTIZATIONS, images=None,
               stem=None):
    """Export ``model`` to every requested ONNX layout and TFLite quantisation under ``output_dir``, checking
    each against Keras on ``images`` (default: 8 `sample_faces`). Returns {path: parity dict}."""
    model = float32_model(model)
    images = sample_faces(8, model.input_shape[1]) if images is None else images
    function = inference_function(model)
    stem, output_dir = stem or model.name, Path(output_dir)
    reports = {}
    for layout in onnx_layouts:
        path = export_onnx(model, output_dir / f"{stem}_{layout.lower()}.onnx", layout, function=function)
        reports[str(path)] = check_parity(model, path, images, f"ONNX {layout}")
    for quantization in tflite_quantizations:
        path = export_tflite(model, output_dir / f"{stem}_{quantization}.tflite", quantization, function=function)
        reports[str(path)] = check_parity(model, path, images, f"TFLite {quantization}")
    return reports


# ----------------------------------------------------------------------------------------------------------------
# Client targets


def deepface_input(rgb_images):
    """The float32 (N, H, W, 3) batch deepface's ONNX GhostFaceNet client receives from ``DeepFace.represent(rgb,
    model_name="GhostFaceNet", detector_backend="skip", normalization="ArcFace")`` for aligned uint8 RGB faces.

    Replicates deepface 0.0.103 (read: ``modules/representation.py`` and ``modules/preprocessing.py``): with
    ``detector_backend="skip"`` the array is reversed once "to RGB" and once more "rgb to bgr", so it reaches the
    model as given; ``resize_image`` keeps a 112x112 face as it is (not done here: give aligned 112x112 faces) and
    ``normalize_input(img, "ArcFace")`` is `preprocess.normalize` (same mean, division by 128). A file
    path is read by ``cv2`` as BGR and so reaches the model as BGR: give deepface RGB arrays.
    """
    return normalize(rgb_images)


def insightface_input(bgr_images):
    """The float32 (N, 3, H, W) blob insightface's ``ArcFaceONNX.get_feat`` builds from uint8 BGR faces when the
    graph starts with Sub and Mul: ``cv2.dnn.blobFromImages(images, 1.0, size, (0, 0, 0), swapRB=True)``, i.e.
    the raw RGB pixels, channels first."""
    return np.ascontiguousarray(np.asarray(bgr_images)[..., ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


def onnx_embeddings(path, batch):
    """Raw embeddings (N, D) of an ONNX file run by onnxruntime (CPU) on ``batch`` exactly as given."""
    onnxruntime = require("onnxruntime")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: batch})[0]


def keras2_file_embeddings(model, path, images):
    """Raw embeddings of ``images`` by a fresh copy of ``model`` that loaded the Keras-2 weights file ``path``."""
    import keras

    from GhostFaceNets import load_weights

    copy = keras.models.clone_model(model)
    load_weights(copy, path)
    return embed_images(load_runner(copy), images, flip=False)


def client_embeddings(model, target, path, images):
    """Raw embeddings of uint8 RGB ``images`` by the file ``path`` of ``target``, fed as that client feeds it."""
    if target == "insightface":
        return onnx_embeddings(path, insightface_input(np.asarray(images)[..., ::-1]))
    if target == "deepface":
        return onnx_embeddings(path, deepface_input(images))
    if target == "keras2-h5":
        return keras2_file_embeddings(model, path, images)
    return embed_images(load_runner(path), images, flip=False)


def check_client_parity(model, target, path, images):
    """`parity_report` of ``target``'s file ``path`` run as its client runs it, against ``model`` on uint8
    RGB ``images`` (no flip); logs one line."""
    reference = embed_images(load_runner(model), images, flip=False)
    report = parity_report(reference, client_embeddings(model, target, path, images))
    logger.info(f"{target} {path}: max abs diff {report['max_abs_diff']:.3g} (relative {report['relative_diff']:.3g}),"
                f" cosine min {report['min_cosine']:.7f} mean {report['mean_cosine']:.7f}")
    return report


def export_target(model, target, output_dir, stem, function=None):
    """Write ``model`` for ``target`` (one of :data:`TARGETS`) under ``output_dir``; returns the file's path.

    "onnx": ``<stem>_nhwc.onnx``; "tflite": ``<stem>_float32.tflite``; "insightface": ``<stem>_insightface.onnx``
    (`export_insightface`); "deepface": ``ghostfacenet_v1.onnx`` (`export_deepface`); "keras2-h5":
    ``<stem>_keras2.h5`` (`GhostFaceNets.save_weights_keras2`).
    """
    from GhostFaceNets import save_weights_keras2

    output_dir = Path(output_dir)
    if target == "onnx":
        return export_onnx(model, output_dir / f"{stem}_nhwc.onnx", "NHWC", function=function)
    if target == "tflite":
        return export_tflite(model, output_dir / f"{stem}_float32.tflite", "float32", function=function)
    if target == "insightface":
        return export_insightface(model, output_dir / f"{stem}_insightface.onnx", function=function)
    if target == "deepface":
        return export_deepface(model, output_dir, function=function)
    if target == "keras2-h5":
        output_dir.mkdir(parents=True, exist_ok=True)
        return save_weights_keras2(model, output_dir / f"{stem}_keras2.h5")
    raise ValueError(f"unknown export target {target!r}; choose from {TARGETS}")


def export_targets(model, targets, output_dir, images=None, stem=None):
    """Export ``model`` for every target in ``targets`` (see `export_target`) and check each file as its
    client runs it (`check_client_parity`) on ``images`` (default: 8 `sample_faces`).
    Returns {path: parity dict}."""
    model = float32_model(model)
    images = sample_faces(8, model.input_shape[1]) if images is None else images
    function = inference_function(model)
    reports = {}
    for target in targets:
        path = export_target(model, target, output_dir, stem or model.name, function)
        reports[str(path)] = check_client_parity(model, target, path, images)
    return reports


def parse_arguments(argv=None):
    """Command-line options of ``python export.py``."""
    parser = argparse.ArgumentParser(description="Export an embedding model to ONNX / TFLite / the formats of "
                                     "insightface, deepface and tf-keras, with a parity check.")
    parser.add_argument("-m", "--model", required=True, help="model file (.keras, .h5, tf-keras .keras)")
    parser.add_argument("-o", "--output_dir", default="exported", help="folder for the exported files")
    parser.add_argument("--target", nargs="+", choices=TARGETS, default=[],
                        help="export for these clients: onnx (NHWC), tflite (float32), insightface (NCHW ONNX on "
                        "raw pixels), deepface (ghostfacenet_v1.onnx), keras2-h5 (tf-keras / original weights)")
    parser.add_argument("--onnx", nargs="*", choices=INPUT_LAYOUTS, help="export ONNX in these layouts "
                        "(no value: NHWC)")
    parser.add_argument("--tflite", nargs="*", choices=TFLITE_QUANTIZATIONS,
                        help="export TFLite with these quantisations (no value: float32)")
    parser.add_argument("--images", help="folder of aligned faces for the parity check (default: seeded random "
                        "images)")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: export and print one parity line per file; returns {path: parity dict}."""
    from GhostFaceNets import embedding_model, load_model

    args = parse_arguments(argv)
    if args.onnx is None and args.tflite is None and not args.target:
        raise SystemExit("nothing to export: give --target, --onnx and/or --tflite")
    show_library_logs()
    model = embedding_model(load_model(args.model))
    images = None
    if args.images:
        images = inference.load_faces(inference.image_files(args.images)[:16], model.input_shape[1:3])
    stem = Path(args.model).stem
    reports = export_all(model, args.output_dir, onnx_layouts=[] if args.onnx is None else (args.onnx or ["NHWC"]),
                         tflite_quantizations=[] if args.tflite is None else (args.tflite or ["float32"]),
                         images=images, stem=stem)
    reports.update(export_targets(model, args.target, args.output_dir, images=images, stem=stem))
    return reports


if __name__ == "__main__":
    main()
