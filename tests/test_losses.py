"""Every loss of losses.py against an independent NumPy (float64) implementation of its formula."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import losses

RTOL = 1e-5
ATOL = 1e-6  # float32 cannot hold a loss of 1e-13; absolute floor far below any loss that matters
TOL = {"rtol": RTOL, "atol": ATOL}
BATCH, CLASSES = 8, 6


# ------------------------------------------------------------------------------------------------------------------
# NumPy references
# ------------------------------------------------------------------------------------------------------------------
def np_cross_entropy(y_true, logits, label_smoothing=0.0):
    """Keras' categorical cross-entropy from logits, with label smoothing, per sample."""
    y_true = y_true * (1 - label_smoothing) + label_smoothing / y_true.shape[-1]
    shifted = logits - logits.max(-1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -(y_true * log_softmax).sum(-1)


def np_combined_margin(x, m1, m2, m3):
    """cos(m1*acos(x) + m2) - m3 below the angle (pi - m2)/m1, mirrored below -1 - m3 beyond it."""
    value = np.cos(m1 * np.arccos(np.clip(x, -1, 1)) + m2) - m3
    return np.where(x > np.cos((np.pi - m2) / m1), value, 2 * (-1 - m3) - value)


def np_with_targets(y_true, x, target):
    out = x.copy()
    out[y_true != 0] = target[y_true != 0]
    return out


def random_cosines(seed=0, batch=BATCH, classes=CLASSES):
    """Cosines in (-1, 1); rows 0 and 1 have their target beyond the ArcFace fallback threshold cos(pi - 0.5)."""
    rng = np.random.default_rng(seed)
    cosine = rng.uniform(-0.99, 0.99, size=(batch, classes)).astype("float32")
    labels = rng.integers(0, classes, batch)
    cosine[0, labels[0]], cosine[1, labels[1]] = -0.95, -0.99
    return cosine, np.eye(classes, dtype="float32")[labels]


def soft_labels(y_true, seed=1):
    """Mixup-style targets: 0.7 on the sample's class, 0.3 on another sample's class."""
    rng = np.random.default_rng(seed)
    other = y_true[rng.permutation(len(y_true))]
    other = np.where(other.argmax(-1)[:, None] == y_true.argmax(-1)[:, None], np.roll(y_true, 1, axis=-1), other)
    return (0.7 * y_true + 0.3 * other).astype("float32")


def run(loss, y_true, y_pred):
    """Per-sample losses as float64 NumPy."""
    return np.asarray(loss.call(tf.constant(y_true), tf.constant(y_pred)), dtype="float64")


LABEL_CASES = ["one_hot", "smoothing", "soft"]


def labels_for(case, y_true):
    return soft_labels(y_true) if case == "soft" else y_true


def smoothing_for(case):
    return 0.1 if case == "smoothing" else 0


# ------------------------------------------------------------------------------------------------------------------
# Margin losses on cosine logits
# ------------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", LABEL_CASES)
@pytest.mark.parametrize("margins", [(1.0, 0.5, 0.0), (1.0, 0.0, 0.0), (1.0, 0.0, 0.35), (1.2, 0.3, 0.1)])
def test_arcface_loss(case, margins):
    cosine, y_true = random_cosines()
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    loss = losses.ArcfaceLoss(*margins, scale=32.0, label_smoothing=ls)
    target = np_combined_margin(cosine.astype("float64"), *margins)
    expected = np_cross_entropy(y_true, np_with_targets(y_true, cosine, target) * 32, ls)
    np.testing.assert_allclose(run(loss, y_true, cosine), expected, **TOL)


def test_arcface_plain_softmax_and_fallback_values():
    cosine, y_true = random_cosines()
    plain = losses.ArcfaceLoss(1.0, 0.0, 0.0, scale=64.0)
    np.testing.assert_allclose(run(plain, y_true, cosine), np_cross_entropy(y_true, cosine * 64.0), **TOL)
    # beyond pi - 0.5 the target is -2 - cos(theta + 0.5): for x = -0.99, theta + 0.5 > pi
    theta = np.arccos(-0.99)
    value = np.asarray(losses.combined_margin(tf.constant([-0.99, 0.5]), 1.0, 0.5, 0.0))
    np.testing.assert_allclose(value, [-2 - np.cos(theta + 0.5), np.cos(np.arccos(0.5) + 0.5)], **TOL)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_arcface_loss_simple(case):
    cosine, y_true = random_cosines(2)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    x = cosine.astype("float64")
    margined = x * np.cos(0.5) - np.sqrt(1 - x**2) * np.sin(0.5)
    target = np.where(x > np.cos(np.pi - 0.5), margined, -2 - margined)
    expected = np_cross_entropy(y_true, np_with_targets(y_true, x, target) * 64, ls)
    loss = losses.ArcfaceLossSimple(label_smoothing=ls)
    np.testing.assert_allclose(run(loss, y_true, cosine), expected, **TOL)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_cosface_loss(case):
    cosine, y_true = random_cosines(3)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    expected = np_cross_entropy(y_true, np_with_targets(y_true, cosine, cosine - 0.35) * 64, ls)
    np.testing.assert_allclose(run(losses.CosFaceLoss(label_smoothing=ls), y_true, cosine), expected, **TOL)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_airface_loss(case):
    cosine, y_true = random_cosines(4)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    x = cosine.astype("float64")
    target = 1 - 2 * 0.4 / np.pi - 2 * np.arccos(x) / np.pi
    expected = np_cross_entropy(y_true, np_with_targets(y_true, x, target) * 64, ls)
    np.testing.assert_allclose(run(losses.AirFaceLoss(label_smoothing=ls), y_true, cosine), expected, **TOL)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_curricular_face_loss_and_t_update(case):
    cosine, y_true = random_cosines(5)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    x = cosine.astype("float64")
    t = 0.01 * x[y_true != 0].mean() + 0.99 * 0.2
    target = np_combined_margin(x, 1.0, 0.5, 0.0)
    expected_logits = x.copy()
    for row in range(len(x)):
        reference = target[row, y_true[row].argmax()]
        for col in range(x.shape[1]):
            if y_true[row, col] != 0:
                expected_logits[row, col] = target[row, col]
            elif x[row, col] > reference:
                expected_logits[row, col] = x[row, col] * (t + x[row, col])
    loss = losses.CurricularFaceLoss(label_smoothing=ls, hard_scale=0.2)
    np.testing.assert_allclose(run(loss, y_true, cosine), np_cross_entropy(y_true, expected_logits * 64, ls), **TOL)
    assert loss.running_values()["hard_scale"] == pytest.approx(t, rel=RTOL)


def with_norm_column(cosine, seed=6, low=5.0, high=120.0):
    norms = np.random.default_rng(seed).uniform(low, high, size=(len(cosine), 1)).astype("float32")
    return np.concatenate([cosine, -norms], axis=-1), norms[:, 0].astype("float64")


@pytest.mark.parametrize("case", LABEL_CASES)
@pytest.mark.parametrize("use_cosface_margin", [False, True])
def test_magface_loss(case, use_cosface_margin):
    cosine, y_true = random_cosines(7)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    y_pred, norms = with_norm_column(cosine)
    x = np.clip(cosine.astype("float64"), -1 + 1e-3, 1 - 1e-3)
    a = np.clip(norms, 10.0, 110.0)
    margin = ((0.8 - 0.45) / (110.0 - 10.0) * (a - 10.0) + 0.45)[:, None]
    arc = np.minimum(x * np.cos(margin) - np.sqrt(1 - x**2) * np.sin(margin), x)
    target = x - margin if use_cosface_margin else arc
    expected = np_cross_entropy(y_true, np_with_targets(y_true, x, target) * 64, ls) + 35.0 * (a / 110.0**2 + 1 / a)
    loss = losses.MagFaceLoss(use_cosface_margin=use_cosface_margin, label_smoothing=ls)
    np.testing.assert_allclose(run(loss, y_true, y_pred), expected, **TOL)
    assert loss.running_values()["mean_margin"] == pytest.approx(margin.mean(), rel=RTOL)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_adaface_loss_and_running_statistics(case):
    cosine, y_true = random_cosines(8)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    y_pred, norms = with_norm_column(cosine, low=1.0, high=60.0)
    x = np.clip(cosine.astype("float64"), -1 + 1e-3, 1 - 1e-3)
    mean = 0.01 * norms.mean() + 0.99 * 20.0
    std = 0.01 * norms.std(ddof=1) + 0.99 * 100.0
    g = (0.4 * np.clip(0.333 * (norms - mean) / (std + 1e-3), -1, 1))[:, None]
    target = np.cos(np.clip(np.arccos(x) - g, 1e-3, np.pi - 1e-3)) - (0.4 + g)
    expected = np_cross_entropy(y_true, np_with_targets(y_true, x, target) * 64, ls)
    loss = losses.AdaFaceLoss(label_smoothing=ls)
    np.testing.assert_allclose(run(loss, y_true, y_pred), expected, **TOL)
    values = loss.running_values()
    assert values["batch_mean"] == pytest.approx(mean, rel=RTOL)
    assert values["batch_std"] == pytest.approx(std, rel=RTOL)
    third = 0.4 / 3
    expected_hist = [(g < -third).mean(), ((g >= -third) & (g <= third)).mean(), (g > third).mean()]
    np.testing.assert_allclose(values["margin_histogram"], expected_hist, atol=1e-6)


@pytest.mark.parametrize("case", LABEL_CASES)
def test_adacos_loss_and_scale_update(case):
    cosine, y_true = random_cosines(9)
    y_true, ls = labels_for(case, y_true), smoothing_for(case)
    x = cosine.astype("float64")
    scale = math.sqrt(2) * math.log(CLASSES - 1)
    theta_med = np.sort(np.arccos(x[y_true != 0]))[BATCH // 2 - 1]
    b_avg = np.where(y_true != 0, 0, np.exp(scale * x)).sum(-1).mean()
    new_scale = np.log(b_avg) / np.cos(min(np.pi / 4, theta_med))
    loss = losses.AdaCosLoss(num_classes=CLASSES, label_smoothing=ls)
    np.testing.assert_allclose(run(loss, y_true, cosine), np_cross_entropy(y_true, x * new_scale, ls), **TOL)
    assert loss.running_values()["scale"] == pytest.approx(new_scale, rel=RTOL)


@pytest.mark.parametrize(("power", "scale"), [(2, 0.4), (2, 0.0), (1, 0.4)])
def test_margin_softmax(power, scale):
    rng = np.random.default_rng(10)
    prob = rng.dirichlet(np.ones(CLASSES), size=BATCH).astype("float32")
    y_true = np.eye(CLASSES, dtype="float32")[rng.integers(0, CLASSES, BATCH)]
    p = prob.astype("float64")
    if scale == 0:
        margined = p**power
    elif power == 1:
        margined = p * scale
    else:
        margined = (p**power + p * scale) / 2
    out = np_with_targets(y_true, p, margined) * 1.5
    out = np.clip(out / out.sum(-1, keepdims=True), 1e-7, 1 - 1e-7)  # Keras' CE on probabilities
    expected = -(y_true * np.log(out)).sum(-1)
    loss = losses.MarginSoftmax(power=power, scale=scale, scale_all=1.5)
    np.testing.assert_allclose(run(loss, y_true, prob), expected, **TOL)


# ------------------------------------------------------------------------------------------------------------------
# Center, triplet and distillation losses on embeddings
# ------------------------------------------------------------------------------------------------------------------
def embeddings_and_labels(seed=11, batch=12, dim=5):
    """Labels with repeated classes and one lone class (its hardest positive is itself)."""
    rng = np.random.default_rng(seed)
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 1, 0])[:batch]
    return rng.normal(size=(batch, dim)).astype("float32"), np.eye(4, dtype="float32")[labels]


@pytest.mark.parametrize("cosine_distance", [False, True])
def test_center_loss_value_and_update(cosine_distance):
    emb, y_true = embeddings_and_labels()
    initial = np.random.default_rng(12).normal(size=(4, 5)).astype("float32")
    loss_class = losses.CenterLossCosine if cosine_distance else losses.CenterLoss
    loss = loss_class(num_classes=4, emb_shape=5, alpha=0.5)
    loss.centers.assign(initial)
    labels = y_true.argmax(-1)
    centers_batch, e = initial[labels].astype("float64"), emb.astype("float64")
    if cosine_distance:
        unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
        expected = 1 - (unit(e) * unit(centers_batch)).sum(-1)
    else:
        expected = 0.5 * ((e - centers_batch) ** 2).sum(-1)
    np.testing.assert_allclose(run(loss, y_true, emb), expected, **TOL)
    expected_centers = initial.astype("float64")
    for ii, label in enumerate(labels):
        count = (labels == label).sum()
        expected_centers[label] -= 0.5 * (initial[label] - e[ii]) / (count + 1)
    np.testing.assert_allclose(loss.centers.numpy(), expected_centers, rtol=RTOL, atol=1e-6)


def np_cosine_matrix(emb):
    unit = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
    return unit @ unit.T


def np_hardest(matrix, labels, positive_pick, negative_pick):
    """Per anchor: positive_pick over same-label entries (self included), negative_pick over the others."""
    positives = np.array([positive_pick(matrix[ii][labels == labels[ii]]) for ii in range(len(labels))])
    negatives = np.array([negative_pick(matrix[ii][labels != labels[ii]]) for ii in range(len(labels))])
    return positives, negatives


def test_batch_hard_triplet_losses():
    emb, y_true = embeddings_and_labels()
    labels, e = y_true.argmax(-1), emb.astype("float64")
    pos, neg = np_hardest(np_cosine_matrix(e), labels, np.min, np.max)
    assert pos[9] == pytest.approx(1.0)  # the lone sample is its own hardest positive
    np.testing.assert_allclose(
        run(losses.BatchHardTripletLoss(0.35), y_true, emb), np.maximum(neg - pos + 0.35, 0), rtol=RTOL, atol=1e-6
    )
    arc_pos = np_combined_margin(pos, 1.0, 0.35, 0.0)
    np.testing.assert_allclose(
        run(losses.ArcBatchHardTripletLoss(0.35), y_true, emb), np.maximum(neg - arc_pos, 0), rtol=RTOL, atol=1e-6
    )


def test_euclidean_triplet_losses_and_auto_alpha():
    emb, y_true = embeddings_and_labels(13)
    labels, e = y_true.argmax(-1), emb.astype("float64")
    distances = ((e[:, None] - e[None]) ** 2).sum(-1)
    pos, neg = np_hardest(distances, labels, np.max, np.min)
    np.testing.assert_allclose(
        run(losses.BatchHardTripletLossEuclidean(0.35), y_true, emb), np.maximum(pos + 0.35 - neg, 0), rtol=1e-4,
        atol=1e-5,
    )
    auto = losses.BatchHardTripletLossEuclideanAutoAlpha(alpha=0.1, init_auto_alpha=1)
    np.testing.assert_allclose(run(auto, y_true, emb), np.maximum(pos + 1 - neg, 0), rtol=1e-4, atol=1e-5)
    assert auto.running_values()["auto_alpha"] == pytest.approx(distances.mean() * 0.1, rel=1e-4)
    np.testing.assert_allclose(
        run(auto, y_true, emb), np.maximum(pos + distances.mean() * 0.1 - neg, 0), rtol=1e-4, atol=1e-5
    )


def test_batch_all_triplet_loss():
    emb, y_true = embeddings_and_labels(14)
    labels, similarity = y_true.argmax(-1), np_cosine_matrix(emb.astype("float64"))
    expected = []
    for ii in range(len(labels)):
        same = labels == labels[ii]
        hardest_pos = similarity[ii][same].min()
        valid = (~same) & (hardest_pos - similarity[ii] < 0.3)
        expected.append((1 - similarity[ii][same]).mean() + similarity[ii][valid].sum() / (valid.sum() + 1))
    np.testing.assert_allclose(run(losses.BatchAllTripletLoss(0.3), y_true, emb), expected, rtol=RTOL, atol=1e-6)


def test_offline_triplet_losses():
    emb = np.random.default_rng(15).normal(size=(9, 5)).astype("float32")
    unit = emb.astype("float64") / np.linalg.norm(emb, axis=-1, keepdims=True)
    pos, neg = (unit[0::3] * unit[1::3]).sum(-1), (unit[0::3] * unit[2::3]).sum(-1)
    y_true = np.zeros((9, 2), "float32")
    np.testing.assert_allclose(
        run(losses.OfflineTripletLoss(0.35), y_true, emb), np.maximum(neg - pos + 0.35, 0), rtol=RTOL, atol=1e-6
    )
    arc_pos = np_combined_margin(pos, 1.0, 0.35, 0.0)
    np.testing.assert_allclose(
        run(losses.OfflineArcTripletLoss(0.35), y_true, emb), np.maximum(neg - arc_pos, 0), rtol=RTOL, atol=1e-6
    )


def test_acr_trip_loss():
    emb, y_true = embeddings_and_labels(16, batch=8)
    cosine = np.random.default_rng(17).uniform(-0.9, 0.9, size=(8, 4)).astype("float32")
    labels, similarity = y_true.argmax(-1), np_cosine_matrix(emb.astype("float64"))
    pos, neg = np_hardest(similarity, labels, np.min, np.max)
    target = np_combined_margin(cosine.astype("float64"), 1.0, 0.5, 0.0) - np.maximum(neg - pos, 0)[:, None]
    expected = np_cross_entropy(y_true, np_with_targets(y_true, cosine, target) * 64)
    loss = losses.AcrTripLoss(emb_shape=5)
    np.testing.assert_allclose(run(loss, y_true, np.concatenate([emb, cosine], -1)), expected, **TOL)


def test_distillation_losses():
    rng = np.random.default_rng(18)
    teacher, student = rng.normal(size=(6, 7)).astype("float32"), rng.normal(size=(6, 7)).astype("float32")
    t, s = teacher.astype("float64"), student.astype("float64")
    np.testing.assert_allclose(losses.distiller_loss_euclidean(teacher, student), ((s - t) ** 2).sum(-1), **TOL)
    teacher_nan = teacher.copy()
    teacher_nan[2, 3] = np.nan
    t_fixed = teacher_nan.astype("float64")
    t_fixed[2, 3] = np.sqrt(1 / 7)
    cos = (s / (np.linalg.norm(s, axis=-1, keepdims=True) + 1e-5) * t_fixed
           / (np.linalg.norm(t_fixed, axis=-1, keepdims=True) + 1e-5)).sum(-1)
    np.testing.assert_allclose(losses.distiller_loss_cosine(teacher_nan, student), 1 - cos, rtol=RTOL, atol=1e-6)

    def softmax(v):
        v = np.exp(v - v.max(-1, keepdims=True))
        return v / v.sum(-1, keepdims=True)

    p, q = softmax(t * 10), softmax(s * 10)
    p_c, q_c = np.clip(p, 1e-7, 1), np.clip(q, 1e-7, 1)
    expected = (p_c * np.log(p_c / q_c)).sum(-1)
    np.testing.assert_allclose(run(losses.DistillKLDivergenceLoss(), teacher, student), expected, rtol=1e-4)


# ------------------------------------------------------------------------------------------------------------------
# Numerical hazards: cosines at +-1, mixed precision
# ------------------------------------------------------------------------------------------------------------------
def cosine_losses():
    return [
        (losses.ArcfaceLoss(), False),
        (losses.ArcfaceLoss(1.2, 0.3, 0.1), False),
        (losses.ArcfaceLossSimple(), False),
        (losses.CosFaceLoss(), False),
        (losses.AirFaceLoss(), False),
        (losses.CurricularFaceLoss(), False),
        (losses.AdaCosLoss(num_classes=CLASSES), False),
        (losses.MagFaceLoss(), True),
        (losses.AdaFaceLoss(), True),
    ]


@pytest.mark.parametrize(("loss", "append_norm"), cosine_losses(), ids=lambda v: type(v).__name__)
def test_gradients_finite_for_cosines_at_plus_minus_one(loss, append_norm):
    cosine = np.tile(np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0], "float32"), (4, 1))
    y_true = np.eye(CLASSES, dtype="float32")[[0, 1, 2, 3]]
    if append_norm:
        cosine = np.concatenate([cosine, -np.full((4, 1), 20.0, "float32")], -1)
    y_pred = tf.constant(cosine)
    with tf.GradientTape() as tape:
        tape.watch(y_pred)
        value = loss(tf.constant(y_true), y_pred)
    gradient = tape.gradient(value, y_pred).numpy()
    assert np.isfinite(float(value)) and np.isfinite(gradient).all()


def test_triplet_gradients_finite_for_identical_embeddings():
    emb = tf.constant(np.ones((6, 4), "float32"))
    y_true = tf.constant(np.eye(3, dtype="float32")[[0, 0, 1, 1, 2, 2]])
    for loss in [losses.ArcBatchHardTripletLoss(), losses.OfflineArcTripletLoss(), losses.BatchHardTripletLoss()]:
        with tf.GradientTape() as tape:
            tape.watch(emb)
            value = loss(y_true, emb)
        assert np.isfinite(tape.gradient(value, emb).numpy()).all(), type(loss).__name__


@pytest.mark.parametrize(("loss", "append_norm"), cosine_losses(), ids=lambda v: type(v).__name__)
def test_float16_inputs_match_float32(loss, append_norm):
    cosine, y_true = random_cosines(19)
    y_pred = with_norm_column(cosine)[0] if append_norm else cosine
    reference = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
    expected = float(reference(y_true, y_pred))
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        fresh = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(loss))
        value = fresh(tf.constant(y_true, "float16"), tf.constant(y_pred, "float16"))
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert value.dtype == tf.float32
    assert float(value) == pytest.approx(expected, rel=1e-2)
