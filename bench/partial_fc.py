"""Benchmark: training-step time and peak memory of a margin-loss head against its class count, full head against
Partial FC v2, in the same run.

    python bench/partial_fc.py [--classes 10000 100000 1000000] [--rates 0.1 0.3] [--emb 512] [--batch 64]
                               [--steps 5] [--warmup 2]

For every class count, separate processes train the head alone on synthetic embeddings (Input(emb) → NormDense →
ArcFace loss, SGD with momentum 0.9, the head's L2 regulariser, random labels): the full head (`keras.Model`), and
a `partial_fc.PartialFCModel` at each sample rate. Each process times `--steps` steps after `--warmup` steps
(tracing) from inside `fit` with a callback and reports its peak resident memory (`ru_maxrss`) and the peak minus
the memory before the head was built. Printed: seconds per step, peak memory, and the ratios full / Partial FC.
The memory formula of the head: classes × emb × 4 bytes × (1 + optimizer slots), plus per step the logits and
rows of the sample (Partial FC) or of every class (full head).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def peak_rss_gib():
    """Peak resident memory of this process so far, GiB (`ru_maxrss` is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def current_rss_gib():
    """Resident memory of this process now, GiB (from /proc/self/statm)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def head_model(classes, emb, sample_rate):
    """The compiled head-only model: Input(emb) → NormDense(classes) `arcface`; full or Partial FC."""
    import keras

    import losses
    import partial_fc
    from heads import NormDense

    inputs = keras.Input((emb,))
    head = NormDense(classes, keras.regularizers.L2(5e-4), sample_rate=sample_rate, name="arcface")
    model = (keras.Model if sample_rate is None else partial_fc.PartialFCModel)(inputs, head(inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss=losses.ArcfaceLoss(), jit_compile=False)
    return model


def measure(classes, emb, batch, sample_rate, steps, warmup):
    """Train the head `warmup + steps` steps; returns {seconds per step, peak GiB, peak GiB over the start}."""
    import keras
    import numpy as np
    import tensorflow as tf

    start_rss = current_rss_gib()
    model = head_model(classes, emb, sample_rate)
    rng = np.random.default_rng(0)
    embeddings = tf.constant(rng.normal(size=(batch, emb)).astype("float32"))
    labels = tf.constant(rng.integers(0, classes, batch))
    dataset = tf.data.Dataset.from_tensors((embeddings, labels if sample_rate else tf.one_hot(labels, classes)))
    times = []
    timer = keras.callbacks.LambdaCallback(on_train_batch_end=lambda index, logs: times.append(time.perf_counter()))
    model.fit(dataset.repeat(), steps_per_epoch=warmup + steps + 1, epochs=1, verbose=0, callbacks=[timer])
    seconds = (times[-1] - times[warmup]) / (len(times) - 1 - warmup)
    return {"seconds_per_step": seconds, "peak_gib": peak_rss_gib(), "peak_over_start_gib": peak_rss_gib() - start_rss}


def run_one(args, classes, sample_rate):
    """Run `measure` in a fresh process; returns its result dict (with `error` when the process failed)."""
    command = [sys.executable, __file__, "--child", str(classes), str(sample_rate), "--emb", str(args.emb),
               "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    if not lines:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[0][len("RESULT"):])


def print_row(label, result, full):
    """One printed line: seconds per step and peak memory, with the full head's ratios."""
    if "error" in result:
        print(f"  {label:<18} failed: {result['error']}")
        return
    ratio = ""
    if full and "error" not in full and full is not result:
        ratio = (f"  step {full['seconds_per_step'] / result['seconds_per_step']:.1f}x faster, peak "
                 f"{full['peak_over_start_gib'] / result['peak_over_start_gib']:.1f}x lower")
    print(f"  {label:<18} {result['seconds_per_step'] * 1000:9.1f} ms/step  peak {result['peak_gib']:6.2f} GiB "
          f"(+{result['peak_over_start_gib']:.2f} over start){ratio}", flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.1, 0.3])
    parser.add_argument("--emb", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("CLASSES", "RATE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        rate = None if args.child[1] == "None" else float(args.child[1])
        result = measure(int(args.child[0]), args.emb, args.batch, rate, args.steps, args.warmup)
        print("RESULT" + json.dumps(result))
        return
    print(f"Head training step, emb {args.emb}, batch {args.batch}, SGD momentum, {args.steps} timed steps")
    for classes in args.classes:
        slots = 1
        print(f"{classes:,} classes (head + momentum: {classes * args.emb * 4 * (1 + slots) / 2**30:.2f} GiB)")
        full = run_one(args, classes, None)
        print_row("full head", full, None)
        for rate in args.rates:
            print_row(f"Partial FC {rate:g}", run_one(args, classes, rate), full)


if __name__ == "__main__":
    main()
