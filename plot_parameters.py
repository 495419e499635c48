"""Accuracy against computational cost of lightweight face models (the GhostFaceNets paper's Fig. 8).

The published results live in a table, ``plot_parameters_results.csv`` beside this file: one row per
(model, benchmark) with the columns ``model, benchmark, accuracy, mflops, params_m, train_set, ours, source``.
Accuracy is in percent (TAR@FAR=1e-4 for IJB-B / IJB-C), ``mflops`` in millions of multiply-accumulates and
``params_m`` in millions of parameters; ``source`` names the reference each number was taken from.

Typical use::

    python plot_parameters.py                                  # calfw, accuracy vs MFLOPs
    python plot_parameters.py --benchmark lfw --x params --save_path lfw_params.pdf
    python plot_parameters.py --benchmark lfw --add_model "my model" checkpoints/my_basic_model.keras 99.6

``count_flops(model)`` measures a Keras model in the same unit, so a newly trained model can be placed on the plot.
"""

import argparse
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from atomic_io import save_figure_atomic

DEFAULT_TABLE = Path(__file__).resolve().with_name("plot_parameters_results.csv")
TABLE_COLUMNS = ["model", "benchmark", "accuracy", "mflops", "params_m", "train_set", "ours", "source"]
REQUIRED_COLUMNS = ["model", "benchmark", "accuracy", "mflops", "params_m"]
X_COLUMNS = {"mflops": ("mflops", "MFLOPs"), "params": ("params_m", "Parameters (M)")}
SAVE_FORMATS = ("png", "pdf", "svg")
MARKERS = "osD^vP*Xhp<>"


# ---------------------------------------------------------------------------------------------------------------
# The results table
# ---------------------------------------------------------------------------------------------------------------
def load_results(path=None):
    """Read a results CSV (default: ``plot_parameters_results.csv``) into a DataFrame with :data:`TABLE_COLUMNS`.

    ``train_set``, ``ours`` and ``source`` are optional in a user's file (``ours`` defaults to False). Raises
    ``ValueError`` naming the file when a required column is missing or a number cannot be read.
    """
    path = Path(path) if path is not None else DEFAULT_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"results table {path} does not exist")
    table = pd.read_csv(path)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; a results table needs {REQUIRED_COLUMNS}")
    for column in ("accuracy", "mflops", "params_m"):
        values = pd.to_numeric(table[column], errors="coerce")
        bad_rows = table.index[values.isna() & table[column].notna()].tolist()
        if bad_rows:
            raise ValueError(f"{path}: column {column!r} has non-numeric values in data rows {bad_rows}")
        table[column] = values
    table["ours"] = table["ours"].astype(str).str.lower().isin(["true", "1", "yes"]) if "ours" in table else False
    for column in ("train_set", "source"):
        if column not in table:
            table[column] = ""
    return table[TABLE_COLUMNS]


def plotted_points(table, benchmark="calfw", x="mflops"):
    """The rows of ``table`` drawn by `plot_accuracy_vs_cost`: ``benchmark`` rows with both an accuracy and
    an ``x`` value (``"mflops"`` or ``"params"``), one per model.

    Raises ``ValueError`` naming the benchmark and listing the available ones when nothing is left to plot.
    """
    if x not in X_COLUMNS:
        raise ValueError(f"x must be one of {list(X_COLUMNS)}, got {x!r}")
    x_column = X_COLUMNS[x][0]
    rows = table[(table["benchmark"] == benchmark) & table["accuracy"].notna() & table[x_column].notna()]
    if rows.empty:
        available = sorted(table.loc[table[x_column].notna() & table["accuracy"].notna(), "benchmark"].unique())
        raise ValueError(f"no results with accuracy and {x_column} for benchmark {benchmark!r}; "
                         f"benchmarks with {x} data: {available}")
    duplicated = rows["model"][rows["model"].duplicated()].tolist()
    if duplicated:
        raise ValueError(f"benchmark {benchmark!r} has more than one row for model(s) {duplicated}")
    return rows.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# FLOP counting (the unit of kecam's get_flops, used by the original's Flops.ipynb)
# ---------------------------------------------------------------------------------------------------------------
def count_flops(model, count_additions=False):
    """FLOPs and parameter count of a Keras model for one input sample: returns ``(flops, params)``.

    ``flops`` follows keras_cv_attention_models' ``get_flops``, which the original reported: the TensorFlow
    profiler's float operations of the inference graph, halved, so a convolution counts its multiply-accumulates
    (MACs) and every other counted op half its elements. Per layer, in profiler float ops (N output elements):
    Conv2D / DepthwiseConv2D / SeparableConv2D / Dense 2 x MACs (+ N for a bias); PReLU 2N + alpha size;
    Multiply N; average / max pooling pool area x N; GlobalAveragePooling2D its input size; hard-sigmoid 3N;
    a BatchNormalization on a non-4-D input 6 per channel (4-D ones run as one fused kernel, which the profiler
    does not count). The TensorFlow that produced the published numbers did not register additions (``AddV2``),
    so Add layers count nothing; ``count_additions=True`` adds them as newer TensorFlow does (Add N per extra
    input, PReLU +N, hard-sigmoid +N, unfused BN +N + channels). ReLU, sigmoid, padding, resize and
    concatenation count nothing. ``params`` is the number of weights, trainable and not.
    """
    import GhostFaceNets

    float_ops = sum(layer_float_ops(layer, count_additions) for layer in GhostFaceNets.iterate_layers(model))
    params = sum(int(np.prod(weight.shape)) for weight in model.weights)
    return float_ops // 2, params


def num_elements(tensor):
    """Elements of one sample of a symbolic Keras tensor (all axes but the batch axis)."""
    return int(np.prod(tensor.shape[1:]))


def batchnorm_float_ops(layer, count_additions):
    """Profiler float ops of an unfused BatchNormalization: rsqrt (2 per channel), scale, x*inv, mean*inv, offset."""
    if len(layer.input.shape) == 4:
        return 0
    channels, elements = int(layer.input.shape[-1]), num_elements(layer.input)
    ops = 2 * channels + channels * layer.scale + elements + channels + channels * layer.center
    return ops + (channels + elements if count_additions else 0)


def layer_float_ops(layer, count_additions=False):
    """Profiler float ops (twice the FLOPs of `count_flops`) of one layer for one sample."""
    from keras import layers

    import GhostFaceNets

    if isinstance(layer, (layers.Conv2D, layers.DepthwiseConv2D, layers.SeparableConv2D, layers.Dense)):
        return 2 * GhostFaceNets.layer_macs(layer) + (num_elements(layer.output) if layer.use_bias else 0)
    if isinstance(layer, layers.PReLU):
        elements = num_elements(layer.output)
        return 2 * elements + int(np.prod(layer.alpha.shape)) + (elements if count_additions else 0)
    if isinstance(layer, layers.Multiply):
        return (len(layer.input) - 1) * num_elements(layer.output)
    if isinstance(layer, layers.Add):
        return (len(layer.input) - 1) * num_elements(layer.output) if count_additions else 0
    if isinstance(layer, (layers.AveragePooling2D, layers.MaxPooling2D)):
        return int(np.prod(layer.pool_size)) * num_elements(layer.output)
    if isinstance(layer, layers.GlobalAveragePooling2D):
        return num_elements(layer.input)
    if isinstance(layer, layers.Activation) and "hard_sigmoid" in getattr(layer.activation, "__name__", ""):
        return (4 if count_additions else 3) * num_elements(layer.output)
    if isinstance(layer, layers.BatchNormalization):
        return batchnorm_float_ops(layer, count_additions)
    return 0


def model_rows(name, model_path, accuracy, benchmark, train_set=""):
    """A one-row results table for a saved model: its accuracy on ``benchmark`` (%), MFLOPs and params from
    `count_flops`, marked as ours. ``model_path``: a ``.keras`` / ``.h5`` file GhostFaceNets can open."""
    import GhostFaceNets

    flops, params = count_flops(GhostFaceNets.load_model(model_path))
    row = {"model": name, "benchmark": benchmark, "accuracy": float(accuracy), "mflops": flops / 1e6,
           "params_m": params / 1e6, "train_set": train_set, "ours": True,
           "source": f"count_flops({Path(model_path).name})"}
    return pd.DataFrame([row], columns=TABLE_COLUMNS)


# ---------------------------------------------------------------------------------------------------------------
# The figure
# ---------------------------------------------------------------------------------------------------------------
def save_format(save_path):
    """The matplotlib format of ``save_path`` taken from its extension (png, pdf or svg)."""
    suffix = Path(save_path).suffix.lower().lstrip(".")
    if suffix not in SAVE_FORMATS:
        raise ValueError(f"{save_path}: unsupported extension {suffix!r}; use one of {list(SAVE_FORMATS)}")
    return suffix


def plot_accuracy_vs_cost(table, benchmark="calfw", x="mflops", save_path=None, dpi=600):
    """Scatter accuracy (%) on ``benchmark`` against MFLOPs (``x="mflops"``) or millions of parameters
    (``x="params"``), one labelled point per model, ours with red marker edges; legend at lower right in 2 columns.

    ``table``: a DataFrame as returned by `load_results`. Saves to ``save_path`` (default
    ``<benchmark>_<x>.png``, written atomically) in the format given by its extension and returns the path.
    Raises ``ValueError`` (naming the benchmark and listing the available ones) when the benchmark has no data for
    ``x``.
    """
    points = plotted_points(table, benchmark, x)
    x_column, x_label = X_COLUMNS[x]
    save_path = Path(save_path) if save_path is not None else Path(f"{benchmark}_{x}.png")
    file_format = save_format(save_path)
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(points), 2)))

    figure, axes = plt.subplots(figsize=(9, 6))
    for index, row in points.iterrows():
        label = f"{row['model']} (ours)" if row["ours"] else row["model"]
        axes.scatter(row[x_column], row["accuracy"], s=90, marker=MARKERS[index % len(MARKERS)],
                     color=colors[index], edgecolors="red" if row["ours"] else "black",
                     linewidths=2.0 if row["ours"] else 0.5, label=label, zorder=3)
    axes.set_xlabel(x_label)
    axes.set_ylabel(f"{benchmark} accuracy (%)")
    axes.set_title(f"{benchmark}: accuracy vs {x_label}")
    axes.grid(True, alpha=0.3)
    axes.legend(loc="lower right", ncol=2, fontsize=7)
    figure.tight_layout()
    save_figure_atomic(figure, save_path, format=file_format, dpi=dpi)
    plt.close(figure)
    return save_path


# ---------------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------------
def parse_arguments(argv=None):
    """Command-line options of ``python plot_parameters.py``."""
    parser = argparse.ArgumentParser(description="Plot face-verification accuracy against MFLOPs or parameters.")
    parser.add_argument("--table", default=None, help=f"results CSV (default: {DEFAULT_TABLE.name})")
    parser.add_argument("--benchmark", default="calfw", help="benchmark column value, e.g. lfw, cfp_fp, IJB-C")
    parser.add_argument("--x", default="mflops", choices=list(X_COLUMNS), help="x axis: MFLOPs or parameters")
    parser.add_argument("--save_path", default=None, help="output file, .png / .pdf / .svg (default <bench>_<x>.png)")
    parser.add_argument("--dpi", type=int, default=600, help="resolution of raster output")
    parser.add_argument("--add_model", nargs=3, action="append", default=[], metavar=("NAME", "MODEL_FILE", "ACC"),
                        help="add a saved model's point (accuracy in %% on --benchmark); may be repeated")
    parser.add_argument("--list", action="store_true", help="print the benchmarks and point counts, then exit")
    return parser.parse_args(argv)


def main(argv=None):
    """Load the table, add any ``--add_model`` points and write the figure; returns the saved path."""
    args = parse_arguments(argv)
    table = load_results(args.table)
    added = [model_rows(name, path, accuracy, args.benchmark) for name, path, accuracy in args.add_model]
    if added:
        table = pd.concat([table, *added], ignore_index=True)
    if args.list:
        print(table.groupby("benchmark")["model"].count().to_string())
        return None
    save_path = plot_accuracy_vs_cost(table, args.benchmark, args.x, args.save_path, dpi=args.dpi)
    print(f"saved {save_path}")
    return save_path


if __name__ == "__main__":
    main()
