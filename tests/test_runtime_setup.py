"""runtime_setup: oneDNN is chosen before TensorFlow loads, and the user's own choice is kept."""

import os
import sys

import runtime_setup


def test_this_process_runs_the_kernels_the_variable_asks_for():
    """conftest imports runtime_setup before TensorFlow, so the variable set then is what TensorFlow read."""
    requested = os.environ.get(runtime_setup.ONEDNN_VARIABLE)
    assert requested is not None  # set by runtime_setup on x86-64, or by the user
    assert runtime_setup.onednn_enabled() == (requested == "1")


def test_configure_onednn_only_when_unset_and_before_tensorflow(monkeypatch):
    monkeypatch.setattr(runtime_setup.platform, "machine", lambda: "x86_64")
    monkeypatch.delenv(runtime_setup.ONEDNN_VARIABLE, raising=False)
    assert runtime_setup.configure_onednn() is False  # TensorFlow is already loaded in this process
    monkeypatch.delitem(sys.modules, "tensorflow")
    assert runtime_setup.configure_onednn() is True
    assert os.environ[runtime_setup.ONEDNN_VARIABLE] == "1"
    monkeypatch.setenv(runtime_setup.ONEDNN_VARIABLE, "0")
    assert runtime_setup.configure_onednn() is False and os.environ[runtime_setup.ONEDNN_VARIABLE] == "0"
    monkeypatch.delenv(runtime_setup.ONEDNN_VARIABLE)
    monkeypatch.setattr(runtime_setup.platform, "machine", lambda: "aarch64")
    assert runtime_setup.configure_onednn() is False
