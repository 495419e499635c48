"""Seed sweep of the demo: `python train.py` (the synthetic demo, default options) once per seed, printing each
seed's final verification accuracy and whether it reaches the target (0.90). Not a CI test: each run trains for
minutes.

    python bench/seed_sweep.py [--seeds 0 1 2 3 4] [--target 0.90] [--jobs 2] [--log_dir DIR] [-- extra options]

Each run writes its checkpoints into its own temporary folder; `--jobs N` runs N seeds at once (one training per
core is the sensible most); `--log_dir` keeps each run's output (per-epoch loss and accuracy) as `seedN.log`.
Exit status 1 when a seed misses the target.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from atomic_io import write_text_atomic  # noqa: E402

ACCURACY = re.compile(r"verification accuracy ([0-9.]+) untrained -> ([0-9.]+) trained")


def run_demo(seed, extra, workdir, log_dir=None):
    """`python train.py --seed seed` from the repository root; `(untrained, trained accuracy, seconds)` of the
    last bin it reports, or None for both accuracies when it printed none. Its output goes to
    `log_dir/seed{seed}.log` when `log_dir` is given."""
    checkpoints = os.path.join(workdir, f"seed{seed}")
    command = [sys.executable, "train.py", "--seed", str(seed), "--checkpoint_dir", checkpoints,
               "--save_path", os.path.join(checkpoints, f"sweep_seed{seed}.h5"), *extra]
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log_dir:
        write_text_atomic(os.path.join(log_dir, f"seed{seed}.log"), result.stdout + result.stderr)
    found = ACCURACY.findall(result.stdout)
    if result.returncode != 0 or not found:
        print(result.stdout[-2000:], result.stderr[-2000:], sep="\n")
    untrained, trained = (float(value) for value in found[-1]) if found else (None, None)
    return untrained, trained, seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2, 3, 4])
    parser.add_argument("--target", type=float, default=0.90, help="accuracy every seed must reach")
    parser.add_argument("--jobs", type=int, default=1, help="seeds trained at once (at most one per core)")
    parser.add_argument("--log_dir", help="keep each run's output as LOG_DIR/seedN.log")
    parser.add_argument("extra", nargs="*", help="more train.py options (after --)")
    args = parser.parse_args()
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    missed = []
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        runs = [pool.submit(run_demo, seed, args.extra, workdir, args.log_dir) for seed in args.seeds]
        for seed, run in zip(args.seeds, runs, strict=True):
            untrained, trained, seconds = run.result()
            reached = trained is not None and trained >= args.target
            missed += [] if reached else [seed]
            print(f"seed {seed}: untrained {untrained} -> trained {trained}, >= {args.target}: {reached} "
                  f"({seconds:.0f} s)", flush=True)
    print(f"all seeds reach {args.target}" if not missed else f"seeds below {args.target}: {missed}")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
