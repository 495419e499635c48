"""The one embedding path: model runners with one input contract, and the function that embeds images with them.

Runner contract (every kind): a call takes an RGB batch (N, H, W, 3) of values 0..255 (uint8, or float holding
those values; NumPy or a TensorFlow tensor), resizes it bilinearly to the runner's `image_size` when its size
differs, normalises it with `preprocess.normalize` (unless the model file does so itself, as MXNet checkpoints
do) and returns the raw, not L2-normalised, embeddings as a float32 NumPy array (N, D). Every runner has the
attributes `kind` (`"keras"`, `"onnx"`, `"tflite"`, `"torch"`, `"mxnet"` or `"callable"`) and `image_size`
(height, width).

`load_runner(model_or_path)` picks the runner: a Keras model (its embedding part, `GhostFaceNets.embedding_model`),
a `.keras` / `.h5` file, `.onnx` (onnxruntime; NCHW inputs detected), `.tflite` (LiteRT), `.pt` / `.pth`
(TorchScript) or `"mxnet_prefix,epoch"` (MXNet). The last two, and onnxruntime, are optional packages: a missing
one gives an ImportError naming the model file and the package.

`embed_images(runner, images, flip=True)` computes `emb(x) + emb(flip_left_right(x))` (or `emb(x)` without flip)
in batches, the flipped images in the same runner call as the images (one pass over ``[x, flip(x)]``);
`embed_dataset` does it for a batched `tf.data` dataset. Evaluation, inference and export all embed through
these. The Keras runner runs the model with its batch normalisation folded into the convolutions
(`bn_folding`), equal to the unfolded model to float rounding.
"""

import importlib
import os
import warnings
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from bn_folding import BatchNormFold
from GhostFaceNets import embedding_model, load_model
from preprocess import normalize

DEFAULT_IMAGE_SIZE = (112, 112)
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
TORCH_SUFFIXES = (".pt", ".pth")
RAW_INPUT_METADATA_KEY = "input_pixels"  # ONNX metadata of models fed 0..255 pixels
MODEL_KINDS_HINT = ".keras/.h5, .onnx, .tflite, .pt/.pth (torch) or 'mxnet_prefix,epoch' (mxnet)"


# ----------------------------------------------------------------------------------------------------------------
# Helpers shared by the runners


def optional_import(module, model_file):
    """Import `module`, or raise ImportError saying which package the model file `model_file` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(f"{model_file}: running this model needs the optional package {module!r}, "
                          "which is not installed") from error


def require_file(path):
    """`path` as a Path; FileNotFoundError naming it when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    return path


def resize_images(images, image_size):
    """An RGB batch (N, H, W, 3) of 0..255 values as float32, resized bilinearly (no antialiasing) to `image_size`
    when its (H, W) differs; a tensor stays a tensor, a NumPy array stays an array."""
    if tuple(images.shape[1:3]) == tuple(image_size):
        return tf.cast(images, tf.float32) if tf.is_tensor(images) else np.asarray(images, dtype=np.float32)
    resized = tf.image.resize(tf.cast(images, tf.float32), image_size, method="bilinear", antialias=False)
    return resized if tf.is_tensor(images) else resized.numpy()


def model_input(images, image_size, raw_pixels=False):
    """The float32 NumPy batch (N, H, W, 3) a file runner feeds its model: resized, then normalised (or left as
    0..255 values for a model that normalises inside its graph, `raw_pixels`)."""
    images = images if tf.is_tensor(images) else np.asarray(images)
    resized = resize_images(images, image_size)
    return np.asarray(resized, dtype=np.float32) if raw_pixels else np.asarray(normalize(resized))


def in_fixed_batches(run, batch, fixed_batch):
    """`run(batch)`, or, for a model file with a fixed batch size, `run` on zero-padded chunks of that size."""
    if fixed_batch is None:
        return run(batch)
    outputs = []
    for start in range(0, len(batch), fixed_batch):
        chunk = batch[start:start + fixed_batch]
        padded = np.concatenate([chunk, np.zeros((fixed_batch - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        outputs.append(run(padded)[: len(chunk)])
    return np.concatenate(outputs)


# ----------------------------------------------------------------------------------------------------------------
# Runners


class KerasRunner:
    """Runs the embedding part of a Keras model (`GhostFaceNets.embedding_model`) in inference mode
    (`training=False`), with its batch normalisation folded into the layers before it
    (`bn_folding.BatchNormFold`), through traced `tf.function`s (0..255 float32 batch → float32 embeddings,
    normalisation inside): `function` for ``emb(x)``, `flip_function` for ``emb(x) + emb(flip_left_right(x))``
    in one pass over the 2N batch ``[x, flip(x)]``.

    Args:
        model: a Keras model (its embedding part is run).
        follow_weights: True: the folded model shares `model`'s unfolded layers, and `refold` brings its folded
            kernels up to date with `model`'s current weights (a runner kept while `model` trains: the evaluation
            callbacks call `refold` before every evaluation). False: a copy of the weights at construction (a
            model loaded from a file, which nothing else changes). Either way the kernels are folded once at
            construction.

    Attributes:
        model: the embedding model given.
        inference_model: the folded model that runs.
    """

    kind = "keras"

    def __init__(self, model, follow_weights=True):
        self.model = embedding_model(model)
        if self.model is not model:
            warnings.warn(f"model {model.name!r} outputs more than its embedding; using its 'embedding' layer",
                          stacklevel=3)
        height, width = self.model.input_shape[1:3]
        self.image_size = (height, width) if height and width else DEFAULT_IMAGE_SIZE
        self.follow_weights = follow_weights
        self.fold = BatchNormFold(self.model, share_layers=follow_weights)
        self.inference_model = self.fold.model
        spec = tf.TensorSpec((None, height, width, 3), tf.float32)
        self.function = tf.function(self.embed_normalized, input_signature=[spec])
        self.flip_function = tf.function(self.embed_flip_added, input_signature=[spec])

    def embed_normalized(self, images):
        """Embeddings (N, D) float32 tensor of a 0..255 float32 batch: `inference_model(normalize(images))`."""
        return tf.cast(self.inference_model(normalize(images), training=False), tf.float32)

    def refold(self):
        """Recompute the folded kernels and biases from `model`'s current weights (eagerly, once; about one pass
        over the weights). Only a runner with ``follow_weights`` then embeds with all of `model`'s current
        weights; a copy keeps its other layers' weights from construction."""
        if not self.follow_weights:
            raise ValueError("this runner holds a copy of the model's weights (follow_weights=False); "
                             "build a new runner to embed with other weights")
        self.fold.refold()

    def embed_flip_added(self, images):
        """``emb(x) + emb(flip_left_right(x))`` (N, D) float32 tensor of a 0..255 float32 batch (N, H, W, 3),
        from one call of `function` (its one trace, inlined) on the 2N batch."""
        count = tf.shape(images)[0]
        embeddings = self.function(tf.concat([images, tf.reverse(images, axis=[2])], axis=0))
        return embeddings[:count] + embeddings[count:]

    def __call__(self, images):
        images = images if tf.is_tensor(images) else np.asarray(images)
        return np.asarray(self.function(resize_images(images, self.image_size)), dtype=np.float32)

    def flip_added(self, images):
        """``self(x) + self(flip_left_right(x))``, float32 NumPy (N, D), in one call of `flip_function`."""
        images = images if tf.is_tensor(images) else np.asarray(images)
        return np.asarray(self.flip_function(resize_images(images, self.image_size)), dtype=np.float32)


class OnnxRunner:
    """Runs an ONNX embedding model in onnxruntime (CPU); NCHW inputs (N, 3, H, W) are detected and transposed,
    and a fixed batch size is filled by padding."""

    kind = "onnx"

    def __init__(self, path, num_threads=0):
        onnxruntime = optional_import("onnxruntime", path)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads or 0
        self.session = onnxruntime.InferenceSession(str(require_file(path)), options,
                                                    providers=["CPUExecutionProvider"])
        inputs = self.session.get_inputs()[0]
        self.input_name, shape = inputs.name, inputs.shape
        self.channels_first = shape[1] == 3 and shape[3] != 3
        height, width = (shape[2], shape[3]) if self.channels_first else (shape[1], shape[2])
        static = isinstance(height, int) and isinstance(width, int)
        self.image_size = (height, width) if static else DEFAULT_IMAGE_SIZE
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.raw_pixels = RAW_INPUT_METADATA_KEY in metadata  # export's insightface target normalises in the graph

    def run_exact(self, batch):
        """One session run on an NHWC `batch` (transposed for an NCHW model)."""
        batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2)) if self.channels_first else batch
        return self.session.run(None, {self.input_name: batch})[0].astype(np.float32)

    def __call__(self, images):
        return in_fixed_batches(self.run_exact, model_input(images, self.image_size, self.raw_pixels),
                                self.fixed_batch)


def tflite_interpreter(path, num_threads=None):
    """A LiteRT interpreter for `path`: `ai_edge_litert` when installed, else TensorFlow's `tf.lite`."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=str(require_file(path)), num_threads=num_threads)


class TFLiteRunner:
    """Runs a float-input TFLite embedding model; a dynamic batch is resized to each call's batch, a fixed one is
    filled by padding."""

    kind = "tflite"

    def __init__(self, path, num_threads=None):
        self.interpreter = tflite_interpreter(path, num_threads)
        self.input, self.output = self.interpreter.get_input_details()[0], self.interpreter.get_output_details()[0]
        if self.input["dtype"] != np.float32:
            raise ValueError(f"{path}: the TFLite input is {np.dtype(self.input['dtype']).name}; only float32-input "
                             "models (float32, float16 or dynamic-range int8) are supported")
        self.image_size = tuple(int(size) for size in self.input["shape"][1:3])
        self.fixed_batch = int(self.input["shape_signature"][0]) if self.input["shape_signature"][0] > 0 else None
        self.allocated_batch = None

    def run_exact(self, batch):
        """Invoke once on a normalised `batch` whose size the interpreter accepts."""
        if self.allocated_batch != len(batch):
            if self.fixed_batch is None:
                self.interpreter.resize_tensor_input(self.input["index"], batch.shape)
            self.interpreter.allocate_tensors()
            self.allocated_batch = len(batch)
        self.interpreter.set_tensor(self.input["index"], np.ascontiguousarray(batch, dtype=np.float32))
        self.interpreter.invoke()
        return np.array(self.interpreter.get_tensor(self.output["index"]), dtype=np.float32)

    def __call__(self, images):
        return in_fixed_batches(self.run_exact, model_input(images, self.image_size), self.fixed_batch)


class TorchRunner:
    """Runs a TorchScript embedding model (needs torch) on CPU: normalised NCHW input."""

    kind = "torch"

    def __init__(self, path, image_size=DEFAULT_IMAGE_SIZE):
        self.torch = optional_import("torch", path)
        self.model = self.torch.jit.load(str(require_file(path)), map_location="cpu").eval()
        self.image_size = tuple(image_size)

    def __call__(self, images):
        batch = np.ascontiguousarray(model_input(images, self.image_size).transpose(0, 3, 1, 2))
        with self.torch.no_grad():
            return np.asarray(self.model(self.torch.from_numpy(batch)).numpy(), dtype=np.float32)


class MxnetRunner:
    """Runs an MXNet checkpoint `"prefix,epoch"` (needs mxnet) on CPU, output layer `layer`; the InsightFace
    checkpoints normalise inside their graph, so they get the raw 0..255 values (NCHW)."""

    kind = "mxnet"

    def __init__(self, model_file, layer="fc1", image_size=DEFAULT_IMAGE_SIZE):
        self.mx = optional_import("mxnet", model_file)
        prefix, epoch = model_file.split(",")
        symbol, arg_params, aux_params = self.mx.model.load_checkpoint(prefix, int(epoch))
        self.model = self.mx.mod.Module(symbol=symbol.get_internals()[layer + "_output"], context=self.mx.cpu(),
                                        label_names=None)
        self.image_size = tuple(image_size)
        self.model.bind(data_shapes=[("data", (1, 3, *self.image_size))])
        self.model.set_params(arg_params, aux_params)

    def __call__(self, images):
        images = images if tf.is_tensor(images) else np.asarray(images)
        data = self.mx.nd.array(np.asarray(resize_images(images, self.image_size)).transpose(0, 3, 1, 2))
        self.model.forward(self.mx.io.DataBatch(data=(data,)), is_train=False)
        return np.asarray(self.model.get_outputs()[0].asnumpy(), dtype=np.float32)


class CallableRunner:
    """Wraps any callable 0..255 RGB batch → embeddings (a user's model function) in the runner contract: float32
    NumPy output, `image_size` 112x112 unless given (the callable receives the batch as it is)."""

    kind = "callable"

    def __init__(self, function, image_size=DEFAULT_IMAGE_SIZE):
        self.function, self.image_size = function, tuple(image_size)

    def __call__(self, images):
        return np.asarray(self.function(images), dtype=np.float32)


RUNNER_TYPES = (KerasRunner, OnnxRunner, TFLiteRunner, TorchRunner, MxnetRunner, CallableRunner)


def load_keras_file(path):
    """A KerasRunner of a `.keras` / `.h5` file (including the original's checkpoints); ValueError naming the
    file when Keras cannot load it."""
    path = require_file(path)
    try:
        model = load_model(str(path))
    except Exception as error:  # Keras raises many types for foreign files; all mean "not a model file"
        raise ValueError(f"{path}: cannot be loaded as a Keras model ({type(error).__name__}: {error})") from error
    return KerasRunner(model, follow_weights=False)  # the runner holds the only reference to the model


def load_runner_file(name, num_threads=None):
    """The runner of a model file by its name: see `load_runner`."""
    suffix = Path(name).suffix.lower()
    if name.endswith(".weights.h5"):
        raise ValueError(f"{name}: a weights-only file; build the model (GhostFaceNets.buildin_models(...)), call "
                         "GhostFaceNets.load_weights(model, path) and pass the model instead")
    if suffix in KERAS_SUFFIXES:
        return load_keras_file(name)
    if suffix == ".onnx":
        return OnnxRunner(name, num_threads or 0)
    if suffix == ".tflite":
        return TFLiteRunner(name, num_threads)
    if suffix in TORCH_SUFFIXES:
        return TorchRunner(name)
    if "," in name and not suffix:
        return MxnetRunner(name)
    raise ValueError(f"{name}: unknown model type, unsupported model file kind {suffix or '(no suffix)'!r}; "
                     f"expected {MODEL_KINDS_HINT}")


def load_runner(model_or_path, num_threads=None):
    """A runner (see the module docstring) for a Keras model, a runner, any other callable, or a model file.

    Files by their name: `.keras` / `.h5` / `.hdf5` (Keras, including the original's checkpoints), `.onnx`
    (onnxruntime), `.tflite` (LiteRT), `.pt` / `.pth` (TorchScript), `"prefix,epoch"` (MXNet). `num_threads`: CPU
    threads of onnxruntime / LiteRT (None: their choice). A runner is returned as it is; another callable is
    wrapped in a `CallableRunner`. Raises FileNotFoundError naming a missing file, ValueError naming a file of
    an unknown kind, a weights-only file or one Keras cannot load, ImportError naming a missing optional package.
    """
    if isinstance(model_or_path, keras.Model):
        return KerasRunner(model_or_path)
    if isinstance(model_or_path, RUNNER_TYPES):
        return model_or_path
    if callable(model_or_path):
        return CallableRunner(model_or_path)
    return load_runner_file(os.fspath(model_or_path), num_threads)


# ----------------------------------------------------------------------------------------------------------------
# Embedding


def flip_left_right(images):
    """A batch (N, H, W, C) mirrored horizontally (a tensor stays a tensor, an array becomes a contiguous array)."""
    if tf.is_tensor(images):
        return tf.reverse(images, axis=[2])
    return np.ascontiguousarray(np.asarray(images)[:, :, ::-1])


def flip_added_embeddings(runner, batch):
    """``runner(x) + runner(flip_left_right(x))`` (N, D) float32 of a batch `x` (N, H, W, 3), in one runner call
    on the 2N batch ``[x, flip(x)]`` (the runner's own `flip_added` when it has one)."""
    if hasattr(runner, "flip_added"):
        return runner.flip_added(batch)
    flipped = flip_left_right(batch)
    both = tf.concat([batch, flipped], 0) if tf.is_tensor(batch) else np.concatenate([np.asarray(batch), flipped])
    embeddings = np.asarray(runner(both), dtype=np.float32)
    return embeddings[:len(embeddings) // 2] + embeddings[len(embeddings) // 2:]


def embed_images(runner, images, flip=True, batch_size=None, progress=False, desc="Embedding"):
    """Raw embeddings (N, D) float32 of an RGB 0..255 batch: `runner(x) + runner(flip_left_right(x))` with
    `flip` (the evaluation protocol's flip test), else `runner(x)`.

    Args:
        runner: a runner of `load_runner` (or anything it accepts: a Keras model, a model path, a callable).
        images: (N, H, W, 3) uint8 (or 0..255 float) NumPy array or tensor.
        flip: add the embeddings of the horizontally mirrored images.
        batch_size: images per runner call (None: the whole batch at once).
        progress: show a tqdm bar over the batches, labelled `desc`.
        desc: the bar's label.

    Returns:
        float32 NumPy array (N, D), not L2-normalised; (0, 0) for an empty input.
    """
    runner = runner if isinstance(runner, RUNNER_TYPES) else load_runner(runner)
    size = len(images)
    step = size if not batch_size else int(batch_size)
    chunks = []
    for start in tqdm(range(0, size, max(step, 1)), desc, disable=not progress):
        batch = images[start:start + step]
        embeddings = flip_added_embeddings(runner, batch) if flip else runner(batch)
        chunks.append(np.asarray(embeddings, dtype=np.float32))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)


def embed_dataset(runner, dataset, flip=True, steps=None, progress=True, desc="Embedding"):
    """Raw embeddings (N, D) float32 of a `tf.data` dataset of RGB 0..255 batches, each batch embedded with
    `embed_images` (flip-and-add with `flip`); `steps`: the number of batches, for the progress bar."""
    chunks = [embed_images(runner, batch, flip) for batch in tqdm(dataset, desc, total=steps, disable=not progress)]
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
