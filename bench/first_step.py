"""Time to the first training step, stage by stage, of `python train.py` and of the training notebook, for two
revisions of the library in the same run (before / after a change).

    python bench/first_step.py [--before 7f29a58] [--after WORKTREE] [--what train notebook] [--rounds 1]
        [--log_dir DIR]

`--before` is a git revision, exported with `git archive` into a temporary folder; `--after` defaults to the working
tree. Each run executes that checkout's own code: `python train.py` (the demo, default options) and
`training_scripts.ipynb` in demo mode (through that checkout's `notebooks.py`); each checkout's demo data is
generated before the timed runs. A `sitecustomize` hook on `PYTHONPATH` wraps `train.Train.train` and
`keras.Model.fit` in every process, so nothing in either checkout changes; for each `fit` it records the seconds
from the `Train.train` call that runs it (for its first stage) and from the `fit` call to the end of the first
batch. The sides alternate over `--rounds` (the order flips every round); the table gives each stage's time per
side, the whole run's, and the ratios after / before.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)

from atomic_io import write_text_atomic  # noqa: E402

HOOK = '''
import importlib.abc, importlib.util, json, os, sys, time

RECORD_DIR = os.environ.get("FIRST_STEP_RECORD_DIR")


def append_record(record):
    from atomic_io import write_text_atomic

    write_text_atomic(os.path.join(RECORD_DIR, f"{time.time_ns()}.json"), json.dumps(record))


def patch(train):
    original_train, original_fit = train.Train.train, train.keras.Model.fit
    state = {"train_start": None}

    def timed_train(self, *args, **kwargs):
        state["train_start"] = time.perf_counter()
        return original_train(self, *args, **kwargs)

    class FirstBatch(train.keras.callbacks.Callback):
        def __init__(self, fit_start):
            super().__init__()
            self.fit_start, self.done = fit_start, False

        def on_train_batch_end(self, batch, logs=None):
            if self.done:
                return
            self.done, now = True, time.perf_counter()
            since_train = None if state["train_start"] is None else now - state["train_start"]
            append_record({"fit_to_first_step": now - self.fit_start, "train_to_first_step": since_train})
            state["train_start"] = None

    def timed_fit(model, *args, callbacks=None, **kwargs):
        return original_fit(model, *args, callbacks=[*(callbacks or []), FirstBatch(time.perf_counter())], **kwargs)

    train.Train.train, train.keras.Model.fit = timed_train, timed_fit


class PatchTrainOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "train":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            patch(module)

        spec.loader.exec_module = exec_module
        return spec


if RECORD_DIR:
    sys.meta_path.insert(0, PatchTrainOnImport())
'''


def export_revision(revision, folder):
    """Write the tree of git `revision` into the new folder `folder`; the folder."""
    os.makedirs(folder)
    archive = subprocess.run(["git", "archive", revision], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", folder], input=archive, check=True)
    return folder


def prepare_demo_data(checkout):
    """Generate the checkout's demo data (`train.demo_data()`) before any timed run, so that no run pays for it."""
    subprocess.run([sys.executable, "-c", "import train; train.demo_data()"], cwd=checkout, check=True,
                   capture_output=True)


def run_measured(checkout, what, hook_dir, log_path=None):
    """Run `what` ("train": `python train.py`; "notebook": the training notebook) in `checkout` with the hook;
    `(records, seconds)`, one record per `fit`, in order. The run's output goes to `log_path` when given."""
    record_dir = tempfile.mkdtemp(prefix="records_", dir=hook_dir)
    demo_options = ["--overwrite", "--checkpoint_dir", os.path.join(record_dir, "checkpoints")]
    command = {
        "train": [sys.executable, "-c", f"import sys, train; sys.exit(train.command_line({demo_options!r}))"],
        "notebook": [sys.executable, "notebooks.py", "training_scripts.ipynb"],
    }[what]
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([hook_dir, checkout]),
                   "FIRST_STEP_RECORD_DIR": record_dir}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=checkout, env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if log_path:
        write_text_atomic(log_path, result.stdout + result.stderr)
    if result.returncode != 0:
        print(result.stdout[-3000:], result.stderr[-3000:], sep="\n")
        raise RuntimeError(f"{what} in {checkout} failed with exit status {result.returncode}")
    records = []
    for name in sorted((name for name in os.listdir(record_dir) if name.endswith(".json")),
                       key=lambda name: int(name.split(".")[0])):
        with open(os.path.join(record_dir, name)) as file:
            records.append(json.load(file))
    return records, seconds


def stage_time(record):
    """The time to a stage's first step: from `Train.train` where it started one, else from `fit`."""
    return record["train_to_first_step"] or record["fit_to_first_step"]


def print_table(what, runs):
    """Per stage: the median (over rounds) time to the first step per side and the ratio after / before."""
    print(f"{what}: seconds to the first step of each stage (from Train.train for a first stage, else from fit), "
          "median over rounds")
    stages = min(len(records) for side in runs.values() for records, _ in side)
    for index in range(stages):
        before, after = (statistics.median(stage_time(records[index]) for records, _ in runs[side])
                         for side in ("before", "after"))
        print(f"  stage {index + 1:2d}: before {before:6.1f} s  after {after:6.1f} s  "
              f"after / before {after / before:.2f}")
    before, after = (statistics.median(seconds for _, seconds in runs[side]) for side in ("before", "after"))
    print(f"  whole run: before {before:6.0f} s  after {after:6.0f} s  after / before {after / before:.2f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="7f29a58", help="git revision measured as 'before'")
    parser.add_argument("--after", default=REPO_ROOT, help="checkout folder measured as 'after' (default: this one)")
    parser.add_argument("--what", nargs="*", default=["train", "notebook"], choices=["train", "notebook"])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--log_dir", help="keep each run's output as LOG_DIR/<what>_<side>_round<N>.log")
    args = parser.parse_args()
    if args.log_dir:
        os.makedirs(args.log_dir, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="first_step_") as workdir:
        hook_dir = os.path.join(workdir, "hook")
        os.makedirs(hook_dir)
        write_text_atomic(os.path.join(hook_dir, "sitecustomize.py"), HOOK)
        checkouts = {"before": export_revision(args.before, os.path.join(workdir, "before")),
                     "after": os.path.abspath(args.after)}
        if "train" in args.what:
            for checkout in checkouts.values():
                prepare_demo_data(checkout)
        for what in args.what:
            runs = {"before": [], "after": []}
            for round_index in range(args.rounds):
                for side in ("before", "after") if round_index % 2 == 0 else ("after", "before"):
                    log_path = args.log_dir and os.path.join(args.log_dir, f"{what}_{side}_round{round_index + 1}.log")
                    records, seconds = run_measured(checkouts[side], what, hook_dir, log_path)
                    runs[side].append((records, seconds))
                    times = ", ".join(f"{stage_time(r):.1f}" for r in records)
                    print(f"round {round_index + 1} {what:8s} {side:6s} {seconds:6.0f} s in all; first steps {times} s",
                          flush=True)
            print_table(what, runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
