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
    import keras_compat  # imported here: this module must load before TensorFlow, keras_compat loads it

    return keras_compat.onednn_enabled()


def accelerator_visible():
    """Whether TensorFlow sees a GPU (imports TensorFlow)."""
    import tensorflow as tf  # imported here: this module must load before TensorFlow

    return bool(tf.config.list_physical_devices("GPU"))


def seed_everything(seed, op_determinism="auto"):
    """Make a run repeatable: seed Python, NumPy, TensorFlow and Keras with the int `seed`
    (`keras.utils.set_random_seed`) and, with `op_determinism` True (or "auto" on a machine with a GPU), turn on
    TensorFlow's op determinism (`tf.config.experimental.enable_op_determinism`, for the rest of the process).

    The data pipelines draw every augmentation from stateless ops seeded by their `seed` (module `seeds`), so
    they repeat without op determinism. On CPUs the training step repeats too (two `python train.py --seed 0`
    runs print the same losses); GPU kernels such as cuDNN's convolution gradients are only deterministic with op
    determinism, which costs training speed there (TensorFlow picks slower deterministic kernels). The input
    pipeline holds no stateful op, so tf.data still runs it in parallel under op determinism, in order; measured
    with `bench/data_pipeline.py --seed 0 [--op_determinism]` on a shared 2-core CPU, random_status 0 gave 0.86
    of raw decoding speed without and 0.72 with op determinism (noisy figures). The partial-FC and triplet batch
    orders, made by a Python generator, run serially under it. Returns whether op determinism was turned on.
    """
    import keras  # imported here: this module must load before TensorFlow

    keras.utils.set_random_seed(seed)
    if op_determinism == "auto":
        op_determinism = accelerator_visible()
    if op_determinism:
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
    return bool(op_determinism)


MISSED_BEFORE_IMPORT = (
    tensorflow_imported() and ONEDNN_VARIABLE not in os.environ and platform.machine().lower() in X86_64_MACHINES
)
configure_onednn()
