"""evals.recall_at_k against hand counts (whole set, per group, within groups) and the recall_eval.py CLI."""

import json

import cv2
import keras
import numpy as np
import pytest

import evals
import recall_eval


def on_circle(degrees, scales=None):
    """2-D embeddings at the given angles (cosine order = angular order), with optional row scales."""
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    points = np.stack([np.cos(radians), np.sin(radians)], axis=1)
    return points if scales is None else points * np.asarray(scales)[:, None]


def test_recall_at_k_equals_hand_count_overall_and_per_group():
    # sample:      0    1    2    3    4    5    6
    degrees = [0, 10, 25, 100, 120, 200, 60]
    labels = ["A", "B", "A", "C", "C", "D", "B"]
    groups = ["g1", "g1", "g2", "g2", "g1", "g2", "g2"]
    embeddings = on_circle(degrees, scales=[1, 3, 0.5, 2, 7, 1, 0.2])  # norms must not matter
    table = evals.recall_at_k(embeddings, labels, k=(1, 2, 3), groups=groups)
    # Rank of the first same-class neighbour, by hand: q0 2, q1 3, q2 2, q3 1, q4 1, q6 3; q5 (D) has no other.
    expected = {
        "all": [2 / 6, 4 / 6, 1.0, 6, 1],
        "g1": [1 / 3, 2 / 3, 1.0, 3, 0],  # q0, q1, q4
        "g2": [1 / 3, 2 / 3, 1.0, 3, 1],  # q2, q3, q6 (q5 skipped)
    }
    assert list(table.index) == ["all", "g1", "g2"]
    assert list(table.columns) == ["R@1", "R@2", "R@3", "queries", "skipped"]
    for row, values in expected.items():
        np.testing.assert_allclose(table.loc[row].to_numpy(dtype=float), values, err_msg=row)


def test_recall_within_groups_searches_each_group_only():
    degrees = [0, 30, 10, 5, 6, 90]
    labels = ["A", "A", "B", "A", "C", "C"]
    groups = ["X", "X", "X", "Y", "Y", "Y"]
    whole = evals.recall_at_k(on_circle(degrees), labels, k=(1, 2), groups=groups)
    within = evals.recall_at_k(on_circle(degrees), labels, k=(1, 2), groups=groups, within_groups=True)
    assert whole.loc["X", "R@1"] == pytest.approx(1 / 2)  # q0's nearest is sample 3 (A, group Y), q1's is 2 (B)
    np.testing.assert_allclose(within.loc["X"].to_numpy(float), [0.0, 1.0, 2, 1])
    np.testing.assert_allclose(within.loc["Y"].to_numpy(float), [0.5, 1.0, 2, 1])  # sample 3 has no A in Y
    np.testing.assert_allclose(within.loc["all"].to_numpy(float), [0.25, 1.0, 4, 2])


def test_blocked_neighbours_match_brute_force_and_large_k_is_clamped():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(50, 8))
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    similarities = unit @ unit.T
    np.fill_diagonal(similarities, -np.inf)
    brute = np.argsort(-similarities, axis=1)[:, :5]
    np.testing.assert_array_equal(evals.nearest_neighbours(embeddings, 5, block_elements=7 * 50), brute)
    np.testing.assert_array_equal(evals.nearest_neighbours(embeddings, 5), brute)
    labels = rng.integers(0, 4, size=50)
    table = evals.recall_at_k(embeddings, labels, k=(1, 100))
    assert table.loc["all", "R@100"] == 1.0 and table.loc["all", "queries"] == 50
    first = labels[brute[:, 0]] == labels
    assert table.loc["all", "R@1"] == pytest.approx(first.mean())


def test_recall_rejects_bad_input():
    with pytest.raises(ValueError, match="embeddings"):
        evals.recall_at_k(np.zeros((3, 2)), [0, 1])
    with pytest.raises(ValueError, match="k values"):
        evals.recall_at_k(np.ones((3, 2)), [0, 1, 1], k=(0,))
    with pytest.raises(evals.NonFiniteEmbeddingsError):
        evals.recall_at_k(np.full((3, 2), np.nan), [0, 1, 1])


def write_colour_folder(root, colours):
    """Class folders of solid-colour 32x32 PNG images: {class: [(r, g, b), ...]}."""
    for name, images in colours.items():
        (root / name).mkdir(parents=True)
        for index, rgb in enumerate(images):
            image = np.broadcast_to(np.array(rgb[::-1], dtype=np.uint8), (32, 32, 3))
            cv2.imwrite(str(root / name / f"{index}.png"), image)


def test_cli_prints_groups_and_saves_plot(tmp_path, capsys):
    colours = {
        "id1": [(250, 20, 20), (230, 40, 10)],
        "id2": [(20, 250, 20), (240, 30, 30)],  # the second image looks like id1
        "id3": [(20, 20, 250), (10, 40, 220)],
    }
    write_colour_folder(tmp_path / "faces", colours)
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))  # embedding = mean colour
    model.save(tmp_path / "mean_colour.keras")
    (tmp_path / "groups.json").write_text(json.dumps({"id1": "warm", "id2": "warm", "id3": "cool"}))
    table = recall_eval.main(["-m", str(tmp_path / "mean_colour.keras"), "-d", str(tmp_path / "faces"),
                              "--groups", str(tmp_path / "groups.json"), "-k", "1", "2",
                              "--plot", str(tmp_path / "recall.png")])
    embeddings = np.array([rgb for images in colours.values() for rgb in images], dtype=float) / 127.5 - 1
    labels = np.repeat([0, 1, 2], 2)
    expected = evals.recall_at_k(embeddings, labels, k=(1, 2))
    np.testing.assert_allclose(table.loc["all"].to_numpy(float), expected.loc["all"].to_numpy(float))
    assert table.loc["cool", "R@1"] == 1.0 and table.loc["warm", "R@1"] < 1.0
    assert list(table.index) == ["all", "cool", "warm"]
    assert "warm" in capsys.readouterr().out
    assert (tmp_path / "recall.png").stat().st_size > 1000


def test_cli_names_unmapped_classes(tmp_path):
    (tmp_path / "groups.csv").write_text("class,group\nid1,warm\n")
    mapping = recall_eval.read_group_mapping(tmp_path / "groups.csv")
    with pytest.raises(ValueError, match=r"groups.csv: no group for 1 class folder\(s\), e.g. \['id2'\]"):
        recall_eval.groups_of_files(["d/id1/0.png", "d/id2/0.png"], mapping, str(tmp_path / "groups.csv"))
