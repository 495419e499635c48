"""embedding.py: the runner contract (uint8 0..255 RGB in, raw float32 (N, D) out), flip-and-add against an
independent NumPy computation, Keras / ONNX / TFLite runners agreeing, and load_runner's errors."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import build_tiny_embedding_model

import embedding
from bn_folding import count_batch_norms
from preprocess import normalize

POOL = 8


@pytest.fixture(scope="module")
def model():
    return build_tiny_embedding_model(embedding_size=16, pool=POOL)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (7, 112, 112, 3), dtype=np.uint8)


def numpy_raw_embeddings(model, images):
    """The tiny model computed independently: (x − 127.5) / 128, 8x8 mean pooling, flatten, kernel product."""
    kernel = np.asarray(model.get_layer("embedding").kernel, np.float64)
    x = (images.astype(np.float64) - 127.5) / 128.0
    n, h, w, c = x.shape
    pooled = x.reshape(n, h // POOL, POOL, w // POOL, POOL, c).mean(axis=(2, 4)).reshape(n, -1)
    return pooled @ kernel


@pytest.mark.parametrize("flip", [True, False])
@pytest.mark.parametrize("batch_size", [None, 3])
def test_flip_and_add_matches_numpy(model, images, flip, batch_size):
    embeddings = embedding.embed_images(embedding.load_runner(model), images, flip=flip, batch_size=batch_size)
    expected = numpy_raw_embeddings(model, images)
    if flip:
        expected = expected + numpy_raw_embeddings(model, images[:, :, ::-1])
    assert embeddings.shape == (7, 16) and embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, expected, rtol=1e-4, atol=1e-4)


def test_embed_dataset_equals_embed_images(model, images):
    runner = embedding.load_runner(model)
    dataset = tf.data.Dataset.from_tensor_slices(images).batch(3)
    np.testing.assert_array_equal(embedding.embed_dataset(runner, dataset, progress=False),
                                  embedding.embed_images(runner, images, batch_size=3))
    empty = embedding.embed_images(runner, images[:0])
    assert empty.shape == (0, 0) and empty.dtype == np.float32


def test_keras_runner_contract(model, images):
    runner = embedding.load_runner(model)
    assert runner.kind == "keras" and runner.image_size == (112, 112)
    from_uint8 = runner(images)
    np.testing.assert_array_equal(runner(images.astype(np.float32)), from_uint8)
    np.testing.assert_array_equal(runner(tf.constant(images)), from_uint8)
    assert runner.function.experimental_get_tracing_count() == 1  # one trace for every dtype and batch size
    np.testing.assert_allclose(from_uint8, numpy_raw_embeddings(model, images), rtol=1e-4, atol=1e-4)
    larger = tf.image.resize(images.astype(np.float32), (130, 150)).numpy()  # another size is resized bilinearly
    expected = runner(tf.image.resize(larger, (112, 112), antialias=False).numpy())
    np.testing.assert_allclose(runner(larger), expected, rtol=1e-6, atol=1e-6)


def test_training_model_is_cut_at_its_embedding_layer(model, images):
    training_model = keras.Model(model.input, keras.layers.Dense(5, name="classes")(model.output))
    with pytest.warns(UserWarning, match="outputs more than its embedding"):
        runner = embedding.load_runner(training_model)
    np.testing.assert_allclose(runner(images), embedding.load_runner(model)(images), rtol=1e-6, atol=1e-6)


def conv_batch_norm_model():
    """112x112 → strided Conv2D → BatchNormalization (non-trivial weights) → PReLU → global average pooling →
    Dense `embedding` (16)."""
    inputs = keras.Input((112, 112, 3))
    features = keras.layers.BatchNormalization(name="bn")(keras.layers.Conv2D(8, 3, strides=4, name="conv")(inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.PReLU(shared_axes=[1, 2])(features))
    model = keras.Model(inputs, keras.layers.Dense(16, name="embedding")(pooled))
    rng, norm = np.random.default_rng(1), model.get_layer("bn")
    norm.moving_mean.assign(rng.normal(0.0, 0.5, 8))
    norm.moving_variance.assign(rng.uniform(0.3, 2.0, 8))
    norm.gamma.assign(rng.uniform(0.5, 1.5, 8))
    norm.beta.assign(rng.normal(0.0, 0.3, 8))
    return model


def assert_close(actual, expected, relative=1e-5):
    """|actual − expected| ≤ `relative` · max |expected| everywhere."""
    expected = np.asarray(expected, np.float64)
    assert np.max(np.abs(np.asarray(actual, np.float64) - expected)) <= relative * np.max(np.abs(expected))


def test_keras_runner_runs_the_folded_model_with_current_weights(images):
    model = conv_batch_norm_model()
    runner = embedding.load_runner(model)
    assert runner.model is model and count_batch_norms(model) == 1 and count_batch_norms(runner.inference_model) == 0
    assert_close(runner(images), model(normalize(images), training=False))
    norm = model.get_layer("bn")
    norm.moving_mean.assign(np.asarray(norm.moving_mean) + 0.5)  # as training would
    model.get_layer("conv").kernel.assign(np.asarray(model.get_layer("conv").kernel) * 1.5)
    changed = model(normalize(images), training=False)
    assert np.max(np.abs(runner(images) - np.asarray(changed))) > 1e-3  # folded at construction: stale
    runner.refold()
    assert_close(runner(images), changed)
    assert runner.function.experimental_get_tracing_count() == 1


def test_runner_of_a_model_file_is_folded_once(images, tmp_path):
    model = conv_batch_norm_model()
    model.save(tmp_path / "model.keras")
    runner = embedding.load_runner(tmp_path / "model.keras")
    assert not runner.follow_weights and count_batch_norms(runner.inference_model) == 0
    assert_close(runner(images), model(normalize(images), training=False))
    with pytest.raises(ValueError, match="copy of the model's weights"):
        runner.refold()


def test_flip_in_one_pass_equals_two_passes(images):
    runner = embedding.load_runner(conv_batch_norm_model())
    two_passes = runner(images) + runner(embedding.flip_left_right(images))
    assert_close(embedding.embed_images(runner, images, flip=True, batch_size=4), two_passes)
    assert_close(embedding.embed_images(runner, tf.constant(images), flip=True), two_passes)
    assert runner.flip_function.experimental_get_tracing_count() == 1
    batch_sizes = []

    def counted(batch):
        batch_sizes.append(len(batch))
        return runner(batch)

    assert_close(embedding.embed_images(counted, images, flip=True, batch_size=4), two_passes)
    assert batch_sizes == [8, 6]  # one call per batch, on the images and their mirror images together


def test_callables_and_runners(images):
    def channel_means(batch):
        return batch.reshape(len(batch), -1, 3).mean(axis=1)

    runner = embedding.load_runner(channel_means)
    assert runner.kind == "callable" and embedding.load_runner(runner) is runner
    embeddings = embedding.embed_images(channel_means, images, flip=True)
    assert embeddings.dtype == np.float32
    np.testing.assert_allclose(embeddings, 2 * images.reshape(7, -1, 3).mean(axis=1), rtol=1e-6)


def tiny_onnx_model(model, path, channels_first, batch="B"):
    """The tiny model written by hand as an ONNX graph that normalises nothing (the runner does it); `batch`: its
    batch dimension (a name: dynamic, an int: fixed)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    kernel = np.asarray(model.get_layer("embedding").kernel, np.float32)
    shape = [batch, 3, 112, 112] if channels_first else [batch, 112, 112, 3]
    nodes = [] if channels_first else [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])]
    nodes += [helper.make_node("AveragePool", ["x" if channels_first else "nchw"], ["pooled"],
                               kernel_shape=[POOL, POOL], strides=[POOL, POOL]),
              helper.make_node("Transpose", ["pooled"], ["nhwc"], perm=[0, 2, 3, 1]),
              helper.make_node("Flatten", ["nhwc"], ["flat"], axis=1),
              helper.make_node("MatMul", ["flat", "kernel"], ["y"])]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, kernel.shape[1]])],
                              [numpy_helper.from_array(kernel, "kernel")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    return path


@pytest.mark.parametrize(("channels_first", "batch"), [(False, "B"), (True, "B"), (False, 3)])
def test_onnx_runner_equals_keras(model, images, tmp_path, channels_first, batch):
    path = tiny_onnx_model(model, tmp_path / "tiny.onnx", channels_first, batch)
    runner = embedding.load_runner(path)
    assert runner.kind == "onnx" and runner.channels_first == channels_first and runner.image_size == (112, 112)
    assert runner.fixed_batch == (None if batch == "B" else batch)  # fixed: the 2N flip pass goes in chunks
    np.testing.assert_allclose(embedding.embed_images(runner, images, batch_size=4),
                               embedding.embed_images(model, images), rtol=1e-4, atol=1e-4)


def test_tflite_runner_equals_keras(model, images, tmp_path):
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    (tmp_path / "tiny.tflite").write_bytes(converter.convert())
    runner = embedding.load_runner(tmp_path / "tiny.tflite")
    assert runner.kind == "tflite" and runner.image_size == (112, 112)
    np.testing.assert_allclose(embedding.embed_images(runner, images), embedding.embed_images(model, images),
                               rtol=1e-4, atol=1e-4)


def test_load_runner_errors_name_the_file(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match=r"absent\.onnx"):
        embedding.load_runner(tmp_path / "absent.onnx")
    with pytest.raises(FileNotFoundError, match=r"absent\.keras"):
        embedding.load_runner(tmp_path / "absent.keras")
    for name, message in [("embs.npz", "unknown model type"), ("model.keras", "cannot be loaded as a Keras model"),
                          ("model.weights.h5", "weights-only file")]:
        (tmp_path / name).write_bytes(b"\x00" * 64)
        with pytest.raises(ValueError, match=message) as error:
            embedding.load_runner(tmp_path / name)
        assert name in str(error.value)

    real_import = embedding.importlib.import_module

    def without_torch(name, *args):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args)

    monkeypatch.setattr(embedding.importlib, "import_module", without_torch)
    with pytest.raises(ImportError, match=r"model\.pt: .*optional package 'torch'"):
        embedding.load_runner(tmp_path / "model.pt")
