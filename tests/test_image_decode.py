"""image_decode: the skipped-image counter object, and layering (decoding imports no training module; data.py
imports no model or trainer module)."""

import logging
import os
import subprocess
import sys

import numpy as np
import tensorflow as tf

import image_decode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_MODULES = ("train", "GhostFaceNets", "backbones", "losses", "heads", "myCallbacks", "evals", "training_heads")


def test_skipped_images_counts_and_logs_in_and_out_of_the_graph(caplog):
    skipped = image_decode.SkippedImages()
    with caplog.at_level(logging.WARNING, logger="image_decode"):
        assert skipped.record([b"a.jpg", "b.png"]) == 2
        count = tf.function(skipped.record_in_graph)(tf.constant(["c.jpg"]))
    assert int(count) == 3 and skipped.count == 3 and skipped.files == {"a.jpg", "b.png", "c.jpg"}
    assert "a.jpg, b.png" in caplog.records[0].getMessage() and "c.jpg" in caplog.records[1].getMessage()


def test_tf_imread_decodes_to_float_values(tmp_path):
    image = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    tf.io.write_file(str(tmp_path / "a.png"), tf.io.encode_png(image))
    decoded = image_decode.tf_imread(str(tmp_path / "a.png"))
    assert decoded.dtype == tf.float32 and np.array_equal(decoded.numpy(), image)
    assert image_decode.tf_imread(str(tmp_path / "a.png"), (8, 12)).shape == (8, 12, 3)


def imported_modules(module):
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return set(result.stdout.split())


def test_decoding_and_data_know_no_model_or_trainer():
    decode_modules = imported_modules("image_decode")
    assert not decode_modules & {*TRAINING_MODULES, "augment", "datasets", "data"}
    assert not imported_modules("data") & set(TRAINING_MODULES)
