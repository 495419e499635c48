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
