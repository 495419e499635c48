"""IJB_evals.py: template pooling, N/D/F scenarios, pair scores, 1:N TPIR, ROC table, caches, alignment, CLI."""

import logging
import os

import cv2
import numpy as np
import pytest

import IJB_evals
from evals import NonFiniteEmbeddingsError
from face_align import ARCFACE_TEMPLATE, align_face, similarity_transform

# ----------------------------------------------------------------------------------------------------------------
# A tiny IJB-B layout: 3 templates, 6 images, 3 pairs, 2-D embeddings


TINY_IMAGES = [  # name, template, media, detector score, embedding, flip embedding
    ("img0.jpg", 1, 10, 0.5, [2.0, 0.0], [0.0, 0.0]),
    ("img1.jpg", 1, 10, 1.0, [0.0, 2.0], [0.0, 0.0]),
    ("img2.jpg", 1, 11, 1.0, [0.0, -3.0], [0.0, 0.0]),
    ("img3.jpg", 2, 12, 1.0, [3.0, 4.0], [-3.0, 0.0]),
    ("img4.jpg", 3, 13, 1.0, [1.0, 0.0], [0.0, 0.0]),
    ("img5.jpg", 3, 13, 1.0, [0.0, 1.0], [0.0, 0.0]),
]
TINY_PAIRS = [(1, 2, 0), (1, 3, 0), (2, 3, 1)]


def write_layout(root, images, pairs, subset="IJBB", landmarks=None):
    """Meta files of an IJB layout under `root/<subset>/meta`; landmarks default to the ArcFace template."""
    meta = root / subset / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    lower = subset.lower()
    points = ARCFACE_TEMPLATE.ravel() if landmarks is None else np.asarray(landmarks).ravel()
    (meta / f"{lower}_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m, *_ in images))
    (meta / f"{lower}_template_pair_label.txt").write_text("".join(f"{a} {b} {c}\n" for a, b, c in pairs))
    (meta / f"{lower}_name_5pts_score.txt").write_text(
        "".join(f"{n} " + " ".join(f"{v:.4f}" for v in points) + f" {s}\n" for n, _, _, s, *_ in images))
    return root


def tiny_test(tmp_path):
    """IJB_test on the tiny layout with embeddings restored from an npz."""
    write_layout(tmp_path / "data", TINY_IMAGES, TINY_PAIRS)
    np.savez(tmp_path / "embs.npz", embs=np.array([row[4] for row in TINY_IMAGES], dtype=np.float32),
             embs_f=np.array([row[5] for row in TINY_IMAGES], dtype=np.float32))
    return IJB_evals.IJB_test(None, str(tmp_path / "data"), "IJBB", restore_embs=str(tmp_path / "embs.npz"),
                              cache_dir=str(tmp_path / "cache"))


# Scores of pairs (1,2), (1,3), (2,3) by hand. Template 1 = mean(img0, img1) (media 10) + img2 (media 11);
# template 2 = img3 (+ its flip [-3, 0] with F); template 3 = mean(img4, img5) = [0.5, 0.5] → [1, 1]/√2.
HAND_SCORES = {
    # T1 = [1, 1] + [0, -3] = [1, -2]/√5, T2 = [0.6, 0.8]
    "N0D0F0": [(0.6 - 1.6) / np.sqrt(5), -1 / np.sqrt(10), 1.4 / np.sqrt(2)],
    # img0 weighted 0.5 → mean [0.5, 1]; T1 = [0.5, -2]/√4.25
    "N0D1F0": [(0.3 - 1.6) / np.sqrt(4.25), -1.5 / np.sqrt(8.5), 1.4 / np.sqrt(2)],
    # img3 + flip = [0, 4] → T2 = [0, 1]
    "N0D0F1": [-2 / np.sqrt(5), -1 / np.sqrt(10), 1 / np.sqrt(2)],
    # unit images: mean([1,0],[0,1]) + [0,-1] = [0.5, -0.5] → T1 = [1, -1]/√2
    "N1D0F0": [-0.2 / np.sqrt(2), 0.0, 1.4 / np.sqrt(2)],
    # unit images, img0 × 0.5: mean([0.5,0],[0,1]) + [0,-1] = [0.25, -0.5]/√0.3125
    "N1D1F0": [-0.25 / np.sqrt(0.3125), -0.25 / np.sqrt(0.625), 1.4 / np.sqrt(2)],
}


def test_scores_on_a_tiny_layout_computed_by_hand(tmp_path):
    tt = tiny_test(tmp_path)
    scores, names = tt.run_model_test_bunch()
    assert names == ["N1D1F1", "N1D1F0", "N1D0F1", "N1D0F0", "N0D1F1", "N0D1F0", "N0D0F1", "N0D0F0"]
    by_name = dict(zip(names, scores, strict=True))
    for name, expected in HAND_SCORES.items():
        np.testing.assert_allclose(by_name[name], expected, atol=1e-12, err_msg=name)
        assert by_name[name].dtype == np.float64
    np.testing.assert_allclose(tt.run_model_test_single(), by_name["N0D1F1"], atol=1e-15)
    np.testing.assert_array_equal(tt.label, [0, 0, 1])


def test_cli_bunch_from_saved_embeddings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    tiny_test(tmp_path)
    assert IJB_evals.main(["-d", str(tmp_path / "data")]) is None  # no model and no result file given
    assert "Specify a model file with -m" in capsys.readouterr().out
    IJB_evals.main(["-d", str(tmp_path / "data"), "-s", "IJBB", "-R", str(tmp_path / "embs.npz"), "-B", "-E",
                    "-C", str(tmp_path / "cache")])
    with np.load(tmp_path / "embs.npz") as saved:
        names = list(saved["names"])
        assert names[0] == "embs_N1D1F1" and len(names) == 8 and saved["scores"].shape == (8, 3)
        np.testing.assert_allclose(saved["scores"][names.index("embs_N0D1F0")], HAND_SCORES["N0D1F0"], atol=1e-12)
        assert "label" not in saved.files
    table, _ = IJB_evals.main(["-P", str(tmp_path / "embs.npz"), str(tmp_path / "data/IJBB/meta/"
                                                                      "ijbb_template_pair_label.txt")])
    assert list(table.index) == names and table.loc["embs_N0D0F1", "AUC"] == 1.0  # pair (2,3) scores highest


def loop_template_scores(embs, embs_f, templates, medias, scores, p1, p2, use_norm, use_det, use_flip):
    """The standard algorithm written plainly: per image, per template, per media, per pair."""
    features = embs + embs_f if use_flip else embs.copy()
    if use_norm:
        features = features / np.linalg.norm(features, axis=1, keepdims=True)
    if use_det:
        features = features * scores[:, None]
    template_feats = {}
    for template in np.unique(templates):
        in_template = templates == template
        total = np.zeros(features.shape[1])
        for media in np.unique(medias[in_template]):
            total += features[in_template & (medias == media)].mean(axis=0)
        template_feats[template] = total / np.linalg.norm(total)
    return np.array([template_feats[a] @ template_feats[b] for a, b in zip(p1, p2, strict=True)])


def test_vectorised_scores_equal_the_loop_algorithm_on_a_random_layout():
    rng = np.random.default_rng(0)
    num_images, dim = 400, 16
    templates = rng.integers(0, 40, num_images) * 7 + 3
    medias = rng.integers(0, 25, num_images)
    embs, embs_f = rng.normal(size=(num_images, dim)), rng.normal(size=(num_images, dim))
    face_scores = rng.uniform(0.3, 1.0, num_images)
    unique = np.unique(templates)
    p1, p2 = rng.choice(unique, 300), rng.choice(unique, 300)
    aggregation = IJB_evals.TemplateAggregation(templates, medias)
    # A tiny score block forces many blocks of the pair scorer.
    scorer = IJB_evals.PairScorer(aggregation.unique_templates, p1, p2, block_bytes=8 * 40 * 3)
    assert len(scorer.blocks) > 5
    all_features = aggregation.features(embs, embs_f, face_scores, IJB_evals.scenarios(), chunk=37)
    for (use_norm, use_det, use_flip), features in zip(IJB_evals.scenarios(), all_features, strict=True):
        expected = loop_template_scores(embs, embs_f, templates, medias, face_scores, p1, p2, use_norm, use_det,
                                        use_flip)
        np.testing.assert_allclose(scorer.scores(features), expected, atol=1e-12)
        processed = IJB_evals.process_embeddings(embs, embs_f, use_flip, use_norm, use_det, face_scores)
        feats, unique_templates, _ = IJB_evals.image2template_feature(processed, templates, medias)
        np.testing.assert_allclose(IJB_evals.verification_11(feats, unique_templates, p1, p2), expected, atol=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# 1:N


def test_tpir_at_far_on_a_crafted_gallery():
    # Gallery subjects 100, 200, 300 with identity features, so a query's features are its scores.
    gallery = np.eye(3)
    queries = np.array([
        [0.9, 0.1, 0.2],  # subject 100: rank 1, mate 0.9
        [0.3, 0.6, 0.1],  # subject 200: rank 1, mate 0.6
        [0.7, 0.1, 0.5],  # subject 300: rank 2 (0.7 beats the mate 0.5)
        [0.4, 0.2, 0.3],  # subject 100: rank 1, mate 0.4
        [0.65, 0.1, 0.0],  # non-mated, best 0.65
        [0.2, 0.45, 0.1],  # non-mated, best 0.45
        [0.1, 0.2, 0.3],  # non-mated, best 0.3
        [0.05, 0.0, 0.1],  # non-mated, best 0.1
    ])
    query_ids = [100, 200, 300, 100, 999, 999, 999, 999]
    # Thresholds: sorted non-mated bests [0.65, 0.45, 0.3, 0.1] at index max(int(4·far) − 1, 0).
    # FAR 0.01, 0.25 → 0.65: only 0.9 passes → 1/4; FAR 0.5 → 0.45: 0.9, 0.6 → 2/4; FAR 1 → 0.1: 3/4.
    top1, top5, top10, tpirs, cmc = IJB_evals.evaluation_1N(queries, gallery, query_ids, [100, 200, 300],
                                                            fars=[0.01, 0.25, 0.5, 1.0])
    assert (top1, top5, top10) == (3, 4, 4)
    np.testing.assert_allclose(tpirs, [0.25, 0.25, 0.5, 0.75])
    assert len(cmc) == 8 and cmc[2][1][0] == 0.5 and sorted(cmc[2][0]) == [0.1, 0.7] and cmc[5][1] is None


def loop_tpirs(query_feats, gallery_feats, query_ids, reg_ids, fars):
    """Open-set TPIR and rank-1 count written plainly, one query at a time."""
    similarity = query_feats @ gallery_feats.T
    positives, best_others, non_mated_bests, top1 = [], [], [], 0
    for row, query_id in zip(similarity, query_ids, strict=True):
        if query_id in reg_ids:
            mate = list(reg_ids).index(query_id)
            top1 += int(np.argmax(row) == mate)
            positives.append(row[mate])
            best_others.append(max(value for value, rid in zip(row, reg_ids, strict=True) if rid != query_id))
        else:
            non_mated_bests.append(row.max())
    ranked = sorted(non_mated_bests, reverse=True)
    tpirs = []
    for far in fars:
        threshold = ranked[max(int(len(ranked) * far) - 1, 0)]
        hits = sum(p > o and p > threshold for p, o in zip(positives, best_others, strict=True))
        tpirs.append(hits / len(positives))
    return top1, tpirs


def test_1n_equals_a_plain_loop_on_random_features():
    rng = np.random.default_rng(5)
    gallery = rng.normal(size=(30, 8))
    reg_ids = rng.permutation(100)[:30]
    query_ids = np.concatenate([rng.choice(reg_ids, 150), rng.integers(200, 300, 100)])
    mates = np.array([gallery[list(reg_ids).index(q)] if q in reg_ids else np.zeros(8) for q in query_ids])
    queries = 0.7 * mates + rng.normal(size=(250, 8))
    fars = IJB_evals.far_points_1N(20)
    top1, _, _, tpirs, _ = IJB_evals.evaluation_1N(queries, gallery, query_ids, reg_ids, fars, chunk=64)
    expected_top1, expected_tpirs = loop_tpirs(queries, gallery, query_ids, reg_ids, fars)
    assert top1 == expected_top1 and 0 < top1 < 150
    np.testing.assert_allclose(tpirs, expected_tpirs, atol=1e-15)
    assert 0 < tpirs[0] < tpirs[-1] < 1


def write_1n_files(root, subset="IJBB"):
    """Galleries: S1 = templates 1 (subject 7), 2 (subject 8); S2 = template 3 (subject 9); probes: 2 mated."""
    meta = root / subset / "meta"
    header = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    (meta / "ijbb_1N_gallery_S1.csv").write_text(header + "1,7,a.jpg\n1,7,b.jpg\n2,8,c.jpg\n")
    (meta / "ijbb_1N_gallery_S2.csv").write_text(header + "3,9,d.jpg\n")
    (meta / "ijbb_1N_probe_mixed.csv").write_text(header + "4,7,e.jpg\n5,9,f.jpg\n")


ONE_N_IMAGES = [  # template 4 looks like template 1 (subject 7), template 5 like template 3 (subject 9)
    ("i0.jpg", 1, 1, 1.0, [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]),
    ("i1.jpg", 2, 2, 1.0, [0.0, 1.0, 0.0], [0.0, 1.0, 0.0]),
    ("i2.jpg", 3, 3, 1.0, [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]),
    ("i3.jpg", 4, 4, 1.0, [0.9, 0.1, 0.0], [0.9, 0.1, 0.0]),
    ("i4.jpg", 5, 5, 1.0, [0.0, 0.2, 0.9], [0.0, 0.2, 0.9]),
]


def test_run_model_test_1N_and_cli_with_label(tmp_path, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="IJB_evals")
    monkeypatch.chdir(tmp_path)
    write_layout(tmp_path / "data", ONE_N_IMAGES, [(1, 4, 1), (2, 5, 0)])
    write_1n_files(tmp_path / "data")
    embs = np.array([row[4] for row in ONE_N_IMAGES], dtype=np.float32)
    np.savez(tmp_path / "res.npz", embs=embs, embs_f=embs)
    tt = IJB_evals.IJB_test(None, str(tmp_path / "data"), "IJBB", restore_embs=str(tmp_path / "res.npz"))
    fars, mean_tpirs, g1_cmc, g2_cmc = tt.run_model_test_1N(npoints=4)
    np.testing.assert_allclose(fars, [1e-4, 1e-3, 1e-2, 1e-1, 1])
    # Gallery S1: probe 4 is mated and rank 1, probe 5 is non-mated (best score 0.2/|.| vs mate 0.9/|.|): TPIR
    # 1 at every FAR. Gallery S2: probe 5 mated (only entry), probe 4 non-mated with score 0 < mate: TPIR 1.
    np.testing.assert_allclose(mean_tpirs, 1.0)
    assert len(g1_cmc) == 2 and len(g2_cmc) == 2
    assert "[Mean] top1: 1.000000" in caplog.text

    # The original's CLI crashed with -N -L (NameError); here it saves the result with the 1:1 labels.
    IJB_evals.main(["-d", str(tmp_path / "data"), "-s", "IJBB", "-R", str(tmp_path / "res.npz"), "-N", "-L",
                    "-E"])
    with np.load(tmp_path / "res.npz") as saved:
        assert saved["scores"].shape == (1, 2, 101) and list(saved["names"]) == ["res"]
        np.testing.assert_array_equal(saved["label"], [1, 0])
        np.testing.assert_array_equal(saved["embs"], embs)
    assert (tmp_path / "res.png").is_file()
    assert IJB_evals.main(["-P", str(tmp_path / "re*.npz"), "-N"]) is not None  # plot only, glob expanded
    assert os.listdir(tmp_path / "data" / "IJBB") == ["meta"]  # caches went to IJB_cache/, not the data folder
    assert len(os.listdir(tmp_path / "IJB_cache")) == 2


# ----------------------------------------------------------------------------------------------------------------
# ROC table


def test_roc_table_hand_computed_with_a_tie():
    positives = [0.9, 0.8, 0.55, 0.3, 0.2]
    negatives = [0.85, 0.55, 0.4, 0.1, 0.05, 0.0, -0.1, -0.2, -0.3, -0.4]
    label = np.array([1] * 5 + [0] * 10)
    # The ROC: (0, .2), (.1, .2), (.1, .4), then the 0.55 tie moves diagonally to (.2, .6). At FPR 1e-6…1e-2 the
    # closest point has FPR 0 → TPR 0.2; at 0.1 the highest TPR at FPR 0.1 is 0.4. AUC: each positive's share of
    # lower negatives, ties count half: (1 + .9 + .85 + .7 + .7) / 5 = 0.83.
    table, figure = IJB_evals.plot_roc_and_calculate_tpr([np.array(positives + negatives)], names=["tiny"],
                                                         label=label)
    assert list(table.columns) == [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, "AUC"]
    assert list(table.index) == ["tiny"]
    np.testing.assert_allclose(table.loc["tiny"].to_numpy(dtype=float), [0.2] * 5 + [0.4, 0.83])
    assert figure is not None


def test_roc_from_result_and_label_files(tmp_path):
    score = np.linspace(0, 1, 20)
    np.savez(tmp_path / "r.npz", scores=np.stack([score, 1 - score]), names=np.array(["a_N0D1F1", "a_N0D0F0"]))
    (tmp_path / "pairs.txt").write_text("".join(f"1 2 {int(s > 0.5)}\n" for s in score))
    table, _ = IJB_evals.plot_roc_and_calculate_tpr([str(tmp_path / "r.npz"), str(tmp_path / "pairs.txt")],
                                                    save_path=str(tmp_path / "roc.png"))
    assert list(table.index) == ["a_N0D1F1", "a_N0D0F0"]
    assert table.loc["a_N0D1F1", "AUC"] == 1.0 and table.loc["a_N0D0F0", "AUC"] == 0.0
    assert (tmp_path / "roc.png").is_file()
    with pytest.raises(ValueError, match="NaN"):
        IJB_evals.plot_roc_and_calculate_tpr([np.array([0.1, np.nan])], label=np.array([0, 1]))


# ----------------------------------------------------------------------------------------------------------------
# Bad input, caches, models


def test_missing_meta_file_is_named(tmp_path):
    write_layout(tmp_path, TINY_IMAGES, TINY_PAIRS)
    os.remove(tmp_path / "IJBB" / "meta" / "ijbb_template_pair_label.txt")
    with pytest.raises(FileNotFoundError, match=r"ijbb_template_pair_label\.txt"):
        IJB_evals.IJB_test(None, str(tmp_path), "IJBB", restore_embs="unused.npz", cache_dir=str(tmp_path / "c"))
    write_layout(tmp_path, TINY_IMAGES, TINY_PAIRS)
    with pytest.raises(FileNotFoundError, match=r"ijbb_1N_gallery_S1\.csv"):
        IJB_evals.extract_gallery_prob_data(str(tmp_path), "IJBB", cache_dir=str(tmp_path / "c"))


def test_non_finite_embeddings_and_no_model_give_clear_errors(tmp_path):
    write_layout(tmp_path / "data", TINY_IMAGES, TINY_PAIRS)
    embs = np.ones((6, 2), dtype=np.float32)
    embs[3, 1] = np.inf
    np.savez(tmp_path / "bad.npz", embs=embs, embs_f=np.ones((6, 2), dtype=np.float32))
    with pytest.raises(NonFiniteEmbeddingsError, match=r"bad\.npz"):
        IJB_evals.IJB_test(None, str(tmp_path / "data"), "IJBB", restore_embs=str(tmp_path / "bad.npz"),
                           cache_dir=str(tmp_path / "c"))
    with pytest.raises(ValueError, match="needs a model_file or a restore_embs"):
        IJB_evals.IJB_test(None, str(tmp_path / "data"), "IJBB", cache_dir=str(tmp_path / "c"))
    np.savez(tmp_path / "short.npz", embs=np.ones((5, 2), dtype=np.float32))
    with pytest.raises(ValueError, match="do not match the 6 images"):
        IJB_evals.IJB_test(None, str(tmp_path / "data"), "IJBB", restore_embs=str(tmp_path / "short.npz"),
                           cache_dir=str(tmp_path / "c"))


def test_meta_cache_is_rebuilt_when_a_meta_file_changes(tmp_path):
    data = write_layout(tmp_path / "data", TINY_IMAGES, TINY_PAIRS)
    cache = str(tmp_path / "cache")
    first = IJB_evals.extract_IJB_data_11(str(data), "IJBB", cache_dir=cache)
    np.testing.assert_array_equal(first["p1"], [1, 1, 2])
    np.testing.assert_allclose(first["face_scores"], [0.5, 1, 1, 1, 1, 1])
    assert first["landmarks"].shape == (6, 5, 2)
    pair_file = data / "IJBB" / "meta" / "ijbb_template_pair_label.txt"
    pair_file.write_text("3 1 1\n")
    os.utime(pair_file, (1e9, 1e9))
    assert IJB_evals.extract_IJB_data_11(str(data), "IJBB", cache_dir=cache)["p1"].tolist() == [3]


def test_get_embeddings_aligns_and_flips_for_a_callable_model(tmp_path):
    # Each image is the 112x112 crop scaled by 2 (224x224), so its landmarks are the template × 2: alignment must
    # give back the crop. The model returns each image's mean over its left half, per channel.
    rng = np.random.default_rng(3)
    crop = cv2.GaussianBlur(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8), (9, 9), 3)
    cv2.imwrite(str(tmp_path / "face.png"), cv2.resize(crop, (224, 224), interpolation=cv2.INTER_LINEAR))
    landmarks = (ARCFACE_TEMPLATE * 2)[None].astype(np.float32)

    def left_half_mean(images):
        assert images.dtype == np.uint8 and images.shape[1:] == (112, 112, 3)
        return images[:, :, :56].reshape(len(images), -1, 3).mean(axis=1)

    names = np.array([str(tmp_path / "face.png")] * 3)
    embs, embs_f = IJB_evals.get_embeddings(left_half_mean, names, np.repeat(landmarks, 3, axis=0), batch_size=2)
    rgb = crop[:, :, ::-1].astype(np.float64)
    np.testing.assert_allclose(embs, np.tile(rgb[:, :56].reshape(-1, 3).mean(axis=0), (3, 1)), atol=1.5)
    np.testing.assert_allclose(embs_f, np.tile(rgb[:, 56:].reshape(-1, 3).mean(axis=0), (3, 1)), atol=1.5)
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        IJB_evals.read_aligned_rgb(str(tmp_path / "missing.png"), landmarks[0])


def test_similarity_transform_recovers_a_known_transform_and_matches_skimage():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    source = ARCFACE_TEMPLATE
    target = scale * source @ rotation.T + shift
    np.testing.assert_allclose(similarity_transform(source, target), np.hstack([scale * rotation, shift[:, None]]),
                               atol=1e-10)
    skimage_transform = pytest.importorskip("skimage.transform")
    noisy = source + np.random.default_rng(0).normal(scale=2.0, size=source.shape)
    if hasattr(skimage_transform.SimilarityTransform, "from_estimate"):
        tform = skimage_transform.SimilarityTransform.from_estimate(noisy, ARCFACE_TEMPLATE)
    else:
        tform = skimage_transform.SimilarityTransform()
        tform.estimate(noisy, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(similarity_transform(noisy, ARCFACE_TEMPLATE), tform.params[:2], atol=1e-10)
    grey = align_face(np.full((50, 60), 7, dtype=np.uint8), noisy)
    assert grey.shape == (112, 112, 3)


def test_model_interface_dispatch_and_missing_optional_packages(tmp_path, monkeypatch):
    def model(images):
        return images

    assert IJB_evals.model_interface(model) is model
    with pytest.raises(ValueError, match="unknown model type"):
        IJB_evals.model_interface(str(tmp_path / "model.bin"))
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="optional package 'torch'"):
        IJB_evals.model_interface(str(tmp_path / "model.pt"))


def test_keras_model_file_through_the_pipeline(tmp_path):
    import keras

    inputs = keras.Input((112, 112, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(keras.layers.AveragePooling2D(8)(inputs))
    model = keras.Model(inputs, keras.layers.Dense(4, name="emb")(pooled))
    model.save(tmp_path / "tiny.keras")
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    interf = IJB_evals.model_interface(str(tmp_path / "tiny.keras"))
    expected = model.predict((images.astype(np.float32) - 127.5) * 0.0078125, verbose=0)
    np.testing.assert_allclose(interf(images), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(IJB_evals.model_interface(model)(images), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_first", [True, False])
def test_onnx_model_interface_normalises_and_handles_the_layout(tmp_path, channels_first):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # A graph that averages each channel: (B, 3, H, W) → (B, 3) or (B, H, W, 3) → (B, 3).
    shape, axes = (["B", 3, 112, 112], [2, 3]) if channels_first else (["B", 112, 112, 3], [1, 2])
    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=0)], "mean",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 3])],
        [helper.make_tensor("axes", TensorProto.INT64, [2], axes)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "mean.onnx")
    images = np.random.default_rng(0).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    interf = IJB_evals.model_interface(str(tmp_path / "mean.onnx"))
    expected = ((images.astype(np.float64) - 127.5) / 128).mean(axis=(1, 2))
    np.testing.assert_allclose(interf(images), expected, atol=1e-5)
