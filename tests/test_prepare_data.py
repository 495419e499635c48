"""prepare_data.py command line: -D (RecordIO to folders, resumable, --limit) and --synthetic."""

import os

import numpy as np
import pytest
from test_recordio import fake_jpeg, write_insightface_rec

import data
import prepare_data


def test_cli_converts_with_limit_then_resumes(tmp_path, capsys):
    write_insightface_rec(tmp_path, [(float(i % 3), fake_jpeg(i)) for i in range(9)])
    (tmp_path / "property").write_text("3,112,112")
    out = tmp_path / "folders"
    prepare_data.main(["-D", str(tmp_path), "-S", str(out), "--limit", "4"])
    assert "3 classes" in capsys.readouterr().out
    assert sum(len(files) for _, _, files in os.walk(out)) == 4
    prepare_data.main(["-D", str(tmp_path), "-S", str(out)])
    assert "5 written, 4 already present" in capsys.readouterr().out
    assert sorted(os.listdir(out)) == ["0", "1", "2"]


def test_cli_requires_a_source():
    with pytest.raises(SystemExit):
        prepare_data.parse_arguments([])


@pytest.mark.slow
def test_cli_synthetic_demo_feeds_the_pipeline(tmp_path):
    demo = tmp_path / "demo"
    prepare_data.main(
        [
            "--synthetic",
            str(demo),
            "--train_ids",
            "8",
            "--images_per_id",
            "4",
            "--test_ids",
            "5",
            "--pairs",
            "10",
            "--workers",
            "1",
        ]
    )
    ds, steps = data.prepare_dataset(demo / "train", batch_size=16, random_status=2, cache_dir=tmp_path)
    images, labels = next(iter(ds))
    assert steps == 2 and images.shape == (16, 112, 112, 3) and labels.shape == (16, 8)
    bins, issame = data.load_bin(demo / "val.bin")
    assert len(bins) == 40 and len(issame) == 20 and np.abs(images.numpy()).max() <= 1
