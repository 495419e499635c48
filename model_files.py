"""Reading model and weight files, including those the original Keras-2 GhostFaceNets code saved.

Keras 2 wrote weights as "legacy HDF5": one group per layer (in the model's layer order) listing that layer's
arrays. The original's GhostFaceNetV1 layers have automatic names (``conv2d_17``), so they are matched to ours by
layer order, which :mod:`backbones` reproduces; GhostNetV2 layers carry stable names (``stack3_ghost_1_prim_conv``)
and are matched by name. Every pair is shape-checked before anything is assigned, so a file from another
architecture is refused with the first differing layer named and the model left untouched.

Whole-model ``.h5`` files of the original cannot be deserialised by Keras 3 (Keras-2-only config keys, TF-op
layers, a different ``hard_sigmoid``); :func:`original_architecture_candidates` reads their stored configuration
and returns the :func:`GhostFaceNets.buildin_models` arguments that rebuild the same network here.
"""

import json
import warnings
import zipfile
from pathlib import Path

import h5py

HEAD_CONV_NAMES = {"GDC_conv", "pw_conv"}
MAX_WIDTH_CANDIDATES = 3
HEAD_LAYER_NAMES = {"GDC_dw": "GDC", "E_dense": "E", "GAP_dense": "GAP", "GNAP_dense": "GNAP"}


def open_h5(path):
    """Open ``path`` as HDF5 for reading, with a clear error when it is missing or not HDF5."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model or weights file")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not an HDF5 file ({error})") from None


def decode(value):
    """h5py attribute value (bytes or str) as str."""
    return value.decode("utf8") if isinstance(value, bytes) else str(value)


def is_keras3_file(path):
    """True for files Keras 3 writes and reads itself: ``.keras`` archives, ``.weights.h5``, Keras 3 ``.h5``."""
    path = Path(path)
    if path.name.endswith(".weights.h5") or zipfile.is_zipfile(path):
        return True
    with open_h5(path) as file:
        return decode(file.attrs.get("keras_version", "")).startswith("3")


def is_original_keras2_model(path):
    """True when ``path`` is a whole-model HDF5 file written by Keras 2 (the original's checkpoints)."""
    path = Path(path)
    if zipfile.is_zipfile(path) or path.suffix not in (".h5", ".hdf5"):
        return False
    with open_h5(path) as file:
        return "model_config" in file.attrs and not decode(file.attrs.get("keras_version", "")).startswith("3")


def read_legacy_weights(path):
    """Weighted layers of a legacy HDF5 file, in file order: a list of ``(layer_name, [numpy arrays])``."""
    with open_h5(path) as file:
        group = file.get("model_weights", file)
        if "layer_names" not in group.attrs:
            raise ValueError(f"{path}: HDF5 file without a 'layer_names' attribute; not a Keras weights file")
        layer_weights = []
        for layer_name in (decode(name) for name in group.attrs["layer_names"]):
            layer_group = group[layer_name]
            arrays = [layer_group[decode(name)][()] for name in layer_group.attrs.get("weight_names", [])]
            if arrays:
                layer_weights.append((layer_name, arrays))
    return layer_weights


def weighted_layers(model):
    """Layers of ``model`` that hold weights, in layer order."""
    return [layer for layer in model.layers if layer.weights]


def describe(name, shapes):
    """``'name' [shape, ...]`` for error messages."""
    return f"'{name}' {[tuple(shape) for shape in shapes]}"


def pair_layers(model, file_layers, path):
    """Pair each weighted layer of ``model`` with a ``(name, arrays)`` entry of the file, by name or by order.

    By name when every weighted layer name of the model occurs in the file, else by position. Raises
    ``ValueError`` naming the first layer whose weight shapes differ, or the count mismatch.
    """
    model_layers = weighted_layers(model)
    by_name = dict(file_layers)
    if all(layer.name in by_name for layer in model_layers):
        pairs = [(layer, layer.name, by_name[layer.name]) for layer in model_layers]
        unused = [name for name, _ in file_layers if name not in {layer.name for layer in model_layers}]
    else:
        pairs = [(layer, name, arrays) for layer, (name, arrays) in zip(model_layers, file_layers, strict=False)]
        unused = [name for name, _ in file_layers[len(model_layers):]]
    for index, (layer, file_name, arrays) in enumerate(pairs):
        model_shapes = [tuple(weight.shape) for weight in layer.weights]
        file_shapes = [tuple(array.shape) for array in arrays]
        if model_shapes != file_shapes:
            raise ValueError(
                f"{path}: weighted layer #{index} of the model, {describe(layer.name, model_shapes)} "
                f"({layer.__class__.__name__}), does not match the file's layer {describe(file_name, file_shapes)}. "
                "The file was saved from a different architecture (check version, width, strides, use_bias, "
                "emb_shape, output_layer)."
            )
    if len(pairs) < len(model_layers):
        missing = model_layers[len(pairs)]
        raise ValueError(
            f"{path}: the file holds {len(file_layers)} weighted layers but the model has {len(model_layers)}; "
            f"nothing in the file for layer #{len(pairs)} '{missing.name}' ({missing.__class__.__name__}). "
            "The file was saved from a different architecture."
        )
    if unused:
        warnings.warn(f"{path}: {len(unused)} weighted layers of the file are not in the model and were skipped: "
                      f"{unused[:5]}{' ...' if len(unused) > 5 else ''}", stacklevel=3)
    return pairs


def load_weights(model, path):
    """Load ``path`` into ``model``: Keras 3 files through Keras, legacy HDF5 through :func:`pair_layers`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model or weights file")
    if is_keras3_file(path):
        model.load_weights(path)
        return model
    return load_legacy_weights(model, read_legacy_weights(path), path)


def load_legacy_weights(model, file_layers, path):
    """Assign ``file_layers`` (from :func:`read_legacy_weights` of ``path``) to ``model`` after checking all shapes."""
    for layer, _, arrays in pair_layers(model, file_layers, path):
        layer.set_weights(arrays)
    return model


def read_model_config(path):
    """The ``model_config`` JSON stored in a whole-model HDF5 file, as a dict."""
    with open_h5(path) as file:
        if "model_config" not in file.attrs:
            raise ValueError(f"{path}: no 'model_config' attribute; a weights-only file needs load_weights")
        return json.loads(decode(file.attrs["model_config"]))


def layer_configs(config):
    """(class_name, layer config) pairs of a functional model config, in stored order."""
    return [(layer["class_name"], layer["config"]) for layer in config["config"]["layers"]]


def find_layer(layers, name):
    """Config of the layer called ``name``, or None."""
    return next((cfg for _, cfg in layers if cfg["name"] == name), None)


def activation_after(layers, name):
    """Activation name ("prelu", "relu", ...) of the layer right after the layer called ``name``."""
    names = [cfg["name"] for _, cfg in layers]
    class_name, cfg = layers[names.index(name) + 1]
    return "prelu" if class_name == "PReLU" else cfg.get("activation", "linear")


def width_candidates(stem_filters, final_filters, head_channels):
    """Widths, roundest first, for which the stem and final conv widths of a GhostNet equal the stored ones."""
    from backbones import STEM_CHANNELS, make_divisible

    hundredths = sorted(range(1, 801), key=lambda k: (k % 10 != 0, k % 5 != 0, k))
    return [k / 100 for k in hundredths
            if make_divisible(STEM_CHANNELS * k / 100) == stem_filters
            and make_divisible(head_channels * k / 100) == final_filters]


def original_architecture_candidates(path):
    """``buildin_models`` keyword arguments that may rebuild the GhostFaceNet stored in ``path``, most likely first.

    Reads the version (V2 has ``stack1_`` layers), input shape, stem stride, width, activation, head type,
    embedding size, GDC bias, BN settings, dropout and pointwise block from the stored configuration.
    """
    layers = layer_configs(read_model_config(path))
    names = [cfg["name"] for _, cfg in layers]
    version = "ghostnetv2" if any(name.startswith("stack1_") for name in names) else "ghostnetv1"
    output_layer = next((head for name, head in HEAD_LAYER_NAMES.items() if name in names), None)
    if output_layer is None or "pre_embedding" not in names:
        raise ValueError(f"{path}: not a GhostFaceNet basic model of the original (no embedding head found)")
    backbone_convs = [cfg for cls, cfg in layers if cls == "Conv2D" and cfg["name"] not in HEAD_CONV_NAMES
                      and not cfg["name"].endswith(("se_1_conv", "se_2_conv"))]
    input_config = layers[0][1]
    input_shape = tuple(input_config.get("batch_input_shape") or input_config.get("batch_shape"))[1:]
    pre_embedding = find_layer(layers, "pre_embedding")
    head_config = find_layer(layers, {"GDC": "GDC_conv", "E": "E_dense", "GAP": "GAP_dense", "GNAP": "GNAP_dense"}[
        output_layer])
    dropout_config = next((cfg for cls, cfg in layers if cls == "Dropout"), None)
    pointwise = find_layer(layers, "pw_conv")
    kwargs = {
        "stem_model": version,
        "input_shape": input_shape,
        "output_layer": output_layer,
        "emb_shape": head_config.get("filters", head_config.get("units")),
        "use_bias": head_config["use_bias"],
        "scale": pre_embedding.get("scale", True),
        "bn_momentum": pre_embedding["momentum"],
        "bn_epsilon": pre_embedding["epsilon"],
        "dropout": dropout_config["rate"] if dropout_config else 0,
        "add_pointwise_conv": pointwise["filters"] if pointwise else False,
        "pointwise_conv_act": activation_after(layers, "pw_bn") if pointwise else "relu",
        "strides": backbone_convs[0]["strides"][0],
        "activation": activation_after(layers, next(cfg["name"] for cls, cfg in layers if cls == "BatchNormalization")),
    }
    if version == "ghostnetv2":
        dfc_stacks = [i for i in range(1, 17) if f"stack{i}_ghost_1_short_1_conv" in names]
        kwargs["num_ghost_module_v1_stacks"] = dfc_stacks[0] - 1 if dfc_stacks else -1
    head_channels = 960 if version == "ghostnetv2" else 512
    widths = width_candidates(backbone_convs[0]["filters"], backbone_convs[-1]["filters"], head_channels)
    if not widths:
        raise ValueError(f"{path}: no GhostNet width gives stem {backbone_convs[0]['filters']} and final "
                         f"{backbone_convs[-1]['filters']} channels")
    return [{**kwargs, "width": width} for width in widths[:MAX_WIDTH_CANDIDATES]]
