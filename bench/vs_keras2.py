"""Benchmark: training speed of `train.Train` against the original's way of training, tf-keras 2.21 + kecam, same run.

    python bench/vs_keras2.py [--models V1-1.3-2 V1-1.3-1 V2-1.3-1] [--steps 8] [--warmup 2] [--rounds 3]
        [--batch_size 64] [--baseline_python /work/venv-keras2/bin/python] [--baseline_onednn 1]

Two sides train the same GhostFaceNet (width 1.3, stem stride 1 or 2; PReLU, GDC head, emb 512, BN momentum 0.9 /
eps 1e-5, L2 5e-4 applied as L2(2.5e-4) on conv, depthwise and dense kernels), a NormDense head of 1,000 classes,
the ArcFace loss (margin 0.5, scale 64), SGD(0.1, momentum 0.9) and the "accuracy" metric, batch 64, 112x112x3:

- baseline: the side environment of bench/README.md (TensorFlow 2.21 with tf-keras 2.21, `TF_USE_LEGACY_KERAS=1`):
  the backbone from keras-cv-attention-models' `GhostNetV2` builder (V1: `num_ghost_module_v1_stacks=-1`, last
  expansion 512 and a 664-channel output conv, as GhostFaceNetV1, with the same parameter count; kecam pads k x k
  convs symmetrically and gates SE with PyTorch's hard sigmoid, where the original's own V1 used "same" padding
  and Keras 2's hard sigmoid; V2: the original's settings), the GDC head,
  NormDense and ArcFace written here with tf-keras from the published formulas, `model.compile` + `model.fit` on
  in-memory random tensors;
- library: `train.Train` with its defaults on a class-per-folder dataset of random JPEGs (one per class), reading
  it through its own `tf.data` pipeline.

Each side runs in its own process, the sides alternate over `--rounds` (the order flips every round). A callback
records the wall time of every batch; a process prints JSON with images/s over `--steps` batches after `--warmup`
batches, and the seconds from the call that starts training (`model.fit` for the baseline, `Train.train` for the
library) to the end of the first batch. The parent prints both per side and model, and the ratios library /
baseline: best / best and the median of the per-round ratios.

oneDNN: TensorFlow turns its oneDNN CPU kernels on by itself only on CPUs with AVX-512 VNNI / BF16 or AMX; the
library turns them on everywhere on x86-64 (`runtime_setup.py`). `--baseline_onednn 1` (default) gives the baseline
the same kernels, so the comparison is of the training code, not of the kernel library; `--baseline_onednn default`
leaves TensorFlow's own choice. Each process reports whether it ran oneDNN.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

CLASSES = 1000
IMAGE_SHAPE = (112, 112, 3)
EMBEDDING = 512
WEIGHT_DECAY = 5e-4
LEARNING_RATE = 0.1
ARC_MARGIN, ARC_SCALE = 0.5, 64.0
DEFAULT_MODELS = ("V1-1.3-2", "V1-1.3-1", "V2-1.3-1")
DEFAULT_BASELINE_PYTHON = "/work/venv-keras2/bin/python"
# GhostFaceNetV1's bottleneck expansions (before width scaling): GhostNet's, with 512 for the last one.
V1_EXPANSIONS = [16, 48, 72, 72, 120, 240, 200, 184, 184, 480, 672, 672, 960, 960, 960, 512]


def parse_model(name):
    """`"V1-1.3-2"` -> ("V1", 1.3, 2): GhostFaceNet version, width and stem stride."""
    version, width, strides = name.split("-")
    return version.upper(), float(width), int(strides)


def make_divisible(value, divisor=4):
    """GhostNet's channel rounding: the nearest multiple of `divisor`, one more step when that loses over 10 %."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


# ----------------------------------------------------------------------------------------------------------------
# Timing (both sides; `keras` is tf_keras on the baseline side, Keras 3 on the library side)


def batch_timer(keras, warmup, steps, stop_after):
    """A callback recording `on_train_begin` and every batch's begin / end time (perf_counter seconds); with
    `stop_after`, it stops training after `warmup + steps` batches."""

    class BatchTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.train_begin, self.begins, self.ends = None, [], []

        def on_train_begin(self, logs=None):
            self.train_begin = time.perf_counter()

        def on_train_batch_begin(self, batch, logs=None):
            self.begins.append(time.perf_counter())

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())
            if stop_after and len(self.ends) >= warmup + steps:
                self.model.stop_training = True

    return BatchTimer()


def timing_report(timer, call_time, batch_size, warmup):
    """The figures of one run: images/s over the batches after `warmup` (from batch ends, so the hand-off between
    steps counts), the mean busy time of those batches (begin to end), and the seconds to the first batch's end."""
    ends, begins = timer.ends[warmup - 1 :], timer.begins[warmup:]
    steps = len(ends) - 1
    busy = [end - begin for begin, end in zip(begins, timer.ends[warmup:], strict=True)]
    return {
        "images_per_second": steps * batch_size / (ends[-1] - ends[0]),
        "step_busy_seconds": statistics.mean(busy),
        "timed_steps": steps,
        "first_step_seconds": timer.ends[0] - call_time,
        "fit_begin_to_first_step_seconds": timer.ends[0] - timer.train_begin,
    }


def random_batches(batch_size, steps, warmup):
    """In-memory random images in [-1, 1] (N, 112, 112, 3) float32 and one-hot labels (N, 1000) for the steps."""
    import numpy as np

    count = batch_size * (steps + warmup)
    generator = np.random.default_rng(0)
    images = generator.uniform(-1, 1, (count, *IMAGE_SHAPE)).astype("float32")
    labels = np.eye(CLASSES, dtype="float32")[np.arange(count) % CLASSES]
    return images, labels


# ----------------------------------------------------------------------------------------------------------------
# Baseline side: tf-keras 2.21 + keras-cv-attention-models, written from the published settings


def baseline_backbone(version, width, strides):
    """kecam's GhostNet builder at `width` / stem `strides`, PReLU, 112x112 input, no classifier."""
    from keras_cv_attention_models.ghostnet import ghostnet_v2

    common = dict(stem_width=16, stem_strides=strides, width_mul=width, input_shape=IMAGE_SHAPE, num_classes=0,
                  activation="prelu", pretrained=None)
    if version == "V2":
        return ghostnet_v2.GhostNetV2(num_ghost_module_v1_stacks=2, **common)
    return ghostnet_v2.GhostNetV2(first_ghost_channels=V1_EXPANSIONS, num_ghost_module_v1_stacks=-1,
                                  output_conv_filter=make_divisible(512 * width), **common)


def baseline_gdc_head(keras, features, use_bias):
    """GDC head: depthwise conv over the whole map -> BN -> 1x1 conv to 512 -> flatten -> BN -> float32 output."""
    layers = keras.layers
    nn = layers.DepthwiseConv2D(features.shape[1:3], use_bias=False, name="GDC_dw")(features)
    nn = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="GDC_batchnorm")(nn)
    nn = layers.Conv2D(EMBEDDING, 1, use_bias=use_bias, kernel_initializer="glorot_normal", name="GDC_conv")(nn)
    nn = layers.Flatten(name="GDC_flatten")(nn)
    nn = layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name="pre_embedding")(nn)
    return layers.Activation("linear", dtype="float32", name="embedding")(nn)


def add_kernel_l2(keras, model, weight_decay):
    """L2(weight_decay / 2) on every conv, depthwise and dense kernel, registered as tf-keras registers a
    `kernel_regularizer` (a callable loss per variable, summed into the training loss)."""
    import functools

    regularizer = keras.regularizers.L2(weight_decay / 2)
    for layer in model.layers:
        kernel = getattr(layer, "depthwise_kernel", None)
        kernel = getattr(layer, "kernel", None) if kernel is None else kernel
        if kernel is not None:
            layer.add_loss(functools.partial(regularizer, kernel))


def baseline_norm_dense(keras, tf):
    """The NormDense layer class: cosine logits l2n(x, axis 1) . l2n(W, axis 0), W (emb, classes) glorot_normal."""

    class NormDense(keras.layers.Layer):
        def __init__(self, units, **kwargs):
            super().__init__(**kwargs)
            self.units = units

        def build(self, input_shape):
            self.w = self.add_weight(name="norm_dense_w", shape=(input_shape[-1], self.units),
                                     initializer="glorot_normal", trainable=True)

        def call(self, inputs):
            weights = tf.nn.l2_normalize(self.w, axis=0, epsilon=1e-5)
            return tf.matmul(tf.nn.l2_normalize(inputs, axis=1, epsilon=1e-5), weights)

    return NormDense


def baseline_arcface(keras, tf):
    """The ArcFace loss from its formula: target logit cos(theta + m) (below cos(pi - m): -2 - cos(theta + m)),
    all logits times s, softmax cross-entropy against the one-hot labels."""
    import math

    threshold = math.cos(math.pi - ARC_MARGIN)

    class ArcFace(keras.losses.Loss):
        def call(self, y_true, y_pred):
            target_cos = tf.reduce_sum(y_true * y_pred, axis=-1, keepdims=True)
            margin_cos = tf.cos(tf.acos(target_cos) + ARC_MARGIN)
            target = tf.where(target_cos > threshold, margin_cos, -2.0 - margin_cos)
            logits = tf.where(tf.cast(y_true, tf.bool), target, y_pred) * ARC_SCALE
            return keras.losses.categorical_crossentropy(y_true, logits, from_logits=True)

    return ArcFace()


def baseline_model(version, width, strides):
    """The compiled tf-keras training model (backbone, GDC head, L2, NormDense, ArcFace, SGD, accuracy)."""
    import tensorflow as tf
    from tensorflow import keras

    keras.utils.set_random_seed(0)
    backbone = baseline_backbone(version, width, strides)
    embedding = baseline_gdc_head(keras, backbone.output, use_bias=version == "V1")
    basic_model = keras.Model(backbone.input, embedding)
    add_kernel_l2(keras, basic_model, WEIGHT_DECAY)
    output = baseline_norm_dense(keras, tf)(CLASSES, dtype="float32", name="arcface")(embedding)
    model = keras.Model(basic_model.input, output)
    model.compile(optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=0.9), loss=baseline_arcface(keras, tf),
                  metrics=["accuracy"])
    return model


def measure_baseline(model_name, batch_size, steps, warmup, extra_callbacks=None):
    """Run the baseline in this process (the side environment's Python); returns the timing report.

    `extra_callbacks(keras)`, when given, returns more callbacks for the run (`bench/profile_step.py`)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf
    from tensorflow import keras

    model = baseline_model(*parse_model(model_name))
    images, labels = random_batches(batch_size, steps, warmup)
    timer = batch_timer(keras, warmup, steps, stop_after=False)
    callbacks = [timer, *(extra_callbacks(keras) if extra_callbacks else ())]
    call_time = time.perf_counter()
    model.fit(images, labels, batch_size=batch_size, epochs=1, callbacks=callbacks, verbose=0)
    report = timing_report(timer, call_time, batch_size, warmup)
    from importlib.metadata import version

    report.update(side="baseline", versions=f"tensorflow {tf.__version__}, tf-keras {version('tf-keras')}",
                  parameters=model.count_params())
    return report


# ----------------------------------------------------------------------------------------------------------------
# Library side: train.Train


def write_random_jpegs(folder, classes, per_class=1):
    """A class-per-folder dataset of random 112x112 JPEGs, `folder/<class>/<k>.jpg` (kept when it exists)."""
    import numpy as np
    from PIL import Image

    if os.path.isdir(folder):
        return
    generator = np.random.default_rng(0)
    for label in range(classes):
        os.makedirs(os.path.join(folder, f"{label:04d}"))
        for index in range(per_class):
            pixels = generator.integers(0, 256, IMAGE_SHAPE, dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{label:04d}", f"{index}.jpg"), quality=90)


def library_basic_model(version, width, strides):
    """The library's GhostFaceNetV1 / V2 at `width` / `strides` with the published settings (L2 5e-4 included)."""
    import keras

    import GhostFaceNets

    keras.utils.set_random_seed(0)
    build = GhostFaceNets.GhostFaceNetV2 if version == "V2" else GhostFaceNets.GhostFaceNetV1
    return build(width=width, strides=strides, weight_decay=WEIGHT_DECAY)


def measure_library(model_name, workdir, batch_size, steps, warmup, extra_callbacks=None):
    """Run `train.Train` in this process (one stage of one epoch, stopped after the timed batches); returns the
    timing report. `extra_callbacks` as for `measure_baseline`."""
    import keras
    import tensorflow as tf

    import losses
    import train

    data_path = os.path.join(workdir, "faces")
    tt = train.Train(
        data_path, "bench.h5", basic_model=library_basic_model(*parse_model(model_name)), batch_size=batch_size,
        lr_base=LEARNING_RATE, checkpoint_dir=os.path.join(workdir, "checkpoints"), cache_dir=workdir, verbose=0,
        overwrite=True,
    )
    timer = batch_timer(keras, warmup, steps, stop_after=True)
    tt.custom_callbacks += [timer, *(extra_callbacks(keras) if extra_callbacks else ())]
    schedule = {"loss": losses.ArcfaceLoss(scale=ARC_SCALE), "epoch": 1,
                "optimizer": keras.optimizers.SGD(LEARNING_RATE, momentum=0.9)}
    call_time = time.perf_counter()
    tt.train(schedule)
    report = timing_report(timer, call_time, batch_size, warmup)
    report.update(side="library", versions=f"tensorflow {tf.__version__}, keras {keras.__version__}",
                  parameters=tt.model.count_params())
    return report


def measure(side, model_name, workdir, batch_size, steps, warmup):
    """One side's timing report in this process, with whether it ran TensorFlow's oneDNN kernels."""
    if side == "baseline":
        report = measure_baseline(model_name, batch_size, steps, warmup)
    else:
        sys.path.insert(0, REPOSITORY)  # here only: the baseline's process must not see the library's modules
        import train  # noqa: F401  (first, so the library's import-time settings apply)

        report = measure_library(model_name, workdir, batch_size, steps, warmup)
    from tensorflow.python.util import _pywrap_util_port

    report.update(model=model_name, onednn=bool(_pywrap_util_port.IsMklEnabled()))
    return report


# ----------------------------------------------------------------------------------------------------------------
# Parent: alternate the sides, print the figures and the ratios


def side_environment(side, baseline_onednn):
    """The environment of a child process: the baseline gets `TF_USE_LEGACY_KERAS=1` and the oneDNN choice."""
    env = dict(os.environ)
    env.pop("TF_ENABLE_ONEDNN_OPTS", None)
    if side == "baseline":
        env["TF_USE_LEGACY_KERAS"] = "1"
        if baseline_onednn != "default":
            env["TF_ENABLE_ONEDNN_OPTS"] = baseline_onednn
    return env


def run_side(side, model_name, workdir, args):
    """Run `measure` for one side and model in a fresh process; returns its JSON report."""
    python = args.baseline_python if side == "baseline" else sys.executable
    command = [
        python, os.path.abspath(__file__), "--measure", side, workdir, "--models", model_name,
        "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]
    result = subprocess.run(command, env=side_environment(side, args.baseline_onednn), capture_output=True,
                            text=True, cwd=workdir)
    if result.returncode:
        sys.stderr.write(result.stderr[-6000:])
        raise RuntimeError(f"{side} run of {model_name} failed with exit status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def round_order(round_index):
    """The sides in the order of a round: the baseline first in even rounds, the library first in odd ones."""
    return ("baseline", "library") if round_index % 2 == 0 else ("library", "baseline")


def run_rounds(args, workdir):
    """{model: {side: [report per round]}} over `args.rounds` alternating rounds, printing each report."""
    reports = {name: {"baseline": [], "library": []} for name in args.models}
    for round_index in range(args.rounds):
        for name in args.models:
            for side in round_order(round_index):
                report = run_side(side, name, workdir, args)
                reports[name][side].append(report)
                print(f"round {round_index + 1} {name:9s} {side:8s} {report['images_per_second']:7.2f} img/s, "
                      f"first step {report['first_step_seconds']:6.1f} s (fit begin -> first step "
                      f"{report['fit_begin_to_first_step_seconds']:.1f} s), oneDNN {report['onednn']}, "
                      f"{report['parameters']:,} parameters", flush=True)
    return reports


def ratio_summary(baseline, library, key, best):
    """(best(library) / best(baseline), median of the per-round ratios library / baseline) of a report field."""
    pick = max if best == "max" else min
    values = [report[key] for report in library], [report[key] for report in baseline]
    per_round = [lib / base for lib, base in zip(*values, strict=True)]
    return pick(values[0]) / pick(values[1]), statistics.median(per_round)


def summary_lines(reports):
    """The table of the run: per model and side, best / median images/s and first-step seconds, and the ratios."""
    lines = ["model     | side     | img/s best | img/s median | first step s best | median | oneDNN"]
    for name, sides in reports.items():
        for side, runs in sides.items():
            rates = [report["images_per_second"] for report in runs]
            firsts = [report["first_step_seconds"] for report in runs]
            lines.append(f"{name:9s} | {side:8s} | {max(rates):10.2f} | {statistics.median(rates):12.2f} | "
                         f"{min(firsts):17.1f} | {statistics.median(firsts):6.1f} | {runs[0]['onednn']}")
        rate_best, rate_median = ratio_summary(sides["baseline"], sides["library"], "images_per_second", "max")
        first_best, first_median = ratio_summary(sides["baseline"], sides["library"], "first_step_seconds", "min")
        lines.append(f"{name:9s} | library / baseline: img/s best/best {rate_best:.2f}, median of rounds "
                     f"{rate_median:.2f}; first-step time best/best {first_best:.2f}, median of rounds "
                     f"{first_median:.2f}")
    return lines


def add_baseline_arguments(parser):
    """The options of the tf-keras baseline process: `--baseline_python` and `--baseline_onednn`."""
    parser.add_argument("--baseline_python", default=DEFAULT_BASELINE_PYTHON,
                        help="Python of the tf-keras side environment (bench/README.md)")
    parser.add_argument("--baseline_onednn", default="1", choices=("1", "0", "default"),
                        help="TF_ENABLE_ONEDNN_OPTS of the baseline process ('default': TensorFlow's choice)")


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=list(DEFAULT_MODELS), help="VERSION-width-strides")
    parser.add_argument("--steps", type=int, default=8, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first batches per run (>= 1)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=64)
    add_baseline_arguments(parser)
    parser.add_argument("--measure", nargs=2, metavar=("SIDE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    return args


def main():
    args = parse_arguments()
    if args.measure:
        side, workdir = args.measure
        print(json.dumps(measure(side, args.models[0], workdir, args.batch_size, args.steps, args.warmup)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        write_random_jpegs(os.path.join(workdir, "faces"), CLASSES)
        print(f">>>> batch {args.batch_size}, {args.steps} timed batches after {args.warmup}, {args.rounds} rounds, "
              f"{os.cpu_count()} cores, baseline TF_ENABLE_ONEDNN_OPTS={args.baseline_onednn}", flush=True)
        reports = run_rounds(args, workdir)
        print("\n".join(summary_lines(reports)), flush=True)


if __name__ == "__main__":
    main()
