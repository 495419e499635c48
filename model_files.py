"""Reading model and weight files, including those the original Keras-2 GhostFaceNets code saved.

Keras 2 wrote weights as "legacy HDF5": one group per layer (in the model's layer order) listing that layer's
arrays. The original's GhostFaceNetV1 layers have automatic names (``conv2d_17``), so they are matched to ours by
layer order, which `backbones` reproduces; GhostNetV2 layers carry stable names (``stack3_ghost_1_prim_conv``)
and are matched by name. Every pair is shape-checked before anything is assigned, so a file from another
architecture is refused with the first differing layer named and the model left untouched.

Whole-model ``.h5`` files of the original cannot be deserialised by Keras 3 (Keras-2-only config keys, TF-op
layers, a different ``hard_sigmoid``); `original_architecture_candidates` reads their stored configuration
and returns the `GhostFaceNets.buildin_models` arguments that rebuild the same network here.

The other way round, `write_keras2_weights` writes the layout tf-keras writes for ``save_weights("x.h5")``,
with the layer names the original's builders give (`keras2_layer_names`), so the original code on tf-keras
loads it with ``model.load_weights(path)``. ``.keras`` archives saved by tf-keras (their config names
tf-keras class paths) are opened through `keras3_archive`, which maps those paths to Keras 3's
(`keras_compat.keras3_module_of_tf_keras`).
"""

import io
import json
import re
import tempfile
import warnings
import zipfile
from pathlib import Path

import h5py
import numpy as np

from atomic_io import atomic_path
from keras_compat import keras3_module_of_tf_keras

HEAD_CONV_NAMES = {"GDC_conv", "pw_conv"}
MAX_WIDTH_CANDIDATES = 3
HEAD_LAYER_NAMES = {"GDC_dw": "GDC", "E_dense": "E", "GAP_dense": "GAP", "GNAP_dense": "GNAP"}
# The tf-keras version whose save_weights("x.h5") layout write_keras2_weights reproduces (attrs, groups, names).
KERAS2_LAYOUT_VERSION = "2.21.0"
# Layers the original GhostFaceNets builders name explicitly (the embedding heads); a V1 backbone's are automatic.
ORIGINAL_NAMED_PREFIXES = ("GDC_", "E_", "GAP_", "GNAP_", "pw_", "pre_embedding", "embedding")
# Variables Keras 3 names differently from tf-keras: (layer class, Keras 3 name) → tf-keras name.
KERAS2_VARIABLE_NAMES = {("DepthwiseConv2D", "kernel"): "depthwise_kernel"}
# Keras 3's serialisation of backbones.hard_sigmoid_keras2 (registered when backbones is imported).
KERAS2_HARD_SIGMOID = {"module": "builtins", "class_name": "function", "registered_name": "function",
                       "config": "keras_insightface>hard_sigmoid_keras2"}
WEIGHTS_ONLY_HINT = ("build the same architecture (GhostFaceNets.GhostFaceNetV1(...), GhostFaceNetV2(...) or "
                     "buildin_models(...)), then call GhostFaceNets.load_weights(model, path)")


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
    """Load ``path`` into ``model``: Keras 3 files through Keras, legacy HDF5 through `pair_layers`.

    All or nothing: legacy files are shape-checked before any assignment; when Keras fails part-way through a
    Keras 3 file (another architecture), every weight of ``model`` is put back as it was before the error is
    raised, naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model or weights file")
    if is_keras3_file(path):
        return load_keras3_weights(model, path)
    return load_legacy_weights(model, read_legacy_weights(path), path)


def load_keras3_weights(model, path):
    """``model.load_weights(path)``, restoring every weight of ``model`` when Keras raises part-way through."""
    saved = [variable.numpy() for variable in model.weights]
    try:
        model.load_weights(path)
    except Exception as error:  # Keras raises ValueError, KeyError, ... for a file of another model
        for variable, value in zip(model.weights, saved, strict=True):
            variable.assign(value)
        raise ValueError(f"{path}: its weights do not fit model {model.name!r}; the model is left unchanged "
                         f"({type(error).__name__}: {error})") from error
    return model


def load_legacy_weights(model, file_layers, path):
    """Assign ``file_layers`` (from `read_legacy_weights` of ``path``) to ``model`` after checking all shapes."""
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


def original_architecture_candidates(path, config=None):
    """``buildin_models`` keyword arguments that may rebuild the GhostFaceNet stored in ``path``, most likely first.

    Reads the version (V2 has ``stack1_`` layers), input shape, stem stride, width, activation, head type,
    embedding size, GDC bias, BN settings, dropout and pointwise block from the stored configuration (``config``:
    the Keras-2 model config when already read, e.g. from a tf-keras ``.keras`` archive; else read from ``path``).
    """
    layers = layer_configs(config or read_model_config(path))
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


# ----------------------------------------------------------------------------------------------------------------
# Writing the Keras-2 weights layout


def keras2_snake_case(class_name):
    """The automatic layer name stem tf-keras derives from a class name (``DepthwiseConv2D`` → ``depthwise_conv2d``)."""
    intermediate = re.sub("(.)([A-Z][a-z0-9]+)", r"\1_\2", class_name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", intermediate).lower()


def original_construction_order(layers):
    """``layers`` (a GhostNetV1 model's, in layer order) in the order the original code created them.

    The original builds a bottleneck's shortcut branch after its second ghost module, while the layer order lists
    some shortcut layers in between; each ``stackN_short_*`` layer is therefore moved to just before
    ``stackN_output``.
    """
    ordered, pending = [], []
    for layer in layers:
        if re.match(r"stack\d+_short_", layer.name):
            pending.append(layer)
            continue
        if re.fullmatch(r"stack\d+_output", layer.name):
            ordered.extend(pending)
            pending = []
        ordered.append(layer)
    return ordered + pending


def keras2_auto_name_stem(layer):
    """The automatic name stem of ``layer`` in the original: PReLU layers replaced ``Activation("relu")`` ones
    and kept their names, so both are ``activation``."""
    return "activation" if layer.__class__.__name__ == "PReLU" else keras2_snake_case(layer.__class__.__name__)


def keras2_layer_names(model):
    """The name the original GhostFaceNets code gives each layer of ``model``, in layer order.

    A GhostNetV1 model (``model.name`` starting with ``ghostnetv1``) gets tf-keras' automatic names (``conv2d``,
    ``conv2d_1``, ... numbered per class in the original's construction order, the input ``input_1``) except its
    head layers, which the original names explicitly (``GDC_conv``, ``pre_embedding``, ``embedding``, ...).
    Other models (GhostNetV2 carries the original's names already) keep their own names.
    """
    if not model.name.startswith("ghostnetv1"):
        return [layer.name for layer in model.layers]
    counts, names = {}, {}
    for layer in original_construction_order(model.layers):
        if layer.name.startswith(ORIGINAL_NAMED_PREFIXES):
            names[id(layer)] = layer.name
            continue
        stem = "input" if layer.__class__.__name__ == "InputLayer" else keras2_auto_name_stem(layer)
        count = counts.get(stem, 1 if stem == "input" else 0)
        counts[stem] = count + 1
        names[id(layer)] = f"{stem}_{count}" if count else stem
    return [names[id(layer)] for layer in model.layers]


def keras2_weight_name(layer, layer_name, variable):
    """tf-keras' name of a weight of ``layer`` in a weights file: ``<layer name>/<tf-keras variable name>:0``."""
    name = variable.name.split("/")[-1]
    return f"{layer_name}/{KERAS2_VARIABLE_NAMES.get((layer.__class__.__name__, name), name)}:0"


def write_keras2_weights(model, path, layer_names=None):
    """Write ``model``'s weights to ``path`` in the layout tf-keras writes for ``save_weights("x.h5")``.

    Root attributes ``layer_names`` (every layer, in layer order), ``backend`` and ``keras_version``; one group per
    layer with a ``weight_names`` attribute and a dataset per weight at ``<layer>/<layer>/<variable>:0``.
    ``layer_names``: the names to write (default `keras2_layer_names`). Written atomically.
    """
    layer_names = layer_names or keras2_layer_names(model)
    string = h5py.string_dtype()
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as file:
        file.attrs["backend"] = "tensorflow"
        file.attrs["keras_version"] = KERAS2_LAYOUT_VERSION
        file.attrs["layer_names"] = np.array(layer_names, dtype=string)
        for layer, name in zip(model.layers, layer_names, strict=True):
            group = file.create_group(name)
            weight_names = [keras2_weight_name(layer, name, variable) for variable in layer.weights]
            group.attrs["weight_names"] = np.array(weight_names, dtype=string) if weight_names else np.zeros(0)
            for weight_name, variable in zip(weight_names, layer.weights, strict=True):
                group.create_dataset(weight_name, data=np.asarray(variable.numpy()))
    return path


# ----------------------------------------------------------------------------------------------------------------
# Recognising weights-only files and tf-keras archives


def is_weights_only_file(path):
    """True for a weights file without a model: ``.weights.h5``, or an HDF5 file with ``layer_names`` at its root
    and no ``model_config`` (tf-keras ``save_weights("x.h5")``)."""
    path = Path(path)
    if path.name.endswith(".weights.h5"):
        return True
    if zipfile.is_zipfile(path) or not h5py.is_hdf5(path):
        return False
    with open_h5(path) as file:
        return "model_config" not in file.attrs and "layer_names" in file.attrs


def weights_only_error(path):
    """The ValueError ``load_model`` raises for a weights-only file: what it is and how to load it."""
    return ValueError(f"{path}: a weights-only file (no model architecture in it); {WEIGHTS_ONLY_HINT}")


def keras3_config(config):
    """A copy of a tf-keras ``.keras`` config (dict / list tree) that Keras 3 reads the same way: tf-keras
    ``module`` entries mapped to Keras 3's, and the ``"hard_sigmoid"`` activation (Keras 2's ``clip(0.2 x + 0.5)``,
    which Keras 3 redefined) replaced by `backbones.hard_sigmoid_keras2`."""
    if isinstance(config, list):
        return [keras3_config(item) for item in config]
    if not isinstance(config, dict):
        return config
    converted = {key: keras3_config(value) for key, value in config.items()}
    module = converted.get("module")
    if isinstance(module, str) and module.startswith("tf_keras"):
        converted["module"] = keras3_module_of_tf_keras(module)
    if converted.get("activation") == "hard_sigmoid":
        converted["activation"] = KERAS2_HARD_SIGMOID
    return converted


def is_tf_keras_archive(path):
    """True for a ``.keras`` zip written by tf-keras (its ``config.json`` names ``tf_keras`` modules)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        if "config.json" not in archive.namelist():
            return False
        return '"tf_keras' in archive.read("config.json").decode("utf8")


def keras3_archive(path, folder):
    """Copy the tf-keras ``.keras`` archive ``path`` into ``folder`` with its class paths mapped to Keras 3's
    (`keras3_config`); returns the copy's path. The weights inside are used as they are."""
    copy = Path(folder) / (Path(path).stem + ".keras")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(copy, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                data = json.dumps(keras3_config(json.loads(data))).encode("utf8")
            target.writestr(item, data)
    return copy


def read_archive_config(path):
    """The model config (``config.json``) of a ``.keras`` archive, as a dict."""
    with zipfile.ZipFile(path) as archive:
        return json.loads(archive.read("config.json"))


def archive_weight_keys(config):
    """(layer name, group name) of each layer of a ``.keras`` config, in order. Both tf-keras and Keras 3 store a
    functional model's layers in ``model.weights.h5`` under their class name in snake case, numbered per class in
    layer order (``conv2d``, ``conv2d_1``, ``p_re_lu``, ...), not under the layer names."""
    counts, keys = {}, []
    for class_name, layer_config in layer_configs(config):
        stem = keras2_snake_case(class_name)
        count = counts.get(stem, 0)
        counts[stem] = count + 1
        keys.append((layer_config["name"], f"{stem}_{count}" if count else stem))
    return keys


def read_archive_weights(path, config):
    """Weighted layers of a ``.keras`` archive (``model.weights.h5``: ``layers/<group>/vars/<i>``), in the order of
    ``config``'s layers: a list of ``(layer_name, [numpy arrays])`` as `read_legacy_weights` gives."""
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as file:
        layer_weights = []
        for layer_name, key in archive_weight_keys(config):
            variables = file["layers"].get(f"{key}/vars")
            if variables is not None and len(variables):
                layer_weights.append((layer_name, [variables[str(i)][()] for i in range(len(variables))]))
    return layer_weights


def load_tf_keras_archive(path, load):
    """Open a tf-keras ``.keras`` archive with ``load(keras3_path)`` (e.g. ``keras.saving.load_model``) on a
    temporary copy whose class paths are Keras 3's; ValueError naming ``path`` when that fails."""
    with tempfile.TemporaryDirectory() as folder:
        try:
            return load(keras3_archive(path, folder))
        except Exception as error:  # Keras raises many types for configs it cannot rebuild
            raise ValueError(f"{path}: a tf-keras .keras archive whose model could not be rebuilt in Keras 3 "
                             f"({type(error).__name__}: {error}); load its weights into a model built here with "
                             "GhostFaceNets.load_weights") from error
