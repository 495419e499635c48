"""A tiny embedding model learns with the main margin losses; tf.distribute does not rescale the loss."""

import keras
import numpy as np
import pytest
from conftest import run_on_two_logical_cpus

import heads
import losses

CLASSES, FEATURES = 4, 12


def separable_data(seed=0, per_class=32):
    """Gaussian blobs around random class centres: easy to separate, labels one-hot."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLASSES, FEATURES)) * 3
    labels = np.repeat(np.arange(CLASSES), per_class)
    x = centres[labels] + rng.normal(size=(len(labels), FEATURES))
    return x.astype("float32"), np.eye(CLASSES, dtype="float32")[labels]


@pytest.mark.parametrize(
    ("loss", "head_kwargs"),
    [
        (losses.ArcfaceLoss(scale=16.0), {}),
        (losses.CosFaceLoss(scale=16.0), {}),
        (losses.ArcfaceLoss(scale=16.0), {"loss_top_k": 3}),
        (losses.AdaFaceLoss(scale=16.0), {"append_norm": True}),
    ],
    ids=["arcface", "cosface", "subcenter_k3", "adaface"],
)
def test_tiny_model_loss_falls(loss, head_kwargs):
    keras.utils.set_random_seed(0)
    x, y = separable_data()
    inputs = keras.Input((FEATURES,))
    embedding = keras.layers.Dense(8, name="embedding")(keras.layers.Dense(16, activation="relu")(inputs))
    model = keras.Model(inputs, heads.NormDense(CLASSES, name="arcface", **head_kwargs)(embedding))
    model.compile(optimizer=keras.optimizers.Adam(0.02), loss=loss)
    before = model.evaluate(x, y, batch_size=128, verbose=0)
    model.fit(x, y, batch_size=32, epochs=8, verbose=0)
    after = model.evaluate(x, y, batch_size=128, verbose=0)
    assert np.isfinite(after) and after < 0.5 * before
    accuracy = (np.asarray(model.predict(x, verbose=0))[:, :CLASSES].argmax(-1) == y.argmax(-1)).mean()
    assert accuracy > 0.9


DISTRIBUTED_SCRIPT = """
    import keras
    import losses

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 10)).astype("float32")
    labels = np.array([0, 1, 1, 2, 0, 0, 3, 1, 2, 2, 0, 1, 3, 3, 0, 2])
    y = np.eye(4, dtype="float32")[labels]

    def build():
        keras.utils.set_random_seed(1)
        inputs = keras.Input((10,))
        embedding = keras.layers.Dense(6, name="embedding")(inputs)
        model = keras.Model(inputs, [embedding, losses.NormDense(4, name="arcface")(embedding)])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss=[losses.CenterLoss(4, 6), losses.ArcfaceLoss()])
        return model

    single = build()
    with strategy.scope():
        mirrored = build()
    result = {}
    for name, model in [("single", single), ("mirrored", mirrored)]:
        embedding = model.get_layer("embedding")(x).numpy()
        loss = model.fit(x, [y, y], batch_size=16, epochs=1, shuffle=False, verbose=0).history["loss"][0]
        result[name] = {"loss": loss, "centers": model.loss[0].centers.numpy().tolist(), "emb": embedding.tolist()}
    print("RESULT" + json.dumps(result))
"""


@pytest.mark.slow
def test_mirrored_strategy_loss_not_rescaled_and_centres_sum_replica_moves():
    result, _ = run_on_two_logical_cpus(DISTRIBUTED_SCRIPT, timeout=300)
    assert result["mirrored"]["loss"] == pytest.approx(result["single"]["loss"], rel=1e-5)

    labels = np.array([0, 1, 1, 2, 0, 0, 3, 1, 2, 2, 0, 1, 3, 3, 0, 2])
    embedding = np.asarray(result["mirrored"]["emb"])
    expected = np.zeros((4, 6))
    for label, emb in zip(labels, embedding, strict=True):  # counts over the global batch, as on one device
        expected[label] -= 0.5 * (0.0 - emb) / ((labels == label).sum() + 1)
    np.testing.assert_allclose(result["mirrored"]["centers"], expected, rtol=1e-5, atol=1e-6)
