"""Process-wide TensorFlow settings that only take effect when made before TensorFlow is first imported.

Every library module that imports TensorFlow or Keras imports this module first, so whichever of them a script or
notebook imports first applies the settings.

oneDNN CPU kernels. TensorFlow turns them on by default only on x86 CPUs with AVX-512 VNNI / BF16 or AMX; on plain
AVX2 CPUs they stay off, and training GhostFaceNetV1-1.3 on such a CPU is about 1.4x (strides 2) and 1.5x
(strides 1) faster with them (`bench/train_step.py`). This module turns them on for x86-64 machines unless
`TF_ENABLE_ONEDNN_OPTS` is already set; set it to `0` to keep TensorFlow's own choice. oneDNN changes float32
results only by round-off (a different summation order). GPU kernels are not affected.
"""

import os
import platform
import sys

ONEDNN_VARIABLE = "TF_ENABLE_ONEDNN_OPTS"
X86_64_MACHINES = ("x86_64", "amd64")


def tensorflow_imported():
    """True when TensorFlow is already loaded in this process (then import-time settings can no longer change)."""
    return "tensorflow" in sys.modules


def configure_onednn():
    """Set `TF_ENABLE_ONEDNN_OPTS=1` on x86-64 when the user has not chosen and TensorFlow is not loaded yet.

    Returns True when this call set the variable.
    """
    if tensorflow_imported() or ONEDNN_VARIABLE in os.environ:
        return False
    if platform.machine().lower() not in X86_64_MACHINES:
        return False
    os.environ[ONEDNN_VARIABLE] = "1"
    return True


def onednn_missed():
    """True when TensorFlow was imported before this module on x86-64 with the oneDNN choice left to TensorFlow.

    Then this process runs TensorFlow's default kernels; on AVX2-only CPUs that is the slower set. Import a library
    module (or set `TF_ENABLE_ONEDNN_OPTS=1`) before `keras` / `tensorflow` to get the faster one.
    """
    return MISSED_BEFORE_IMPORT


def onednn_enabled():
    """Whether this process runs TensorFlow's oneDNN CPU kernels (imports TensorFlow)."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


MISSED_BEFORE_IMPORT = (
    tensorflow_imported() and ONEDNN_VARIABLE not in os.environ and platform.machine().lower() in X86_64_MACHINES
)
configure_onednn()
