"""plot.py: PNG files are written and the plotted data are the history values and the schedulers' `lr_at`."""

import json

import numpy as np
import pytest

import atomic_io
import myCallbacks
import plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1000


def lines_by_label(ax):
    return {line.get_label(): line for line in ax.get_lines()}


def test_plot_lr_schedule_batch_level_data_equal_lr_at(tmp_path):
    scheduler = myCallbacks.CosineLrScheduler(0.01, 3, m_mul=0.5, lr_min=1e-5, warmup_steps=1)
    figure = plot.plot_lr_schedule(scheduler, epochs=12, steps_per_epoch=5, save_path=tmp_path / "lr.png")
    assert_png(tmp_path / "lr.png")
    (line,) = figure.axes[0].get_lines()
    positions = [(epoch, batch) for epoch in range(12) for batch in range(5)]
    np.testing.assert_allclose(line.get_xdata(), [epoch + batch / 5 for epoch, batch in positions])
    np.testing.assert_array_equal(line.get_ydata(), [scheduler.lr_at(epoch, batch) for epoch, batch in positions])
    assert line.get_ydata()[20] == 1e-5  # epoch 4 is the first cool-down (1 warm-up + 3)


def test_plot_lr_schedule_epoch_level(tmp_path):
    scheduler = myCallbacks.ConstantDecayScheduler(0.1, [2, 4], decay_rate=0.1)
    figure = plot.plot_lr_schedule(scheduler, epochs=6, steps_per_epoch=100, save_path=tmp_path / "lr.png")
    assert_png(tmp_path / "lr.png")
    (line,) = figure.axes[0].get_lines()
    np.testing.assert_array_equal(line.get_xdata(), np.arange(6))
    np.testing.assert_allclose(line.get_ydata(), [0.1, 0.1, 0.01, 0.01, 0.001, 0.001], rtol=1e-12)


def test_plot_history_overlays_runs_and_panels(tmp_path):
    run_a = {"lr": [0.1, 0.05, 0.01], "loss": [3.0, 2.0, 1.5], "accuracy": [0.1, 0.3, 0.5],
             "lfw": [0.8, 0.9, 0.95], "lfw_thresh": [0.3, 0.3, 0.25], "regular_loss": [0.2, 0.2, 0.2],
             "triplet_embedding_loss": [0.7, None]}  # a later-stage key (right-aligned) with a NaN epoch
    hist_file = tmp_path / "B_hist.json"
    hist_file.write_text(json.dumps({"lr": [0.2, 0.1], "loss": [4.0, 3.0], "lfw": [0.7, 0.8],
                                     "lfw_thresh": [0.4, 0.4]}))
    figure = plot.plot_history([run_a, str(hist_file)], save_path=tmp_path / "history.png")
    assert_png(tmp_path / "history.png")
    titles = [ax.get_title() for ax in figure.axes]
    assert titles == ["loss", "accuracy", "lfw", "lr"]
    loss_lines = lines_by_label(figure.axes[0])
    assert set(loss_lines) == {"run 0: loss", "run 0: triplet_embedding_loss", "B: loss"}
    np.testing.assert_array_equal(loss_lines["run 0: loss"].get_ydata(), [3.0, 2.0, 1.5])
    late = loss_lines["run 0: triplet_embedding_loss"]
    np.testing.assert_array_equal(late.get_xdata(), [1, 2])
    assert late.get_ydata()[0] == 0.7 and np.isnan(late.get_ydata()[1])
    lfw_lines = lines_by_label(figure.axes[2])
    np.testing.assert_array_equal(lfw_lines["B"].get_ydata(), [0.7, 0.8])
    np.testing.assert_array_equal(lfw_lines["run 0"].get_ydata(), [0.8, 0.9, 0.95])
    assert figure.axes[3].get_yscale() == "log"
    zoomed = plot.plot_history(run_a, names=["A"], save_path=None, skip_epochs=1)
    np.testing.assert_array_equal(lines_by_label(zoomed.axes[0])["A: loss"].get_xdata(), [1, 2])
    with pytest.raises(ValueError, match="names"):
        plot.plot_history([run_a], names=["a", "b"], save_path=None)
    broken = tmp_path / "broken_hist.json"
    broken.write_text('{"lr": [0.1,')
    with pytest.raises(ValueError, match=r"broken_hist\.json"):
        plot.plot_history(str(broken), save_path=None)


def test_plot_history_reads_a_my_history_file(tmp_path):
    history = myCallbacks.My_history(str(tmp_path / "X_hist.json"))
    history.history = {"lr": [0.1, 0.05], "loss": [2.0, 1.0], "accuracy": [0.2, 0.4]}
    atomic_io.write_json_atomic(history.initial_file, history.history)
    figure = plot.plot_history(history.initial_file, save_path=tmp_path / "h.png")
    assert_png(tmp_path / "h.png")
    np.testing.assert_array_equal(lines_by_label(figure.axes[2])["X"].get_ydata(), [0.1, 0.05])
