"""Benchmark: training images/s of `train.Train` on a folder dataset against a plain `model.fit`, in the same run.

    python bench/train_step.py [--configs 1.3-2 1.3-1] [--batch_size 64] [--steps 8] [--warmup 3]

For each GhostFaceNetV1 configuration (`width-strides`), two runs train the same network (PReLU, GDC, emb 512)
with the same NormDense head and ArcFace loss and SGD:

- baseline: `model.compile(optimizer, loss)` with Keras' default options, `model.fit` on in-memory tensors;
- library: `train.Train` reading a class-per-folder JPEG dataset from disk with its defaults.

Each run times `--steps` training steps after `--warmup` steps (graph tracing / XLA compilation) from inside the
run with a callback, so the seconds `fit` spends before its first and after its last batch are not counted.
Prints images/s of both and the ratio library / baseline.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import GhostFaceNets
import losses
import train
from synthetic_faces import render_identities

CLASSES = 100


class StepTimer(keras.callbacks.Callback):
    """Record the wall time of every training batch end; `images_per_second` after `warmup` batches."""

    def __init__(self, batch_size, warmup):
        super().__init__()
        self.batch_size, self.warmup, self.ends = batch_size, warmup, []

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())

    def images_per_second(self):
        timed = self.ends[self.warmup - 1 :]
        return (len(timed) - 1) * self.batch_size / (timed[-1] - timed[0])


def basic_model(width, strides):
    """GhostFaceNetV1 at `width` / `strides` with the published head settings."""
    keras.utils.set_random_seed(0)
    return GhostFaceNets.GhostFaceNetV1(width=width, strides=strides)


def baseline_rate(width, strides, batch_size, steps, warmup):
    """Images/s of a plain `fit` on in-memory tensors with default compile options."""
    model = basic_model(width, strides)
    output = losses.NormDense(CLASSES, name="arcface")(model.output)
    model = keras.Model(model.input, output)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss(scale=64))
    count = batch_size * (steps + warmup)
    images = np.random.default_rng(0).uniform(-1, 1, (count, 112, 112, 3)).astype("float32")
    labels = keras.utils.to_categorical(np.arange(count) % CLASSES, CLASSES)
    timer = StepTimer(batch_size, warmup)
    model.fit(images, labels, batch_size=batch_size, epochs=1, callbacks=[timer], verbose=0)
    return timer.images_per_second()


def library_rate(data_path, workdir, width, strides, batch_size, steps, warmup):
    """Images/s of `train.Train` on the folder dataset with its defaults (one stage of one epoch)."""
    tt = train.Train(
        data_path, "bench.h5", basic_model=basic_model(width, strides), batch_size=batch_size, lr_base=0.1,
        checkpoint_dir=os.path.join(workdir, "checkpoints"), cache_dir=workdir, verbose=0,
    )
    timer = StepTimer(batch_size, warmup)
    tt.custom_callbacks.append(timer)
    tt.model_checkpoint.enabled = False
    schedule = {"loss": losses.ArcfaceLoss(scale=64), "epoch": 1, "optimizer": keras.optimizers.SGD(0.1, momentum=0.9)}
    tt.train(schedule)
    return timer.images_per_second()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=["1.3-2", "1.3-1"], help="GhostFaceNetV1 width-strides")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=3, help="untimed first steps per run")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as workdir:
        data_path = os.path.join(workdir, "faces")
        per_class = int(np.ceil(args.batch_size * (args.steps + args.warmup) / CLASSES))
        render_identities(0, range(CLASSES), per_class, 0.5, data_path, desc="generate benchmark images")
        print(f">>>> batch {args.batch_size}, {args.steps} timed steps after {args.warmup}, {os.cpu_count()} cores")
        for config in args.configs:
            width, strides = float(config.split("-")[0]), int(config.split("-")[1])
            base = baseline_rate(width, strides, args.batch_size, args.steps, args.warmup)
            library = library_rate(data_path, workdir, width, strides, args.batch_size, args.steps, args.warmup)
            print(
                f"GhostFaceNetV1-{config}: plain model.fit {base:.1f} img/s, train.Train {library:.1f} img/s, "
                f"ratio {library / base:.2f}"
            )


if __name__ == "__main__":
    main()
