"""Runs that own their names and survive faults (issue 17, training side): a new run refuses an existing run's
files unless told (`--resume`, `--overwrite`, `overwrite=True`); `--resume` stops on options that differ from the
checkpoint's (and on a changed class count) unless accepted; stale temporary files of a killed run are removed; a
truncated newest checkpoint falls back to the previous epoch; braces in names are literal; a NaN-stopped CLI run
reports the stop; a skipped evaluation is recorded as null.

Tiny models (`test_train.tiny_basic_model`, 32x32) on six synthetic identities, one or two epochs of 3 steps.
"""

import json
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from test_train import BATCH, STEPS_PER_EPOCH, data_dirs, make_train, sgd, tiny_basic_model  # noqa: F401

import losses
import train


def arcface_schedule(epochs):
    return [{"loss": losses.ArcfaceLoss(scale=16), "epoch": epochs, "optimizer": sgd()}]


def write_run_files(folder, stem="tiny"):
    """Files of an older run named `stem` in `folder`: an epoch checkpoint (not loadable) and a history."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}_epoch04.keras").write_bytes(b"an older run")
    (folder / f"{stem}_hist.json").write_text(json.dumps({"lr": [0.1] * 4}))


# ----------------------------------------------------------------------------------------------------------------
# Item 2: runs own their names


def test_a_new_run_refuses_the_files_of_an_older_run_of_that_name(tmp_path, data_dirs):  # noqa: F811
    """Before any training: a clear error naming the files and the ways out; nothing is written."""
    write_run_files(tmp_path / "checkpoints")
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    with pytest.raises(train.RunExistsError, match=r"tiny_epoch04\.keras") as error:
        tt.train(arcface_schedule(1))
    assert "tiny_hist.json" in str(error.value) and "overwrite=True" in str(error.value)
    assert "--resume" in str(error.value) and "--overwrite" in str(error.value)
    assert tt.model is None
    with pytest.raises(train.RunExistsError):  # asking again does not make it the run's name
        tt.train(arcface_schedule(1))
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["tiny_epoch04.keras",
                                                                                "tiny_hist.json"]
    assert json.loads((tmp_path / "checkpoints" / "tiny_hist.json").read_text()) == {"lr": [0.1] * 4}


def test_overwrite_replaces_the_older_run(tmp_path, data_dirs):  # noqa: F811
    """`overwrite=True`: the older run's files are removed (a later resume cannot pick its epoch 4) and the new
    run's history starts empty."""
    write_run_files(tmp_path / "checkpoints")
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model(), overwrite=True)
    assert tt.train(arcface_schedule(1)) == 1
    folder = tmp_path / "checkpoints"
    assert not (folder / "tiny_epoch04.keras").exists() and (folder / "tiny_epoch01.keras").exists()
    assert len(json.loads((folder / "tiny_hist.json").read_text())["lr"]) == 1
    assert tt.last_checkpoint()[0] == 1
    # The same Train goes on with its own run; another save name in the folder is not touched.
    write_run_files(folder, "other")
    assert tt.train([{"loss": losses.ArcfaceLoss(scale=16), "epoch": 1}], initial_epoch=1) == 2
    assert (folder / "other_epoch04.keras").exists()


def tiny_cli(monkeypatch):
    """Make `train.run` build the tiny model (at `--input_size`) with an ArcFace schedule of `--epochs`."""

    def basic_model(args):
        keras.utils.set_random_seed(0)
        inputs = keras.Input((args.input_size, args.input_size, 3))
        features = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(8, 3, strides=2)(inputs))
        return keras.Model(inputs, keras.layers.Dense(16, name="embedding")(features), name="tiny")

    monkeypatch.setattr(train, "build_basic_model", basic_model)


def cli_arguments(data_dirs, tmp_path, *extra):  # noqa: F811
    return ["--data_path", data_dirs[0], "--epochs", "1", "--batch_size", str(BATCH), "--input_size", "32",
            "--random_status", "-1", "--checkpoint_dir", str(tmp_path / "checkpoints"), "--save_path", "c.h5",
            "--lr_base", "0.01", *extra]


def test_command_line_refuses_a_second_run_of_the_same_name(tmp_path, data_dirs, monkeypatch, capsys):  # noqa: F811
    """`python train.py` over an existing run exits 2 and says how to resume or overwrite, without training."""
    write_run_files(tmp_path / "checkpoints", "c")
    tiny_cli(monkeypatch)
    monkeypatch.setattr(train.Train, "train", lambda *args, **kwargs: pytest.fail("trained"))
    assert train.command_line(cli_arguments(data_dirs, tmp_path)) == 2
    output = capsys.readouterr().out
    assert "c_epoch04.keras" in output and "--resume" in output and "--overwrite" in output


# ----------------------------------------------------------------------------------------------------------------
# Item 5: --resume checks the checkpoint against the command


def test_resume_stops_on_options_that_differ_from_the_checkpoint(tmp_path, data_dirs, monkeypatch, capsys):  # noqa: F811
    """After a 1-epoch run, `--resume` with another optimizer and input size stops with a table (option,
    checkpoint value, command value) instead of a Keras shape error; `--accept_checkpoint_options` continues with
    the checkpoint's; a class-count change needs `--rebuild_head`."""
    tiny_cli(monkeypatch)
    assert train.command_line(cli_arguments(data_dirs, tmp_path)) == 0
    capsys.readouterr()
    changed = cli_arguments(data_dirs, tmp_path, "--resume", "--epochs", "2", "--optimizer", "adam")
    changed[changed.index("--input_size") + 1] = "48"
    assert train.command_line(changed) == 2
    output = capsys.readouterr().out
    assert "| optimizer | sgd | adam |" in output and "| input_size | 32 | 48 |" in output
    assert "--accept_checkpoint_options" in output
    assert train.last_epoch_checkpoint(str(tmp_path / "checkpoints"), "c")[0] == 1

    assert train.command_line([*changed, "--accept_checkpoint_options"]) == 0
    assert train.last_epoch_checkpoint(str(tmp_path / "checkpoints"), "c")[0] == 2
    capsys.readouterr()
    four_classes = cli_arguments(data_dirs, tmp_path, "--resume", "--epochs", "3")
    four_classes[1] = data_dirs[1]
    assert train.command_line(four_classes) == 2
    output = capsys.readouterr().out
    assert "| classes | 6 | 4 |" in output and "--rebuild_head" in output
    assert train.command_line([*four_classes, "--rebuild_head"]) == 0
    assert train.last_epoch_checkpoint(str(tmp_path / "checkpoints"), "c")[0] == 3


def test_resume_through_the_python_api_checks_the_class_count(tmp_path, data_dirs):  # noqa: F811
    """`Train.resume` with a four-class dataset after a six-class run: an error, or a rebuilt head when asked."""
    make_train(tmp_path, data_dirs[0], tiny_basic_model()).train(arcface_schedule(1))
    with pytest.raises(train.CheckpointMismatchError, match="rebuild_head=True"):
        make_train(tmp_path, data_dirs[1], tiny_basic_model()).resume(arcface_schedule(2))
    resumed = make_train(tmp_path, data_dirs[1], tiny_basic_model())
    assert resumed.resume(arcface_schedule(2), rebuild_head=True) == 2
    assert [layer.units for layer in resumed.model.layers if layer.name == "arcface"] == [4]


# ----------------------------------------------------------------------------------------------------------------
# Item 6: stale temporary files, truncated newest checkpoint


def finished_process_id():
    """The id of a process that has exited (so no running process owns it)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_temporary_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path, data_dirs):  # noqa: F811
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    stale = [folder / f".tiny_epoch03.tmp-{finished_process_id()}.keras",
             folder / f".tiny_hist.tmp-{finished_process_id()}.json"]
    for path in stale:
        path.write_bytes(b"partial")
    live = folder / f".tiny_epoch03.tmp-{os.getpid()}.keras"
    live.write_bytes(b"being written")
    make_train(tmp_path, data_dirs[0], tiny_basic_model())
    assert not any(path.exists() for path in stale) and live.exists()


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_epoch(tmp_path, data_dirs, caplog):  # noqa: F811
    keras.utils.set_random_seed(0)
    make_train(tmp_path, data_dirs[0], tiny_basic_model()).train(arcface_schedule(2))
    newest = tmp_path / "checkpoints" / "tiny_epoch02.keras"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])
    resumed = make_train(tmp_path, data_dirs[0], tiny_basic_model())
    with caplog.at_level(logging.WARNING, logger="train"):
        assert resumed.resume(arcface_schedule(3)) == 3
    assert int(resumed.model.optimizer.iterations) == 3 * STEPS_PER_EPOCH
    warning = " ".join(record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING)
    assert "tiny_epoch02.keras" in warning and "tiny_epoch01.keras" in warning
    assert len(json.loads((tmp_path / "checkpoints" / "tiny_hist.json").read_text())["lr"]) == 3


# ----------------------------------------------------------------------------------------------------------------
# Item 8: braces in names


@pytest.mark.parametrize(("folder", "save_path"), [("ckpt{1}", "run{loss}.h5"), ("ckpt{loss}", "run{1}.h5")])
def test_braces_in_the_folder_and_save_name_are_literal(tmp_path, data_dirs, folder, save_path):  # noqa: F811
    keras.utils.set_random_seed(0)
    tt = make_train(tmp_path, data_dirs[0], tiny_basic_model(), save_path=save_path,
                    checkpoint_dir=tmp_path / folder)
    assert tt.train(arcface_schedule(1)) == 1
    stem = save_path[:-3]
    assert (tmp_path / folder / f"{stem}_epoch01.keras").is_file() and (tmp_path / folder / f"{stem}.keras").is_file()
    assert folder in os.listdir(tmp_path) and set(os.listdir(tmp_path)) <= {"cache", folder}
    assert tt.last_checkpoint() == (1, str(tmp_path / folder / f"{stem}_epoch01.keras"))


# ----------------------------------------------------------------------------------------------------------------
# Item 10: a NaN-stopped command line, skipped evaluations


def test_a_nan_stopped_command_line_run_reports_the_stop(tmp_path, data_dirs, monkeypatch, capsys):  # noqa: F811
    """A model whose embeddings are NaN: the verification accuracies are NaN (no KeyError), the run exits 1 saying
    a NaN loss stopped it, and `_hist.json` records the skipped evaluation as null."""

    def nan_model(args):
        model = tiny_basic_model()
        model.set_weights([np.full_like(weight, np.nan) for weight in model.get_weights()])
        return model

    monkeypatch.setattr(train, "build_basic_model", nan_model)
    argv = [*cli_arguments(data_dirs, tmp_path), "--eval_paths", data_dirs[2]]
    assert train.command_line(argv) == 1
    assert "Training failed: a NaN loss stopped training" in capsys.readouterr().out
    history = json.loads((tmp_path / "checkpoints" / "c_hist.json").read_text())
    assert history["val"] == [None] and history["val_thresh"] == [None]
