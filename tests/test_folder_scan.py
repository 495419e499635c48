"""folder_scan: the scan cache is written atomically, a corrupt cache is rebuilt with a warning naming it, a corrupt
image-list .npz gives an error naming it; NumPy only (no TensorFlow import)."""

import logging
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

import folder_scan


@pytest.fixture
def small_folder(tmp_path):
    root = tmp_path / "faces"
    for name in ("1", "2", "10"):
        os.makedirs(root / name)
        for k in range(2):
            cv2.imwrite(str(root / name / f"{k}.png"), np.full((8, 8, 3), k, np.uint8))
    return root


def test_cache_is_written_atomically_and_a_corrupt_one_is_rebuilt(small_folder, tmp_path, caplog):
    cache_dir = tmp_path / "cache"
    names, classes, _, count, cache_path = folder_scan.pre_process_folder(small_folder, cache_dir=cache_dir)
    assert count == 3 and classes.tolist() == [0, 0, 1, 1, 2, 2]
    assert os.listdir(cache_dir) == [os.path.basename(cache_path)]  # no temporary file left behind
    with open(cache_path, "r+b") as file:
        file.truncate(os.path.getsize(cache_path) // 2)
    with caplog.at_level(logging.WARNING, logger="folder_scan"):
        again = folder_scan.pre_process_folder(small_folder, cache_dir=cache_dir)
    assert again[0].tolist() == names.tolist() and again[1].tolist() == classes.tolist()
    assert any(cache_path in record.getMessage() for record in caplog.records)
    assert folder_scan.read_scan_cache(cache_path, folder_scan.folder_fingerprint(small_folder)) is not None


def test_unreadable_image_list_npz_names_the_file(tmp_path):
    broken = tmp_path / "list.npz"
    broken.write_bytes(b"PK\x03\x04 not really a zip file")
    with pytest.raises(ValueError, match=r"list\.npz: not a readable image-list \.npz"):
        folder_scan.pre_process_folder(broken)
    np.savez(tmp_path / "keys.npz", image_names=np.array(["a.jpg"]))
    with pytest.raises(ValueError, match=r"keys\.npz.*image_classes"):
        folder_scan.load_image_list_npz(tmp_path / "keys.npz")


def test_scanning_imports_no_tensorflow():
    code = "import sys, folder_scan; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert result.stdout.strip() == "False"


def test_hidden_temporary_files_in_class_folders_are_not_images(small_folder, tmp_path):
    (small_folder / "2" / ".0.tmp-12345.jpg").write_bytes(b"partial")  # what a killed atomic write leaves
    names, _, _, count, _ = folder_scan.pre_process_folder(small_folder, cache_dir=tmp_path / "cache")
    assert count == 3 and len(names) == 6
    assert not any(os.path.basename(name).startswith(".") for name in names)
