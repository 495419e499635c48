"""Export a basic (embedding) model to ONNX and TFLite, each checked against the Keras model.

ONNX (needs the optional packages of ``requirements-export.txt``): :func:`export_onnx` converts with tf2onnx.
The input is named ``input``, float32 ``(batch, H, W, 3)`` (``input_layout="NHWC"``, the default) or
``(batch, 3, H, W)`` (``"NCHW"``), normalised as in :mod:`inference`; the output ``embedding`` is the raw (not
L2-normalised) embedding (batch, D); the batch dimension is dynamic. Two tf2onnx 1.17 problems are handled at
export time:

- GhostNetV2's DFC branch resizes 3x3 maps back to 7x7; tf2onnx writes that as a float scale 7/3, which
  onnxruntime floors to 6, so the file would not load. :func:`set_resize_output_sizes` rewrites every such Resize
  node to take explicit output sizes.
- GhostNetV1's squeeze-excite gate adds a scalar (``0.2 x + 0.5``) right after a bias-free convolution, which makes
  tf2onnx's transpose optimiser fail and leave ~190 layout transposes in the graph; the scalar is given shape (1,)
  before conversion (:func:`scalars_as_vectors`), which leaves the numbers unchanged.

TFLite (TensorFlow's own converter; run with ``ai-edge-litert`` or ``tf.lite.Interpreter``): :func:`export_tflite`
writes ``float32``, ``float16`` (float16 weights) or ``int8`` (dynamic-range: int8 weights, float activations)
models with built-in ops only, a float32 NHWC input with dynamic batch and the same output.

Every export is followed by :func:`parity_report` on sample faces: max abs difference of the raw embeddings,
that difference relative to the largest Keras value, and min / mean cosine between Keras and exported embeddings.

Command line::

    python export.py -m model.keras -o exported/ --onnx --tflite float32 float16 int8
"""

import argparse
import warnings
from pathlib import Path

import numpy as np

import inference

TFLITE_QUANTIZATIONS = ("float32", "float16", "int8")
INPUT_LAYOUTS = ("NHWC", "NCHW")
DEFAULT_OPSET = 17
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
    """``tf.function`` computing ``{"embedding": model(x, training=False)}`` for float32 NHWC ``x``.

    Its input signature is ``(batch_size, H, W, 3)`` (None: any batch), named ``input``; traced once and reused by
    every export of the same model.
    """
    import tensorflow as tf

    height, width = model.input_shape[1:3]
    if not height or not width:
        raise ValueError(f"model {model.name!r} has no static input size; build it with a full input_shape")
    spec = tf.TensorSpec((batch_size, height, width, 3), tf.float32, name="input")
    return tf.function(lambda x: {"embedding": model(x, training=False)}, input_signature=[spec])


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


def export_onnx(model, output_path, input_layout="NHWC", opset=DEFAULT_OPSET, function=None):
    """Convert a Keras embedding model to an ONNX file with tf2onnx; returns ``output_path``.

    ``input_layout``: "NHWC" (input (N, H, W, 3)) or "NCHW" (input (N, 3, H, W)); the input is named ``input``
    and the output ``embedding``. ``function``: an already traced :func:`inference_function` of ``model``.
    """
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    onnx = require("onnx")
    tf2onnx = require("tf2onnx")
    function = function or inference_function(float32_model(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model_proto, _ = tf2onnx.convert.from_function(
            function, input_signature=function.input_signature, opset=opset,
            inputs_as_nchw=["input"] if input_layout == "NCHW" else None, custom_rewriter=[scalars_as_vectors])
    set_resize_output_sizes(model_proto)
    name_batch_dimension(model_proto)
    onnx.checker.check_model(model_proto)
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model_proto, str(output_path))
    return output_path


# ----------------------------------------------------------------------------------------------------------------
# TFLite


def tflite_converter(model, function, quantization):
    """A ``tf.lite.TFLiteConverter`` for ``function`` set up for ``quantization`` (built-in ops only)."""
    import keras
    import tensorflow as tf

    archive = keras.export.ExportArchive()  # tracks the model's variables for the converter
    archive.track(model)
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
    Path(output_path).parent.mkdir(parents=True, exist_ok=True)
    Path(output_path).write_bytes(flatbuffer)
    return output_path


# ----------------------------------------------------------------------------------------------------------------
# Parity


def sample_faces(count=8, size=112, seed=0, nuisance=0.5):
    """``count`` synthetic aligned faces (uint8 (count, size, size, 3)), two per identity, deterministic."""
    import synthetic_faces

    identities = synthetic_faces.make_identities(seed, range((count + 1) // 2))
    images = [image for identity in identities
              for image in synthetic_faces.render_identity_images(identity, seed, 2, nuisance, size)]
    return np.stack([inference.decode_image_bytes(data) for data in images[:count]])


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
    model(inference.normalize(images), training=True)
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
    """Compare the raw embeddings of ``exported_path`` (.onnx / .tflite) with ``model`` on uint8 ``images``;
    prints one line and returns :func:`parity_report`'s dict."""
    batch = inference.normalize(images)
    reference = np.asarray(model(batch, training=False))
    exported = inference.load_runner(exported_path)(batch)
    report = parity_report(reference, exported)
    print(f"{label or exported_path}: max abs diff {report['max_abs_diff']:.3g} (relative "
          f"{report['relative_diff']:.3g}), cosine min {report['min_cosine']:.7f} mean {report['mean_cosine']:.7f}")
    return report


def export_all(model, output_dir, onnx_layouts=("NHWC",), tflite_quantizations=TFLITE_QUANTIZATIONS, images=None,
               stem=None):
    """Export ``model`` to every requested ONNX layout and TFLite quantisation under ``output_dir``, checking
    each against Keras on ``images`` (default: 8 synthetic faces). Returns {path: parity dict}."""
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


def parse_arguments(argv=None):
    """Command-line options of ``python export.py``."""
    parser = argparse.ArgumentParser(description="Export an embedding model to ONNX / TFLite with a parity check.")
    parser.add_argument("-m", "--model", required=True, help="Keras model file (.keras or .h5)")
    parser.add_argument("-o", "--output_dir", default="exported", help="folder for the exported files")
    parser.add_argument("--onnx", nargs="*", choices=INPUT_LAYOUTS, help="export ONNX in these layouts "
                        "(no value: NHWC)")
    parser.add_argument("--tflite", nargs="*", choices=TFLITE_QUANTIZATIONS,
                        help="export TFLite with these quantisations (no value: float32)")
    parser.add_argument("--images", help="folder of aligned faces for the parity check (default: synthetic faces)")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: export and print one parity line per file; returns {path: parity dict}."""
    from GhostFaceNets import load_model

    args = parse_arguments(argv)
    if args.onnx is None and args.tflite is None:
        raise SystemExit("nothing to export: give --onnx and/or --tflite")
    model = inference.embedding_model(load_model(args.model))
    images = None
    if args.images:
        images = inference.load_faces(inference.image_files(args.images)[:16], model.input_shape[1:3])
    return export_all(model, args.output_dir, onnx_layouts=[] if args.onnx is None else (args.onnx or ["NHWC"]),
                      tflite_quantizations=[] if args.tflite is None else (args.tflite or ["float32"]),
                      images=images, stem=Path(args.model).stem)


if __name__ == "__main__":
    main()
