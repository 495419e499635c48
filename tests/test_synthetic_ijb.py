"""synthetic_faces.build_ijb_layout: a synthetic IJB-B / IJB-C layout that IJB_evals reads and evaluates 1:1 and 1:N."""

import hashlib
import logging
import os

import numpy as np
import pytest

import IJB_evals
import prepare_data
import synthetic_faces as sf
from face_align import ARCFACE_TEMPLATE

SMALL = {"num_ids": 6, "templates_per_id": 3, "images_per_template": 2}  # 36 images, 18 + 18 pairs


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    """A 12-subject IJB-B layout (12 x 3 templates x 3 images), its 1:1 meta data as IJB_evals reads it, and
    the meta cache folder."""
    root, cache = str(tmp_path_factory.mktemp("ijb") / "data"), str(tmp_path_factory.mktemp("cache"))
    sf.build_ijb_layout(root, "IJBB", seed=3, num_ids=12, workers=1)
    return root, IJB_evals.extract_IJB_data_11(root, "IJBB", cache_dir=cache), cache


def subject_of(img_name):
    """The subject id in a synthetic image path `.../<subject>_<k>.jpg`."""
    return int(os.path.basename(img_name).split("_")[0])


def template_subjects(meta):
    """Dict template id → subject id, checking every template holds images of one subject only."""
    subjects = {}
    for template, name in zip(meta["templates"], meta["img_names"], strict=True):
        assert subjects.setdefault(int(template), subject_of(name)) == subject_of(name)
    return subjects


def digest(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


class OracleModel:
    """A callable model returning the one-hot of each image's true subject, found from the file names.

    The model only sees aligned pixels, so the aligned image (and its flip) of every file is hashed beforehand
    and mapped to the subject in its name.
    """

    def __init__(self, meta):
        subjects = sorted({subject_of(name) for name in meta["img_names"]})
        self.column, self.size = {subject: column for column, subject in enumerate(subjects)}, len(subjects)
        self.subject_by_digest = {}
        for name, landmark in zip(meta["img_names"], meta["landmarks"], strict=True):
            aligned = IJB_evals.read_aligned_rgb(name, landmark)
            for image in (aligned, aligned[:, ::-1]):
                self.subject_by_digest[digest(image)] = subject_of(name)

    def __call__(self, images):
        embeddings = np.zeros((len(images), self.size), dtype=np.float32)
        for row, image in enumerate(images):
            embeddings[row, self.column[self.subject_by_digest[digest(image)]]] = 1.0
        return embeddings


def random_projection_model(images):
    """A cheap fixed model: grey 14x14 average-pooled pixels times a fixed Gaussian (196, 32) matrix."""
    grey = np.asarray(images, dtype=np.float32).mean(-1).reshape(len(images), 14, 8, 14, 8).mean((2, 4))
    return grey.reshape(len(images), -1) @ np.random.default_rng(0).normal(size=(196, 32)).astype(np.float32)


def read_files(root, subset):
    """Every meta file of the layout and a sample of 5 images: dict relative path → bytes."""
    files = {}
    for folder, _, names in os.walk(os.path.join(root, subset)):
        for name in sorted(names):
            if folder.endswith("meta") or name.endswith(("_0.jpg", "_5.jpg")):
                with open(os.path.join(folder, name), "rb") as file:
                    files[os.path.relpath(os.path.join(folder, name), root)] = file.read()
    return files


def test_same_seed_same_files_other_seed_other_files(tmp_path):
    first = read_files(sf.build_ijb_layout(str(tmp_path / "a"), "IJBC", seed=1, workers=1, **SMALL), "IJBC")
    again = read_files(sf.build_ijb_layout(str(tmp_path / "b"), "IJBC", seed=1, workers=2, **SMALL), "IJBC")
    other = read_files(sf.build_ijb_layout(str(tmp_path / "c"), "IJBC", seed=2, workers=1, **SMALL), "IJBC")
    assert len(first) == 6 + 2 * 6 and first == again  # 6 meta files, images 0 and 5 of 6 subjects
    assert sorted(other) == sorted(first)
    assert all(other[name] != first[name] for name in first if not name.endswith(".csv"))  # csv: ids only
    assert "IJBC/meta/ijbc_1N_gallery_G1.csv" in first and "IJBC/meta/ijbc_1N_gallery_G2.csv" in first


def test_bad_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="templates_per_id >= 2"):
        sf.build_ijb_layout(str(tmp_path), templates_per_id=1)
    with pytest.raises(ValueError, match=r"num_pairs must be in \[1, 18\]"):
        sf.build_ijb_layout(str(tmp_path), num_pairs=19, **SMALL)
    with pytest.raises(ValueError, match="subset must be one of"):
        sf.build_ijb_layout(str(tmp_path), subset="IJBA")


def test_meta_files_parse_with_the_readers_and_are_consistent(layout):
    root, meta, cache = layout
    num_images, num_templates = 12 * 3 * 3, 12 * 3
    assert meta["img_names"].shape == (num_images,) and meta["landmarks"].shape == (num_images, 5, 2)
    assert all(os.path.isfile(name) for name in meta["img_names"])
    assert np.abs(meta["landmarks"] - ARCFACE_TEMPLATE).max() <= 1.0 + 1e-4
    assert meta["face_scores"].min() >= 0.5 and meta["face_scores"].max() <= 1.0
    np.testing.assert_array_equal(np.unique(meta["templates"]), np.arange(1, num_templates + 1))
    medias_per_template = [len(np.unique(meta["medias"][meta["templates"] == t])) for t in range(1, num_templates + 1)]
    assert set(medias_per_template) == {1, 2}
    assert len(np.unique(meta["medias"])) == sum(medias_per_template)  # media ids are not shared by templates

    subjects = template_subjects(meta)
    assert len(set(subjects.values())) == 12
    label = meta["label"]
    assert len(label) == 2 * 12 * 3 and np.count_nonzero(label == 1) == 12 * 3  # all genuine pairs, balanced
    same = np.array([subjects[a] == subjects[b] for a, b in zip(meta["p1"], meta["p2"], strict=True)])
    np.testing.assert_array_equal(same, label == 1)
    assert not np.any(meta["p1"] == meta["p2"])
    assert len({(a, b) for a, b, c in zip(meta["p1"], meta["p2"], label, strict=True) if c}) == 36

    g1, g1_ids, g2, g2_ids, probes, probe_ids = IJB_evals.extract_gallery_prob_data(
        root, "IJBB", cache_dir=cache)
    assert set(g1_ids).isdisjoint(g2_ids) and len(set(g1_ids)) == len(set(g2_ids)) == 6
    assert set(probe_ids) == set(g1_ids) | set(g2_ids)
    assert len(np.unique(probes)) == 12 * 2 and set(np.unique(probes)).isdisjoint(np.concatenate([g1, g2]))
    for templates, ids in ((g1, g1_ids), (g2, g2_ids), (probes, probe_ids)):
        assert all(subjects[int(t)] == int(s) for t, s in zip(templates, ids, strict=True))


def test_ijb_test_end_to_end_with_an_oracle_and_a_cheap_model(layout, caplog):
    caplog.set_level(logging.INFO, logger="IJB_evals")
    root, meta, cache = layout
    oracle = IJB_evals.IJB_test(OracleModel(meta), root, "IJBB", batch_size=50, cache_dir=cache)
    scores = oracle.run_model_test_single()
    np.testing.assert_allclose(scores, oracle.label.astype(np.float64), atol=1e-12)  # genuine 1, impostor 0
    _, _, auc, tars = IJB_evals.tpr_at_far_points(oracle.label, scores)
    assert auc == 1.0 and tars == [1.0] * len(IJB_evals.FAR_POINTS)
    caplog.clear()
    fars, mean_tpirs, g1_cmc, g2_cmc = oracle.run_model_test_1N(npoints=4)
    assert "[Mean] top1: 1.000000" in caplog.text
    np.testing.assert_array_equal(mean_tpirs, np.ones(len(fars)))
    mated = [(others, mate) for others, mate in g1_cmc + g2_cmc if mate is not None]
    assert len(mated) == 24 and all(others.shape == (5,) for others, _ in mated)  # each mated in a 6-subject gallery
    np.testing.assert_allclose([mate[0] for _, mate in mated], 1.0, atol=1e-12)
    np.testing.assert_allclose([others.max() for others, _ in mated], 0.0, atol=1e-12)

    cheap = IJB_evals.IJB_test(random_projection_model, root, "IJBB", batch_size=50, cache_dir=cache)
    assert cheap.embs.shape == cheap.embs_f.shape == (12 * 3 * 3, 32)
    scores = cheap.run_model_test_single()
    assert scores.shape == (72,) and np.all(np.isfinite(scores)) and np.abs(scores).max() <= 1 + 1e-12
    assert np.std(scores) > 1e-3  # the images differ: not a constant score
    _, mean_tpirs, _, _ = cheap.run_model_test_1N(npoints=4)
    assert np.all((mean_tpirs >= 0) & (mean_tpirs <= 1))


def test_cli_writes_the_layout(tmp_path, capsys):
    out = str(tmp_path / "demo_ijb")
    assert prepare_data.main(["--synthetic_ijb", out, "--subset", "IJBC", "--ijb_ids", "4", "--seed", "5",
                              "--workers", "1"]) == 0
    assert "IJBC" in capsys.readouterr().out
    meta = IJB_evals.extract_IJB_data_11(out, "IJBC", cache_dir=str(tmp_path / "cache"))
    assert len(meta["img_names"]) == 4 * 3 * 3 and len(meta["label"]) == 2 * 4 * 3
    expected = read_files(sf.build_ijb_layout(str(tmp_path / "direct"), "IJBC", seed=5, num_ids=4, workers=1),
                          "IJBC")
    assert read_files(out, "IJBC") == expected
