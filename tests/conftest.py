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
