"""Benchmark: `data.prepare_dataset` images/s against raw `tf.io.decode_jpeg` on the same files, in the same run.

    python bench/data_pipeline.py [--data DIR] [--batch_size 128] [--images 6000] [--random_status 0 2 100]
                                  [--seed 0] [--op_determinism]

Without `--data`, a synthetic folder (112x112 JPEGs) is generated in a temporary directory first. The baseline
reads and decodes every file with `tf.io.read_file` + `tf.io.decode_jpeg` in a parallel `map`, batched and
prefetched. The pipeline adds a new permutation every epoch, the unreadable-image check, augmentation,
normalisation to float32 and one-hot labels. Each is run for `--images` images after one warm-up batch, raw and
pipeline alternate for `--rounds` rounds, and two ratios pipeline / raw are printed: best against best, and the
median of the per-round ratios (each pairs two measurements taken seconds apart; less sensitive to the machine's
bursts than the best-of figure).

`--seed` builds seeded pipelines (the same stateless augmentation, seeded from the seed instead of a fresh one);
`--op_determinism` also turns on `tf.config.experimental.enable_op_determinism` (what `runtime_setup.seed_everything`
does on machines with an accelerator): compare with a run without it to see what determinism costs the input
pipeline.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import data  # first, so the library's TensorFlow settings apply as in real use

# isort: split
import numpy as np
import tensorflow as tf


def images_per_second(ds, batch_size, images):
    """Iterate `ds` for `images // batch_size` batches after one warm-up batch; return images per second."""
    iterator = iter(ds)
    next(iterator)
    steps = images // batch_size
    start = time.perf_counter()
    for _ in range(steps):
        next(iterator)
    return steps * batch_size / (time.perf_counter() - start)


def raw_decode_dataset(paths, batch_size):
    """The baseline: read + decode_jpeg every file, parallel map, batch, prefetch, repeated."""
    ds = tf.data.Dataset.from_tensor_slices(paths).repeat()
    ds = ds.map(lambda path: tf.io.decode_jpeg(tf.io.read_file(path), channels=3), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="class-per-folder dataset (default: a generated synthetic one)")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--images", type=int, default=6000, help="images timed per measurement")
    parser.add_argument("--random_status", type=int, nargs="*", default=[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternate raw / pipeline this many times")
    parser.add_argument("--seed", type=int, help="seed of the pipelines (default: unseeded)")
    parser.add_argument("--op_determinism", action="store_true", help="enable TensorFlow's op determinism")
    args = parser.parse_args()
    if args.op_determinism:
        tf.config.experimental.enable_op_determinism()

    with tempfile.TemporaryDirectory() as workdir:
        data_path = args.data
        if data_path is None:
            from synthetic_faces import render_identities

            data_path = os.path.join(workdir, "faces")
            render_identities(0, range(100), 30, 0.5, data_path, desc="generate benchmark images")
        paths, _, _, _, _ = data.pre_process_folder(data_path, cache_dir=workdir)
        print(f">>>> {len(paths)} images in {data_path}, batch {args.batch_size}, {os.cpu_count()} CPU cores, "
              f"seed {args.seed}, op determinism {'on' if args.op_determinism else 'off'}")
        raw_rates, pipe_rates = [], {level: [] for level in args.random_status}
        for _ in range(args.rounds):
            raw = raw_decode_dataset(paths, args.batch_size)
            raw_rates.append(images_per_second(raw, args.batch_size, args.images))
            for level in args.random_status:
                ds, _ = data.prepare_dataset(
                    data_path, batch_size=args.batch_size, random_status=level, cache_dir=workdir, seed=args.seed
                )
                pipe_rates[level].append(images_per_second(ds, args.batch_size, args.images))
        print(f"raw tf.io.decode_jpeg: best {max(raw_rates):.0f} img/s")
        for level, rates in pipe_rates.items():
            paired = np.median([rate / raw for rate, raw in zip(rates, raw_rates, strict=True)])
            print(
                f"prepare_dataset random_status={level}: best {max(rates):.0f} img/s, ratio to raw decode: "
                f"{max(rates) / max(raw_rates):.2f} best / best, {paired:.2f} median of the rounds' ratios"
            )

if __name__ == "__main__":
    main()
