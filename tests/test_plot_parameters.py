"""plot_parameters.py: the FLOP counter against hand counts and the original's Flops.ipynb figure, the results
table, the figure files and the command line."""

import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
from keras import layers

import GhostFaceNets
import plot_parameters

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SCRIPT = Path(__file__).resolve().parents[1] / "plot_parameters.py"


def tiny_model():
    """8x8x3 -> Conv2D(4, 3x3, same, bias) -> DepthwiseConv2D(3x3, stride 2, no bias) -> PReLU -> GAP -> Dense(5)."""
    inputs = keras.Input((8, 8, 3))
    nn = layers.Conv2D(4, 3, padding="same", use_bias=True)(inputs)
    nn = layers.DepthwiseConv2D(3, strides=2, padding="same", use_bias=False)(nn)
    nn = layers.PReLU(shared_axes=[1, 2])(nn)
    nn = layers.GlobalAveragePooling2D()(nn)
    return keras.Model(inputs, layers.Dense(5)(nn))


def test_count_flops_tiny_model_matches_hand_count():
    # Profiler float ops by hand:
    #   Conv2D: 8*8 positions x 4 filters x 3*3*3 MACs = 6912 MACs -> 13824, + bias add 8*8*4 = 256
    #   DepthwiseConv2D: 4*4 positions x 4 channels x 3*3 = 576 MACs -> 1152
    #   PReLU on 4*4*4 = 64 elements: negate 64 + multiply 64 + negate alpha 4 = 132 (the add is not counted)
    #   GlobalAveragePooling2D: mean over its 64 inputs = 64
    #   Dense 4 -> 5: 20 MACs -> 40, + bias 5
    float_ops = 13824 + 256 + 1152 + 132 + 64 + 40 + 5
    params = (3 * 3 * 3 * 4 + 4) + 3 * 3 * 4 + 4 + (4 * 5 + 5)
    assert plot_parameters.count_flops(tiny_model()) == (float_ops // 2, params) == (7736, 177)


def test_count_additions_counts_add_layers_and_the_prelu_add():
    inputs = keras.Input((4, 4, 2))
    nn = layers.PReLU(shared_axes=[1, 2])(inputs)
    model = keras.Model(inputs, layers.Add()([nn, inputs, inputs]))
    # PReLU: 2*32 + 2 alphas; Add of 3 inputs: 2 additions per element, counted only with count_additions.
    assert plot_parameters.count_flops(model) == ((2 * 32 + 2) // 2, 2)
    assert plot_parameters.count_flops(model, count_additions=True) == ((3 * 32 + 2 + 2 * 32) // 2, 2)


def test_count_flops_ghostfacenetv2_matches_flops_notebook():
    """Flops.ipynb (kecam get_flops) printed 272,105,108 FLOPs and 6,880,288 params (6,795,720 trainable) for
    GhostFaceNetV2 width 1.3, stem stride 1, 112x112, PReLU, GDC without bias, emb 512. count_flops matches
    exactly: MACs of conv/depthwise layers (267,145,664) plus half the profiler's counted elementwise ops; the
    TensorFlow of the original did not count additions (with them, count_additions=True, 274,051,570)."""
    model = GhostFaceNets.GhostFaceNetV2(width=1.3, strides=1, weight_decay=0)
    assert plot_parameters.count_flops(model) == (272_105_108, 6_880_288)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 6_795_720
    assert GhostFaceNets.model_params_and_macs(model)["macs"] == 267_145_664


def test_count_flops_ghostfacenetv1_matches_paper_mflops():
    """The paper gives 215.65 MFLOPs for GhostFaceNetV1-1.3-1 and 60.29 for -1.3-2 (two decimals, truncated)."""
    stride_1 = plot_parameters.count_flops(GhostFaceNets.GhostFaceNetV1(width=1.3, strides=1, weight_decay=0))
    stride_2 = plot_parameters.count_flops(GhostFaceNets.GhostFaceNetV1(width=1.3, strides=2, weight_decay=0))
    assert stride_1 == (215_657_512, 4_088_812)
    assert stride_2 == (60_295_846, 4_066_900)


def test_default_table_has_one_number_per_model_and_benchmark_with_sources():
    table = plot_parameters.load_results()
    assert not table.duplicated(["model", "benchmark"]).any()
    assert table["source"].str.len().gt(0).all()
    assert table["accuracy"].between(50, 100).all()
    # Every model has one cost for all its benchmarks.
    assert (table.groupby("model")[["mflops", "params_m"]].nunique(dropna=False) == 1).all().all()
    ours = table[table["ours"]]
    assert set(ours["model"]) == {f"GhostFaceNetV1-1.3-{s} (A) {d}" for s in (1, 2) for d in ("MS1MV2", "MS1MV3")}
    row = table[(table["model"] == "GhostFaceNetV1-1.3-1 (A) MS1MV3") & (table["benchmark"] == "IJB-C")].iloc[0]
    assert (row["accuracy"], row["mflops"], row["params_m"]) == (94.94, 215.65, 4.088812)


@pytest.mark.parametrize("x", ["mflops", "params"])
def test_plot_written_for_every_benchmark(tmp_path, x):
    table = plot_parameters.load_results()
    x_column = plot_parameters.X_COLUMNS[x][0]
    for benchmark in sorted(table.loc[table[x_column].notna(), "benchmark"].unique()):
        expected = table[(table["benchmark"] == benchmark) & table[x_column].notna()]
        points = plot_parameters.plotted_points(table, benchmark, x)
        assert sorted(points["model"]) == sorted(expected["model"])
        path = plot_parameters.plot_accuracy_vs_cost(table, benchmark, x, tmp_path / f"{benchmark}_{x}.png", dpi=40)
        data = path.read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 1000


def test_point_counts_of_default_table():
    table = plot_parameters.load_results()
    counts = {bench: len(plot_parameters.plotted_points(table, bench)) for bench in table["benchmark"].unique()}
    assert counts == {"lfw": 12, "cfp_fp": 10, "agedb_30": 12, "IJB-B": 4, "IJB-C": 7, "cplfw": 1, "calfw": 1}
    assert len(plot_parameters.plotted_points(table, "lfw", "params")) == 9  # mbf / buffalo_s publish no params


def test_pdf_extension_writes_pdf(tmp_path):
    path = plot_parameters.plot_accuracy_vs_cost(plot_parameters.load_results(), "lfw", "params", tmp_path / "f.pdf")
    assert path.read_bytes()[:5] == b"%PDF-"


def test_errors_name_benchmark_and_file(tmp_path):
    table = plot_parameters.load_results()
    with pytest.raises(ValueError, match=r"'megaface'.*'IJB-C'.*'lfw'"):
        plot_parameters.plot_accuracy_vs_cost(table, "megaface", save_path=tmp_path / "m.png")
    listed = r"'calfw'; benchmarks with params data: \['IJB-B', 'IJB-C', 'agedb_30', 'cfp_fp', 'lfw'\]"
    with pytest.raises(ValueError, match=listed):
        plot_parameters.plotted_points(table[table["model"] != "MobileFaceNet (FaceX-Zoo)"], "calfw", "params")
    with pytest.raises(ValueError, match="unsupported extension 'jpg'"):
        plot_parameters.plot_accuracy_vs_cost(table, "lfw", save_path=tmp_path / "f.jpg")
    bad = tmp_path / "bad.csv"
    pd.DataFrame({"model": ["a"], "benchmark": ["lfw"], "accuracy": [99.0], "mflops": [1.0]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match=r"bad.csv: missing column\(s\) \['params_m'\]"):
        plot_parameters.load_results(bad)


def test_main_adds_saved_model_point_from_user_table(tmp_path):
    table_path = tmp_path / "results.csv"
    pd.DataFrame({"model": ["peer"], "benchmark": ["lfw"], "accuracy": [99.0], "mflops": [5.0],
                  "params_m": [0.1]}).to_csv(table_path, index=False)
    model_path = tmp_path / "tiny.keras"
    tiny_model().save(model_path)
    save_path = plot_parameters.main(["--table", str(table_path), "--benchmark", "lfw", "--x", "mflops",
                                      "--add_model", "tiny", str(model_path), "98.5", "--save_path",
                                      str(tmp_path / "out.png"), "--dpi", "40"])
    assert save_path.read_bytes()[:8] == PNG_MAGIC
    row = plot_parameters.model_rows("tiny", model_path, 98.5, "lfw").iloc[0]
    assert (row["mflops"], row["params_m"], bool(row["ours"])) == (7736 / 1e6, 177 / 1e6, True)


def test_cli_without_arguments_writes_calfw_png(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--dpi", "40"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "calfw_mflops.png").read_bytes()[:8] == PNG_MAGIC
