"""Plots of training histories (`<stem>_hist.json` files written by `myCallbacks.My_history`) and LR schedules.

Figures are built with matplotlib's object API on the Agg canvas (no display needed), saved as PNG (atomically,
`atomic_io.save_figure_atomic`) and returned.
The x axis is the 0-based epoch. A history key shorter than `lr` (one that started in a later training stage)
is drawn over the latest epochs, as `My_history` records it.
"""

import json
import os

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from atomic_io import save_figure_atomic


def load_history(hist_file_or_dict):
    """The dict of lists of one history: a `_hist.json` path, or a dict already loaded."""
    if isinstance(hist_file_or_dict, dict):
        return hist_file_or_dict
    try:
        with open(hist_file_or_dict) as ff:
            history = json.load(ff)
    except json.JSONDecodeError as error:
        raise ValueError(f"{hist_file_or_dict}: not a valid JSON history file ({error})") from error
    if not isinstance(history, dict):
        raise ValueError(f"{hist_file_or_dict}: a _hist.json file must hold a JSON object of lists")
    return history


def history_name(hist_file_or_dict, index):
    """Legend name of a history: the file stem without `_hist`, or `run <index>` for a dict."""
    if isinstance(hist_file_or_dict, dict):
        return f"run {index}"
    stem = os.path.splitext(os.path.basename(os.fspath(hist_file_or_dict)))[0]
    return stem.removesuffix("_hist")


def aligned_series(history, key):
    """(epochs, values) of `history[key]`, right-aligned to the length of `lr`; null values become NaN."""
    values = np.array([np.nan if vv is None else vv for vv in history[key]], dtype=float)
    total = max(len(history.get("lr", [])), len(values))
    return np.arange(total - len(values), total), values


def eval_keys(history):
    """The evaluation keys of a history: those with a `<key>_thresh` companion (e.g. `lfw`, `cfp_fp`)."""
    return [key for key in history if key + "_thresh" in history]


def history_panels(histories):
    """Panel title → list of history keys to draw in it: loss, accuracy, one per eval bin, lr."""
    all_keys = list(dict.fromkeys(key for history in histories for key in history))
    evals = list(dict.fromkeys(key for history in histories for key in eval_keys(history)))
    loss_keys = [kk for kk in all_keys if kk == "loss" or (kk.endswith("_loss") and kk != "regular_loss")]
    accuracy_keys = [kk for kk in all_keys if "accuracy" in kk]
    panels = {"loss": loss_keys, "accuracy": accuracy_keys}
    panels.update({key: [key] for key in evals})
    panels["lr"] = ["lr"]
    return {title: keys for title, keys in panels.items() if keys}


def new_figure(num_panels, figsize=None):
    """A Figure on an Agg canvas with `num_panels` axes in rows of at most 3."""
    columns = min(num_panels, 3)
    rows = int(np.ceil(num_panels / columns))
    figure = Figure(figsize=figsize or (5 * columns, 4 * rows))
    FigureCanvasAgg(figure)
    axes = [figure.add_subplot(rows, columns, ii + 1) for ii in range(num_panels)]
    return figure, axes


def plot_history(hist_files_or_dicts, names=None, save_path="history.png", skip_epochs=0, figsize=None):
    """Plot one or several training histories overlaid, one panel per quantity, and save a PNG.

    Args:
        hist_files_or_dicts: a `_hist.json` path or history dict, or a list of them.
        names: legend names, one per history (default: the file stems, or `run i`).
        save_path: PNG file to write (None: do not save).
        skip_epochs: leave out the first epochs (x values below it), to zoom past a large initial loss.
        figsize: matplotlib figure size in inches (default 5 x 4 per panel).

    Panels: `loss` (`loss` solid, per-output `*_loss` dashed), `accuracy` (every key containing "accuracy"), one
    per eval bin (`lfw`, `cfp_fp`, ...: keys with a `_thresh` companion), and `lr` (log scale). Returns the Figure.
    """
    sources = hist_files_or_dicts if isinstance(hist_files_or_dicts, list | tuple) else [hist_files_or_dicts]
    histories = [load_history(source) for source in sources]
    names = names or [history_name(source, ii) for ii, source in enumerate(sources)]
    if len(names) != len(histories):
        raise ValueError(f"got {len(names)} names for {len(histories)} histories")
    panels = history_panels(histories)
    figure, axes = new_figure(len(panels), figsize)
    for ax, (title, keys) in zip(axes, panels.items(), strict=True):
        for name, history in zip(names, histories, strict=True):
            for key in keys:
                if key not in history:
                    continue
                epochs, values = aligned_series(history, key)
                keep = epochs >= skip_epochs
                label = name if len(keys) == 1 else f"{name}: {key}"
                style = "--" if title == "loss" and key != "loss" else "-"
                ax.plot(epochs[keep], values[keep], style, label=label)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if title == "lr":
            ax.set_yscale("log")
        ax.grid(True)
        ax.legend(fontsize="small")
    figure.tight_layout()
    if save_path:
        save_figure_atomic(figure, save_path)
    return figure


def plot_lr_schedule(scheduler, epochs, steps_per_epoch=1, save_path="lr_schedule.png", figsize=(10, 4)):
    """Plot `scheduler.lr_at(epoch, batch)` for `epochs` epochs and save a PNG; returns the Figure.

    Batch-level schedulers (`is_on_batch`) are sampled at every batch: an unbuilt one is built with
    `steps_per_epoch`, a built one keeps its own `steps_per_epoch`. Epoch-level ones are sampled once per epoch.
    The x value of batch `b` in epoch `e` is `e + b / steps_per_epoch`.
    """
    on_batch = getattr(scheduler, "is_on_batch", False)
    if on_batch and not scheduler.is_built:
        scheduler.build(steps_per_epoch)
    steps = scheduler.steps_per_epoch if on_batch else 1
    positions = [(epoch, batch) for epoch in range(epochs) for batch in range(steps)]
    xs = np.array([epoch + batch / steps for epoch, batch in positions])
    lrs = np.array([scheduler.lr_at(epoch, batch) for epoch, batch in positions])
    figure, (ax,) = new_figure(1, figsize)
    ax.plot(xs, lrs, label=type(scheduler).__name__)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    ax.set_yscale("log")
    ax.grid(True)
    ax.legend()
    figure.tight_layout()
    if save_path:
        save_figure_atomic(figure, save_path)
    return figure
