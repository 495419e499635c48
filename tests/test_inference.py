"""inference.py: preprocessing contract, embed / compare, alignment, thresholds at a FAR, detector hook, CLI."""

import warnings

import cv2
import keras
import numpy as np
import pytest
from conftest import build_tiny_embedding_model
from keras import layers

import inference
import synthetic_faces
from bin_files import save_bin

POOL = 8
EMBEDDING_SIZE = 128


def numpy_embedding(model, images, flip):
    """The contract computed independently: normalise, pool, project, add flip, L2-normalise."""
    kernel = np.asarray(model.get_layer("embedding").kernel, np.float64)

    def raw(batch):
        x = (batch.astype(np.float64) - 127.5) / 128.0
        n, h, w, c = x.shape
        pooled = x.reshape(n, h // POOL, POOL, w // POOL, POOL, c).mean(axis=(2, 4)).reshape(n, -1)
        return pooled @ kernel

    embedding = raw(images) + (raw(images[:, :, ::-1]) if flip else 0)
    return embedding / np.linalg.norm(embedding, axis=1, keepdims=True)


def face_images(identities, per_identity, seed=5, nuisance=0.3):
    """uint8 (identities * per_identity, 112, 112, 3) synthetic faces and their identity labels."""
    images, labels = [], []
    for identity in synthetic_faces.make_identities(seed, range(identities)):
        for data in synthetic_faces.render_identity_images(identity, seed, per_identity, nuisance):
            images.append(inference.decode_image_bytes(data))
            labels.append(identity.index)
    return np.stack(images), np.array(labels)


@pytest.fixture(scope="module")
def model():
    return build_tiny_embedding_model()


@pytest.fixture(scope="module")
def embedder(model):
    return inference.FaceEmbedder(model, batch_size=5)


@pytest.fixture(scope="module")
def faces():
    return face_images(6, 4)


# ----------------------------------------------------------------------------------------------------------------
# Preprocessing and embedding


def test_preprocess_is_the_training_normalisation():
    image = np.arange(112 * 112 * 3, dtype=np.int64).reshape(112, 112, 3) % 256
    batch = inference.preprocess(image.astype(np.uint8))
    assert batch.shape == (1, 112, 112, 3) and batch.dtype == np.float32
    np.testing.assert_allclose(batch[0], (image - 127.5) / 128.0, atol=1e-7)
    assert batch.min() == pytest.approx(-127.5 / 128) and batch.max() == pytest.approx(127.5 / 128)


@pytest.mark.parametrize("flip", [True, False])
def test_embed_matches_an_independent_numpy_computation(model, faces, flip):
    images = faces[0][:7]
    embeddings = inference.FaceEmbedder(model, flip=flip, batch_size=3).embed(images)
    assert embeddings.shape == (7, EMBEDDING_SIZE) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(embeddings, numpy_embedding(model, images, flip), atol=2e-5)


def test_same_identity_is_more_similar_than_different(embedder, faces):
    images, labels = faces
    cosines = embedder.embed(images) @ embedder.embed(images).T
    same = labels[:, None] == labels[None, :]
    upper = np.triu(np.ones_like(same), 1).astype(bool)
    same_mean, different_mean = cosines[same & upper].mean(), cosines[~same & upper].mean()
    assert same_mean > different_mean + 0.15, (same_mean, different_mean)


def test_compare_is_the_cosine(embedder, faces):
    a, b = np.array([3.0, 4.0, 0.0]), np.array([4.0, 3.0, 0.0])
    assert inference.compare(a, b) == pytest.approx(24 / 25)
    rows = inference.compare(np.stack([a, a]), np.stack([b, a]))
    np.testing.assert_allclose(rows, [24 / 25, 1.0], rtol=1e-6)
    first, second = faces[0][0], faces[0][5]
    expected = float(np.dot(*embedder.embed([first, second])))
    assert embedder.compare(first, second) == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        inference.compare(a, b[:2])


def test_paths_and_bytes_give_the_array_embedding(embedder, faces, tmp_path):
    image = faces[0][3]
    path = tmp_path / "face.png"
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    from_array, from_path, from_bytes = (embedder.embed(item) for item in (image, path, path.read_bytes()))
    np.testing.assert_allclose(from_path, from_array, atol=1e-6)
    np.testing.assert_allclose(from_bytes, from_array, atol=1e-6)


def test_grayscale_and_rgba_images_are_converted(embedder, faces):
    grey = faces[0][1].mean(axis=2).round().astype(np.uint8)
    expected = embedder.embed(np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_allclose(embedder.embed(grey), expected, atol=1e-6)
    np.testing.assert_allclose(embedder.embed(grey[:, :, None]), expected, atol=1e-6)
    rgb = faces[0][2]
    rgba = np.concatenate([rgb, np.full((112, 112, 1), 77, np.uint8)], axis=2)
    np.testing.assert_allclose(embedder.embed(rgba), embedder.embed(rgb), atol=1e-6)


def test_wrong_size_is_resized_with_a_warning(embedder, faces):
    large = cv2.resize(faces[0][0], (150, 130))
    with pytest.warns(UserWarning, match=r"1 image\(s\) are not 112x112.*130x150"):
        embedding = embedder.embed(large)
    expected = embedder.embed(cv2.resize(large, (112, 112), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_allclose(embedding, expected, atol=1e-6)


def test_bad_images_get_clear_errors(embedder, tmp_path):
    with pytest.raises(ValueError, match=r"shape \(112, 112, 2\)"):
        embedder.embed(np.zeros((112, 112, 2), np.uint8))
    with pytest.raises(TypeError, match=r"expected uint8.*float32"):
        embedder.embed(np.zeros((112, 112, 3), np.float32))
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(ValueError, match=r"broken\.jpg: not a readable image"):
        embedder.embed(broken)
    with pytest.raises(FileNotFoundError, match=r"missing\.jpg"):
        embedder.embed(tmp_path / "missing.jpg")


def test_model_files_of_another_kind_are_refused(tmp_path):
    for name, message in [("embs.npz", "unsupported model file kind '.npz'"),
                          ("model.keras", "cannot be loaded as a Keras model"),
                          ("model.weights.h5", "weights-only file")]:
        path = tmp_path / name
        path.write_bytes(b"\x00" * 64)
        with pytest.raises(ValueError, match=message) as error:
            inference.FaceEmbedder(path)
        assert name in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"absent\.keras"):
        inference.FaceEmbedder(tmp_path / "absent.keras")


def test_training_model_uses_its_embedding_layer(model, faces):
    logits = layers.Dense(10, name="classes")(model.output)
    training_model = keras.Model(model.input, logits)
    with pytest.warns(UserWarning, match="outputs more than its embedding"):
        embedder = inference.FaceEmbedder(training_model)
    np.testing.assert_allclose(embedder.embed(faces[0][:2]), numpy_embedding(model, faces[0][:2], True), atol=2e-5)


def test_saved_keras_model_file_embeds_like_the_model(model, faces, tmp_path):
    path = tmp_path / "tiny.keras"
    model.save(path)
    from_file = inference.FaceEmbedder(path).embed(faces[0][:3])
    np.testing.assert_allclose(from_file, numpy_embedding(model, faces[0][:3], True), atol=2e-5)


def test_face_embedder_opens_keras_files_and_explains_weights_only_ones(model, faces, tmp_path):
    import GhostFaceNets

    expected = numpy_embedding(model, faces[0][:3], False)
    for name in ("tiny.keras", "tiny.h5"):
        model.save(tmp_path / name)
        embedded = inference.FaceEmbedder(tmp_path / name, flip=False).embed(faces[0][:3])
        np.testing.assert_allclose(embedded, expected, atol=2e-5)
    GhostFaceNets.save_weights_keras2(model, tmp_path / "weights_keras2.h5")
    with pytest.raises(ValueError, match=r"weights-only file.*load_weights"):
        inference.FaceEmbedder(tmp_path / "weights_keras2.h5")


def test_face_embedder_opens_the_originals_whole_model_file(shared_dir):
    stem = shared_dir / "fixtures" / "reference_models" / "v1_w1.3_s1_bias_seed1234"
    golden = np.load(f"{stem}_golden.npz")
    embedded = inference.FaceEmbedder(f"{stem}_keras2_model.h5", flip=False).embed(golden["images_uint8"])
    assert inference.compare(embedded, golden["embeddings"]).min() > 0.99999


# ----------------------------------------------------------------------------------------------------------------
# Alignment


def similarity_matrix(scale, degrees, tx, ty):
    angle = np.deg2rad(degrees)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, [[tx], [ty]]])


def apply(matrix, points):
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_template_landmarks_map_to_themselves(faces):
    matrix = inference.similarity_transform(inference.ARCFACE_TEMPLATE, inference.ARCFACE_TEMPLATE)
    np.testing.assert_allclose(matrix, [[1, 0, 0], [0, 1, 0]], atol=1e-9)
    face = faces[0][0]
    np.testing.assert_array_equal(inference.align(face, inference.ARCFACE_TEMPLATE), face)


def test_similarity_transform_recovers_a_known_transform():
    forward = similarity_matrix(1.7, 20.0, 40.0, 25.0)
    moved = apply(forward, inference.ARCFACE_TEMPLATE)
    back = inference.similarity_transform(moved, inference.ARCFACE_TEMPLATE)
    inverse = np.linalg.inv(np.vstack([forward, [0, 0, 1]]))[:2]
    np.testing.assert_allclose(back, inverse, atol=1e-9)


def test_similarity_transform_matches_scikit_image_on_noisy_points():
    from skimage.transform import SimilarityTransform

    rng = np.random.default_rng(3)
    source = rng.uniform(0, 200, (5, 2))
    target = apply(similarity_matrix(0.6, -35.0, 10.0, -4.0), source) + rng.normal(0, 2.0, (5, 2))
    reference = SimilarityTransform.from_estimate(source, target).params[:2]
    np.testing.assert_allclose(inference.similarity_transform(source, target), reference, atol=1e-8)


def test_similarity_transform_never_reflects():
    mirrored = inference.ARCFACE_TEMPLATE * [-1.0, 1.0]
    matrix = inference.similarity_transform(inference.ARCFACE_TEMPLATE, mirrored)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_align_undoes_a_known_similarity_warp(faces):
    face = faces[0][4]
    forward = similarity_matrix(1.7, 20.0, 90.0, 30.0)
    photo = cv2.warpAffine(face, forward, (320, 320), flags=cv2.INTER_LINEAR)
    aligned = inference.align(photo, apply(forward, inference.ARCFACE_TEMPLATE))
    interior = (slice(8, -8), slice(8, -8))
    error = np.abs(aligned[interior].astype(float) - face[interior].astype(float)).mean()
    assert error < 3.0, error


def test_align_checks_landmarks():
    with pytest.raises(ValueError, match=r"5 finite \(x, y\) points.*\(4, 2\)"):
        inference.align(np.zeros((112, 112, 3), np.uint8), np.zeros((4, 2)))
    flat = inference.check_landmarks(inference.ARCFACE_TEMPLATE.ravel())
    np.testing.assert_array_equal(flat, inference.ARCFACE_TEMPLATE)


def test_template_for_other_crop_sizes():
    np.testing.assert_allclose(inference.template_for_size(224), inference.ARCFACE_TEMPLATE * 2)
    np.testing.assert_allclose(inference.template_for_size(128)[0], [38.2946 + 8, 51.6963])


# ----------------------------------------------------------------------------------------------------------------
# Detector hook


def test_embed_photo_with_a_detector_callable(embedder, faces):
    face_big, face_small = faces[0][0], faces[0][8]
    big, small = similarity_matrix(1.5, 10.0, 20.0, 20.0), similarity_matrix(0.9, -5.0, 200.0, 150.0)
    photo = cv2.warpAffine(face_big, big, (320, 320)) + cv2.warpAffine(face_small, small, (320, 320))
    landmarks = np.stack([apply(small, inference.ARCFACE_TEMPLATE), apply(big, inference.ARCFACE_TEMPLATE)])
    boxes = np.array([[200, 150, 100, 100], [20, 20, 168, 168]], float)

    def detector(image):
        assert image.shape == (320, 320, 3) and image.dtype == np.uint8
        return boxes, landmarks, np.array([0.8, 0.95])

    finder = inference.FaceEmbedder(embedder.runner.model, detector=detector)
    embeddings, found_boxes, scores = finder.embed_photo(photo)
    np.testing.assert_array_equal(found_boxes, boxes[::-1])
    np.testing.assert_array_equal(scores, [0.95, 0.8])
    direct = embedder.embed([face_big, face_small])
    assert inference.compare(embeddings, direct).min() > 0.98
    with pytest.raises(ValueError, match="no detector"):
        embedder.embed_photo(photo)


def test_parse_yunet_rows():
    row = np.arange(15, dtype=np.float32)
    boxes, landmarks, scores = inference.parse_yunet_faces(row[None])
    np.testing.assert_array_equal(boxes, [[0, 1, 2, 3]])
    np.testing.assert_array_equal(landmarks[0], [[4, 5], [6, 7], [8, 9], [10, 11], [12, 13]])
    np.testing.assert_array_equal(scores, [14])
    assert inference.parse_yunet_faces(None)[1].shape == (0, 5, 2)


def test_yunet_needs_its_onnx_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inference.YuNetDetector(tmp_path / "face_detection_yunet_2023mar.onnx")


# ----------------------------------------------------------------------------------------------------------------
# Thresholds at a FAR


def pair_embeddings(cosines):
    """2-D embeddings whose pairs (rows 2k, 2k+1) have exactly the given cosines."""
    angles = np.arccos(np.asarray(cosines))
    rows = [[np.array([1.0, 0.0]), np.array([np.cos(a), np.sin(a)])] for a in angles]
    return np.array([row for pair in rows for row in pair])


NEGATIVES = [0.9, 0.5, 0.3, 0.1, -0.2]
POSITIVES = [0.95, 0.8, 0.4]


@pytest.mark.parametrize(("far", "expected"), [(0.2, 0.5), (0.39, 0.5), (0.4, 0.3), (0.8, -0.2), (1.0, -1.0)])
def test_calibrate_threshold_hand_computed(far, expected):
    embeddings = pair_embeddings(NEGATIVES + POSITIVES)
    issame = [False] * 5 + [True] * 3
    threshold = inference.calibrate_threshold(embeddings, issame, far)
    assert threshold == pytest.approx(expected, abs=1e-9)
    tar, reached = inference.verification_rates(inference.pair_cosines(embeddings), issame, threshold)
    assert reached <= far
    assert tar == pytest.approx(np.mean(np.array(POSITIVES) > threshold + 1e-12))


def test_calibrate_threshold_warns_when_the_set_is_too_small():
    embeddings = pair_embeddings(NEGATIVES + POSITIVES)
    with pytest.warns(UserWarning, match="needs at least 10 different-person pairs"):
        threshold = inference.calibrate_threshold(embeddings, [False] * 5 + [True] * 3, 0.1)
    assert threshold == pytest.approx(0.9)


def test_calibrate_threshold_is_the_smallest_threshold_within_the_far():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(2 * 3000, 16))
    issame = rng.random(3000) < 0.5
    cosines = inference.pair_cosines(embeddings)
    for far in (1e-3, 1e-2, 0.1):
        threshold = inference.calibrate_threshold(embeddings, issame, far)
        _, reached = inference.verification_rates(cosines, issame, threshold)
        negatives = np.sort(cosines[~issame])
        next_lower = negatives[negatives < threshold].max()
        _, reached_lower = inference.verification_rates(cosines, issame, next_lower)
        assert reached <= far < reached_lower


def test_far_threshold_table_columns():
    embeddings = pair_embeddings(NEGATIVES + POSITIVES)
    table = inference.far_threshold_table(embeddings, [False] * 5 + [True] * 3, fars=(0.2, 0.4))
    assert list(table.columns) == ["far_target", "threshold", "far", "tar", "negatives"]
    np.testing.assert_allclose(table["threshold"], [0.5, 0.3])
    np.testing.assert_allclose(table["far"], [0.2, 0.4])
    np.testing.assert_allclose(table["tar"], [2 / 3, 1.0])
    with pytest.raises(ValueError, match="no different-person pairs"):
        inference.calibrate_threshold(embeddings[6:], [True] * 5, 0.1)


# ----------------------------------------------------------------------------------------------------------------
# Command line


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    model.save(path)
    return path


def png_bytes(image):
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def write_face(path, image):
    cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return str(path)


def test_cli_verify_two_images(saved_model, embedder, faces, tmp_path, capsys):
    images, labels = faces
    a, b = write_face(tmp_path / "a.png", images[0]), write_face(tmp_path / "b.png", images[1])
    assert labels[0] == labels[1]
    expected = embedder.compare(images[0], images[1])
    result = inference.main(["verify", a, b, "-m", str(saved_model), "--threshold", str(expected - 0.01)])
    assert result["similarity"] == pytest.approx(expected, abs=1e-5) and result["same"]
    assert "same person" in capsys.readouterr().out
    result = inference.main(["verify", a, b, "-m", str(saved_model), "--threshold", str(expected + 0.01)])
    assert not result["same"]
    assert "different people" in capsys.readouterr().out


def test_cli_verify_at_a_far_and_threshold_table(saved_model, embedder, faces, tmp_path, capsys):
    images, labels = faces
    rng = np.random.default_rng(1)
    first, second = rng.integers(0, len(images), (2, 60))
    bin_path = tmp_path / "val.bin"
    save_bin(bin_path, [png_bytes(images[i]) for pair in zip(first, second, strict=True)
                        for i in pair], (labels[first] == labels[second]).tolist())
    embeddings = embedder.embed([images[i] for pair in zip(first, second, strict=True) for i in pair])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = inference.calibrate_threshold(embeddings, labels[first] == labels[second], 0.1)
    a, b = write_face(tmp_path / "a.png", images[0]), write_face(tmp_path / "b.png", images[4])
    result = inference.main(["verify", a, b, "-m", str(saved_model), "--far", "0.1", "--bin", str(bin_path)])
    assert result["threshold"] == pytest.approx(expected, abs=1e-5)
    table = inference.main(["threshold", "-m", str(saved_model), "--bin", str(bin_path), "--far", "0.1", "0.5"])
    assert table["threshold"].iloc[0] == pytest.approx(expected, abs=1e-5)
    assert "far_target" in capsys.readouterr().out


def test_cli_embed_directory(saved_model, embedder, faces, tmp_path):
    folder = tmp_path / "faces"
    (folder / "person").mkdir(parents=True)
    for index in range(3):
        write_face(folder / "person" / f"{index}.png", faces[0][index])
    (folder / "person" / "9.jpg").write_text("broken")
    output = tmp_path / "embs.npz"
    with pytest.warns(UserWarning, match=r"9\.jpg: not a readable image"):
        inference.main(["embed", str(folder), "-m", str(saved_model), "-o", str(output)])
    stored = np.load(output)
    assert stored["paths"].tolist() == ["person/0.png", "person/1.png", "person/2.png"]
    assert stored["skipped"].tolist() == [str(folder / "person" / "9.jpg")]
    np.testing.assert_allclose(stored["embeddings"], embedder.embed(faces[0][:3]), atol=1e-5)
