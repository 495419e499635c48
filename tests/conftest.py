"""Shared test settings: quiet TensorFlow, the TF backend, the library's TensorFlow settings (`runtime_setup`,
applied before any test module imports TensorFlow), and the location of the optional shared/ folder."""

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))
import runtime_setup  # noqa: E402, F401

SHARED_DIR = Path(os.environ.get("GHOSTFACENETS_SHARED", REPO_ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared_dir():
    """The project's shared/ folder (reference files made with the original code); skip when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(f"shared reference folder not found at {SHARED_DIR} (set GHOSTFACENETS_SHARED); "
                    "a user's clone has none")
    return SHARED_DIR


def build_tiny_embedding_model(size=112, embedding_size=128, pool=8, seed=0, use_bias=False, name="tiny"):
    """The shared tiny embedding model: (size, size, 3) → `pool`x`pool` average pooling → flatten → Dense named
    `embedding` (seeded normal kernel). Linear, so tests can compute its embeddings independently in NumPy."""
    import keras

    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.Flatten()(keras.layers.AveragePooling2D(pool)(inputs))
    outputs = keras.layers.Dense(embedding_size, use_bias=use_bias, name="embedding",
                                 kernel_initializer=keras.initializers.RandomNormal(seed=seed))(pooled)
    return keras.Model(inputs, outputs, name=name)


@pytest.fixture
def tiny_embedding_model():
    """Factory fixture returning `build_tiny_embedding_model` (call it with the sizes a test needs)."""
    return build_tiny_embedding_model


TWO_LOGICAL_CPUS_PREAMBLE = """
import json, os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
import numpy as np
import tensorflow as tf
tf.config.set_logical_device_configuration(
    tf.config.list_physical_devices("CPU")[0], [tf.config.LogicalDeviceConfiguration()] * 2
)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
"""


def run_on_two_logical_cpus(body, *args, cwd=None, timeout=600):
    """Run the script `body` in a new Python process whose TensorFlow sees two logical CPUs (the device split must
    precede TensorFlow's start, hence a fresh interpreter).

    A preamble puts the repository and tests/ on `sys.path`, imports `json`, `os`, `sys`, `np` and `tf`, and defines
    `strategy`, a MirroredStrategy over both CPUs; `args` follow the repository root in `sys.argv`. `body` prints its
    result as one line `RESULT<json>`. Returns `(result, stdout)`; fails the test with the end of stderr when the
    process printed no result.
    """
    import subprocess
    import textwrap

    script = TWO_LOGICAL_CPUS_PREAMBLE + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", script, str(REPO_ROOT), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)
    results = [line[len("RESULT"):] for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if not results:
        pytest.fail(f"the two-CPU script printed no result (exit status {done.returncode}):\n{done.stderr[-3000:]}")
    import json

    return json.loads(results[-1]), done.stdout
