"""NormDense / NormDenseVPL against NumPy, and the VPL queue callback."""

import keras
import numpy as np
import pytest

import heads
import losses


def np_unit(v, axis):
    return v / np.sqrt(np.maximum((v**2).sum(axis=axis, keepdims=True), 1e-5))


def built_head(layer, emb=6):
    layer.build((None, emb))
    return layer


def test_norm_dense_cosines_top_k_layout_and_norm_column():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6)).astype("float32") * 3
    layer = built_head(heads.NormDense(4, loss_top_k=3, append_norm=True))
    kernel = rng.normal(size=(6, 12)).astype("float32")
    layer.w.assign(kernel)
    out = np.asarray(layer(x))
    cosine = np_unit(x, 1) @ np_unit(kernel, 0)
    # column c*k + j is sub-centre j of class c
    expected = np.stack([cosine[:, c * 3 : c * 3 + 3].max(-1) for c in range(4)], -1)
    np.testing.assert_allclose(out[:, :4], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[:, 4], -np.linalg.norm(x, axis=-1), rtol=1e-5)
    assert layer.compute_output_shape((None, 6)) == (None, 5)
    assert out.shape == (5, 5)


def test_norm_dense_is_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        layer = built_head(heads.NormDense(3))
        out = layer(np.ones((2, 6), "float16"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert layer.compute_dtype == "float32" and out.dtype == "float32"


def test_partial_fc_cycles_shards_only_in_training():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer = built_head(heads.NormDense(3, partial_fc_split=3))
    shards = rng.normal(size=(3, 6, 3)).astype("float32")
    layer.sub_weights.assign(shards)
    for step in range(5):
        out = np.asarray(layer(x, training=True))
        np.testing.assert_allclose(out, np_unit(x, 1) @ np_unit(shards[step % 3], 0), rtol=1e-5, atol=1e-6)
    assert int(layer.cur_id.numpy()) == 5 % 3
    layer(x, training=False)
    assert int(layer.cur_id.numpy()) == 5 % 3


def test_norm_dense_config_round_trip():
    layer = heads.NormDense(7, keras.regularizers.L2(2.5e-4), loss_top_k=2, append_norm=True, partial_fc_split=2,
                            name="arcface")
    clone = heads.NormDense.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    assert clone.kernel_regularizer.l2 == pytest.approx(2.5e-4)
    assert losses.NormDense is heads.NormDense


def test_vpl_mixes_fresh_queue_entries_into_centres():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 6)).astype("float32")
    layer = built_head(heads.NormDenseVPL(batch_size=4, units=3, vpl_lambda=0.15, start_iters=0, allowed_delta=1))
    kernel, queue = rng.normal(size=(6, 3)).astype("float32"), np_unit(rng.normal(size=(3, 6)), 1).astype("float32")
    layer.w.assign(kernel)
    layer.queue_features.assign(queue)
    layer.queue_iters.assign(np.array([1, 0, 1], "int64"))
    layer.iters.assign(1)
    out = np.asarray(layer(x, training=True))  # iters becomes 2: classes 0 and 2 are fresh (2 - 1 <= 1)
    lam = np.array([0.15, 0.0, 0.15])
    injected = np_unit(np_unit(kernel, 0) * (1 - lam) + queue.T * lam, 0)
    np.testing.assert_allclose(out, np_unit(x, 1) @ injected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.norm_features.numpy(), np_unit(x, 1), rtol=1e-5)
    assert float(layer.vpl_sample_ratio.numpy()) == pytest.approx(2 / 3)
    config = layer.get_config()
    assert (config["start_iters"], config["allowed_delta"], config["batch_size"]) == (0, 1, 4)


def test_vpl_update_queue_callback_files_embeddings_under_labels():
    rng = np.random.default_rng(3)
    x, labels = rng.normal(size=(8, 10)).astype("float32"), np.array([0, 1, 2, 3, 0, 1, 2, 3])
    y = np.eye(4, dtype="float32")[labels]
    inputs = keras.Input((10,))
    embedding = keras.layers.Dense(6, name="embedding")(inputs)
    model = keras.Model(inputs, heads.NormDenseVPL(4, units=4, start_iters=1, name="arcface")(embedding))
    loss = losses.ArcfaceLoss(scale=16)
    loss.build(4)
    model.compile(optimizer="sgd", loss=loss)
    model.fit(x[:4], y[:4], batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[heads.VPLUpdateQueue()])
    layer = model.get_layer("arcface")
    np.testing.assert_array_equal(loss.batch_labels_back_up.numpy(), labels[:4])
    np.testing.assert_allclose(layer.queue_features.numpy(), layer.norm_features.numpy(), rtol=1e-6)
    np.testing.assert_array_equal(layer.queue_iters.numpy(), [1, 1, 1, 1])
