"""Benchmark: training images/s of `train.Train` on a folder dataset against a plain `model.fit`, in the same run.

    python bench/train_step.py [--configs 1.3-2 1.3-1] [--batch_size 64] [--steps 8] [--warmup 3]

For each GhostFaceNetV1 configuration (`width-strides`), separate processes train the same network (PReLU, GDC,
emb 512) with the same NormDense head, ArcFace loss and SGD:

- baseline: a process with TensorFlow's defaults (TensorFlow imported before the library) running
  `model.compile(optimizer, loss)` with Keras' default options and `model.fit` on in-memory tensors;
- plain fit + oneDNN: the same with `TF_ENABLE_ONEDNN_OPTS=1`, to show how much of the gain comes from the kernels
  the library selects (`runtime_setup.py`);
- library: `train.Train` reading a class-per-folder JPEG dataset from disk with its defaults.

Each run times `--steps` training steps after `--warmup` steps (graph tracing) from inside the run with a
callback, so the seconds `fit` spends before its first and after its last batch are not counted. Prints images/s
of each and the ratio library / baseline.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


import numpy as np

CLASSES = 100
RUNS = {"baseline": "plain model.fit", "baseline_onednn": "plain fit + oneDNN", "library": "train.Train"}


def step_timer(batch_size, warmup):
    """A callback recording the wall time of every training batch end; `images_per_second` after `warmup` batches."""
    import keras

    class StepTimer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.ends = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append(time.perf_counter())

        def images_per_second(self):
            timed = self.ends[warmup - 1 :]
            return (len(timed) - 1) * batch_size / (timed[-1] - timed[0])

    return StepTimer()


def basic_model(width, strides):
    """GhostFaceNetV1 at `width` / `strides` with the published head settings."""
    import keras

    import GhostFaceNets

    keras.utils.set_random_seed(0)
    return GhostFaceNets.GhostFaceNetV1(width=width, strides=strides)


def baseline_rate(width, strides, batch_size, steps, warmup):
    """Images/s of a plain `fit` on in-memory tensors with default compile options."""
    import keras

    import losses

    model = basic_model(width, strides)
    output = losses.NormDense(CLASSES, name="arcface")(model.output)
    model = keras.Model(model.input, output)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss(scale=64))
    count = batch_size * (steps + warmup)
    images = np.random.default_rng(0).uniform(-1, 1, (count, 112, 112, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(count) % CLASSES, CLASSES)
    timer = step_timer(batch_size, warmup)
    model.fit(images, labels, batch_size=batch_size, epochs=1, callbacks=[timer], verbose=0)
    return timer.images_per_second()


def library_rate(data_path, workdir, width, strides, batch_size, steps, warmup):
    """Images/s of `train.Train` on the folder dataset with its defaults (one stage of one epoch)."""
    import keras

    import losses
    import train

    tt = train.Train(
        data_path, "bench.h5", basic_model=basic_model(width, strides), batch_size=batch_size, lr_base=0.1,
        checkpoint_dir=os.path.join(workdir, "checkpoints"), cache_dir=workdir, verbose=0, overwrite=True,
    )
    timer = step_timer(batch_size, warmup)
    tt.custom_callbacks.append(timer)
    schedule = {"loss": losses.ArcfaceLoss(scale=64), "epoch": 1, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}
    tt.train(schedule)
    return timer.images_per_second()


def measure(run, data_path, workdir, width, strides, batch_size, steps, warmup):
    """Images/s of one run (a key of RUNS) in this process; the baseline imports TensorFlow before the library."""
    if run.startswith("baseline"):
        import tensorflow  # noqa: F401  (first, so the library's import-time settings do not apply)

        return baseline_rate(width, strides, batch_size, steps, warmup)
    import train  # noqa: F401  (first, so its import-time settings apply)

    return library_rate(data_path, workdir, width, strides, batch_size, steps, warmup)


def measure_in_subprocess(run, config, data_path, workdir, args):
    """Run `measure` for one configuration in a fresh Python process; returns its images/s."""
    env = dict(os.environ)
    if run == "baseline_onednn":
        env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    command = [
        sys.executable, os.path.abspath(__file__), "--measure", run, data_path, workdir, "--configs", config,
        "--batch_size", str(args.batch_size), "--steps", str(args.steps), "--warmup", str(args.warmup),
    ]
    output = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def parse_config(config):
    """`"1.3-2"` -> (1.3, 2): GhostFaceNetV1 width and strides."""
    width, strides = config.split("-")
    return float(width), int(strides)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=["1.3-2", "1.3-1"], help="GhostFaceNetV1 width-strides")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    parser.add_argument("--measure", nargs=3, metavar=("RUN", "DATA", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        run, data_path, workdir = args.measure
        width, strides = parse_config(args.configs[0])
        print(measure(run, data_path, workdir, width, strides, args.batch_size, args.steps, args.warmup))
        return

    from synthetic_faces import render_identities

    with tempfile.TemporaryDirectory() as workdir:
        data_path = os.path.join(workdir, "faces")
        per_class = int(np.ceil(args.batch_size * (args.steps + args.warmup) / CLASSES))
        render_identities(0, range(CLASSES), per_class, 0.5, data_path, desc="generate benchmark images")
        print(
            f">>>> batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, {os.cpu_count()} cores",
            flush=True,
        )
        for config in args.configs:
            rates = {run: measure_in_subprocess(run, config, data_path, workdir, args) for run in RUNS}
            figures = ", ".join(f"{RUNS[run]} {rate:.1f} img/s" for run, rate in rates.items())
            print(f"GhostFaceNetV1-{config}: {figures}, ratio {rates['library'] / rates['baseline']:.2f}", flush=True)


if __name__ == "__main__":
    main()
