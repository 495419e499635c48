"""Synthetic face identities: deterministic by seed, identities well apart, pixels a weak baseline."""

import cv2
import numpy as np

import synthetic_faces as sf
from bin_files import load_bin


def decode(data):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def render(seed, indices, per_id, nuisance, workers=1):
    images = sf.render_identities(seed, indices, per_id, nuisance, workers=workers)
    return {index: [decode(data) for data in images[index]] for index in indices}, images


def test_deterministic_by_seed_and_independent_of_workers():
    _, first = sf.render_identities(5, range(3), 2, 0.5, workers=1), None
    again = sf.render_identities(5, range(3), 2, 0.5, workers=2)
    assert first is None and again == sf.render_identities(5, range(3), 2, 0.5, workers=1)
    other_seed = sf.render_identities(6, range(3), 2, 0.5, workers=1)
    assert all(other_seed[i] != again[i] for i in range(3))
    image = decode(again[0][0])
    assert image.shape == (112, 112, 3) and image.dtype == np.uint8 and image.std() > 10


def test_identities_are_kept_apart():
    identities = sf.make_identities(0, range(300))
    vectors = np.stack([identity.vector for identity in identities])
    distances = np.linalg.norm(vectors[:, None] - vectors[None], axis=-1) + np.eye(300) * 1e9
    assert distances.min() >= sf.MIN_IDENTITY_DISTANCE
    assert len(identities[0].vector) == sf.IDENTITY_DIMENSIONS >= 30


def pair_sets(images, per_id, rng):
    pairs, issame = sf.make_pairs(list(images), per_id, 60, rng)
    first = np.stack([images[a[0]][a[1]] for a, _ in pairs])
    second = np.stack([images[b[0]][b[1]] for _, b in pairs])
    return first, second, np.array(issame)


def test_identity_is_in_the_parameters_and_pixels_are_a_weak_baseline():
    clean, _ = render(1, range(12), 4, 0.0)
    assert all(np.array_equal(clean[i][0], clean[i][3]) for i in range(12))  # no nuisance: one image per identity
    first, second, issame = pair_sets(clean, 4, np.random.default_rng(0))
    assert sf.pixel_verification_accuracy(first, second, issame) == 1.0

    noisy, _ = render(1, range(20), 6, 0.5)
    first, second, issame = pair_sets(noisy, 6, np.random.default_rng(0))
    baseline = sf.pixel_verification_accuracy(first, second, issame)
    assert 0.5 <= baseline <= 0.85  # the design: raw pixels ~0.6-0.7, a trained model > 0.95
    grey = lambda x: (x.mean(-1) - x.mean((1, 2, 3))[:, None, None]).reshape(len(x), -1)  # noqa: E731
    cosine = (
        np.sum(grey(first) * grey(second), 1)
        / np.linalg.norm(grey(first), axis=1)
        / np.linalg.norm(grey(second), axis=1)
    )
    assert cosine[issame].mean() > cosine[~issame].mean()  # same identity is more alike than different ones


def test_make_pairs_and_demo_bin(tmp_path):
    pairs, issame = sf.make_pairs(range(10, 15), 4, 20, np.random.default_rng(0))
    assert sum(issame) == 20 and len(set(pairs)) == 40
    assert all((a[0] == b[0]) == same for (a, b), same in zip(pairs, issame, strict=True))
    _, bin_path = sf.build_demo(
        tmp_path / "demo", train_ids=3, images_per_id=2, test_ids=4, test_images_per_id=3, num_pairs=5, workers=1
    )
    assert sorted(p.name for p in (tmp_path / "demo" / "train").iterdir()) == ["0", "1", "2"]
    bins, issame = load_bin(bin_path)
    assert len(bins) == 20 and issame.sum() == 5 and decode(bins[0]).shape == (112, 112, 3)
