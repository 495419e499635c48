"""Profile: where the time of one training step goes, `train.Train` against the tf-keras 2.21 baseline.

    python bench/profile_step.py [--model V1-1.3-2] [--warmup 2] [--steps 2] [--top 30]
        [--baseline_python /work/venv-keras2/bin/python] [--baseline_onednn 1]

Runs each side of `bench/vs_keras2.py` (same models, data, losses and optimizer) in its own process and, inside
the run, wraps `--steps` batches after `--warmup` in TensorFlow's profiler (`tf.profiler.experimental`, trace in a
temporary folder). From the trace (`*.xplane.pb`, an XSpace protobuf read with the `xplane_pb2` module that ships
with TensorFlow) it sums the host time of every executed TensorFlow op by op type and by the part of the model or
step it belongs to (from the op's name). After training it traces `model.train_step` once more with
`tf.function` on the batch's shapes and counts the ops of that graph (function bodies included) by type: the
graph TensorFlow receives before its optimiser (grappler) rewrites it.

Prints, per side, the graph op count and the profiled milliseconds per step, then tables by op type and by part.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

import vs_keras2  # bench/, this script's folder, is on sys.path

# (part, pattern on the lower-cased op name); the first match names the part, in this order.
PARTS = (
    ("input pipeline", r"decodejpeg|readfile|/map/|iteratorgetnext"),
    ("optimizer update", r"(^|/)(sgd|optimizer)(/|_)|resourceapply|assignaddvariable|assignsubvariable"),
    ("L2 regularisation", r"regulari[sz]|/l2|l2_|l2loss"),
    ("metrics", r"metric|accuracy|compile_metrics"),
    ("loss", r"arcface_loss|/loss|loss/|categorical_crossentropy|softmax_cross"),
    ("batch normalisation", r"batch_?norm|_bn(_\d+)?/|/bn/|pre_embedding|fusedbatchnorm|moments"),
    ("PReLU", r"prelu|p_re_lu"),
    ("depthwise conv", r"depthwise|dw_conv|gdc_dw|dwconv"),
    ("conv", r"conv"),
    ("squeeze-excite (not conv)", r"_se_|/se_"),
    ("concatenate (ghost modules)", r"concat"),
    ("zero padding (kecam)", r"_pad(_\d+)?/"),
)
OP_EVENT = re.compile(r"^(?P<name>[^\s:]+):(?P<type>[A-Za-z_][A-Za-z0-9_]*)$")


def part_of(op_name, op_type):
    """The coarse part of the step an op belongs to, from its name and type (first matching PARTS entry)."""
    text = f"{op_name}/{op_type}".lower()
    backward = "gradient" in text
    for part, pattern in PARTS:
        if re.search(pattern, text):
            return f"{part} (backward)" if backward and part not in ("optimizer update",) else part
    return "other (backward)" if backward else "other"


def xspace_op_times(logdir):
    """{(op name, op type): [total microseconds, event count]} of the TensorFlow op events in a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    totals = collections.defaultdict(lambda: [0.0, 0])
    for path in glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")):
        space = xplane_pb2.XSpace()
        with open(path, "rb") as file:
            space.ParseFromString(file.read())
        for plane in space.planes:
            for line in plane.lines:
                for event in line.events:
                    match = OP_EVENT.match(plane.event_metadata[event.metadata_id].name)
                    if match:
                        entry = totals[(match["name"], match["type"])]
                        entry[0] += event.duration_ps / 1e6
                        entry[1] += 1
    return totals


def graph_op_counts(model, batch_size):
    """({op type: count}, {part of the step: count}) of `model.train_step` traced with `tf.function` on an
    (images, one-hot labels) batch, the nodes of the functions it calls (conditionals, loops) included."""
    import tensorflow as tf

    spec = (tf.TensorSpec((batch_size, *vs_keras2.IMAGE_SHAPE), tf.float32),
            tf.TensorSpec((batch_size, vs_keras2.CLASSES), tf.float32))
    graph_def = tf.function(model.train_step).get_concrete_function(spec).graph.as_graph_def()
    nodes = list(graph_def.node) + [node for function in graph_def.library.function for node in function.node_def]
    by_part = collections.Counter(part_of(node.name, node.op) for node in nodes)
    return dict(collections.Counter(node.op for node in nodes)), dict(by_part)


def profile_window(keras, logdir, warmup, steps, models):
    """A callback running TensorFlow's profiler over batches `warmup` .. `warmup + steps - 1`; it appends the
    trained model to `models` (for the graph count after training)."""
    import tensorflow as tf

    class ProfileWindow(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.batches = 0

        def on_train_batch_begin(self, batch, logs=None):
            if self.batches == warmup:
                tf.profiler.experimental.start(logdir)

        def on_train_batch_end(self, batch, logs=None):
            self.batches += 1
            if self.batches == warmup + steps:
                tf.profiler.experimental.stop()
                models.append(self.model)

    return [ProfileWindow()]


def profile_side(side, model_name, workdir, batch_size, warmup, steps):
    """Train one side in this process with the profiler over `steps` batches; returns the op times per step
    ({"name:type": [microseconds, count]}), the graph op counts by type and the timing report."""
    logdir, models = tempfile.mkdtemp(prefix="profile_", dir=workdir), []

    def callbacks(keras):
        return profile_window(keras, logdir, warmup, steps, models)

    if side == "baseline":
        report = vs_keras2.measure_baseline(model_name, batch_size, steps, warmup, callbacks)
    else:
        sys.path.insert(0, vs_keras2.REPOSITORY)
        import train  # noqa: F401  (first, so the library's import-time settings apply)

        report = vs_keras2.measure_library(model_name, workdir, batch_size, steps, warmup, callbacks)
    from tensorflow.python.util import _pywrap_util_port

    report.update(onednn=bool(_pywrap_util_port.IsMklEnabled()))
    times = {f"{name}:{kind}": [micros / steps, count] for (name, kind), (micros, count)
             in xspace_op_times(logdir).items()}
    graph_ops, graph_parts = graph_op_counts(models[0], batch_size)
    return {"side": side, "report": report, "op_times": times, "graph_ops": graph_ops, "graph_parts": graph_parts}


def run_profile(side, args, workdir):
    """`profile_side` of one side in a fresh process (the baseline with the side environment's Python)."""
    python = args.baseline_python if side == "baseline" else sys.executable
    command = [python, os.path.abspath(__file__), "--side", side, workdir, "--model", args.model,
               "--warmup", str(args.warmup), "--steps", str(args.steps)]
    env = vs_keras2.side_environment(side, args.baseline_onednn)
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=workdir)
    if result.returncode:
        sys.stderr.write(result.stderr[-6000:])
        raise RuntimeError(f"profile of the {side} failed with exit status {result.returncode}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def grouped_milliseconds(op_times, key):
    """{group: milliseconds per step} of `op_times`, grouped by `key(op name, op type)`."""
    groups = collections.Counter()
    for label, (micros, _) in op_times.items():
        name, kind = label.rsplit(":", 1)
        groups[key(name, kind)] += micros / 1000
    return groups


def comparison_table(title, baseline, library, top):
    """Rows `title | baseline | library | library - baseline` of the `top` groups by the larger side."""
    keys = sorted(set(baseline) | set(library), key=lambda k: -max(baseline.get(k, 0), library.get(k, 0)))[:top]
    lines = [f"{title:40s} | {'baseline':>10s} | {'library':>10s} | {'lib - base':>10s}"]
    for key in keys:
        base, lib = baseline.get(key, 0), library.get(key, 0)
        lines.append(f"{key[:40]:40s} | {base:10.1f} | {lib:10.1f} | {lib - base:+10.1f}")
    return lines


def print_results(results, top):
    """Print op counts, profiled time per step, and the by-type / by-part / graph-op comparison tables."""
    base, lib = results["baseline"], results["library"]
    for side in (base, lib):
        total = sum(micros for micros, _ in side["op_times"].values()) / 1000
        print(f"{side['side']:8s}: graph ops of train_step {sum(side['graph_ops'].values()):6d}, executed TF op "
              f"events per step {sum(count for _, count in side['op_times'].values()) / side['steps']:.0f}, "
              f"op time {total:.0f} ms per step (summed over threads), {side['report']['images_per_second']:.1f} "
              f"img/s, oneDNN {side['report']['onednn']}")
    by_type = [grouped_milliseconds(side["op_times"], lambda name, kind: kind) for side in (base, lib)]
    by_part = [grouped_milliseconds(side["op_times"], part_of) for side in (base, lib)]
    print("\n".join(comparison_table("op type (ms per step)", *by_type, top)))
    print("\n".join(comparison_table("part of the step (ms per step)", *by_part, top)))
    print("\n".join(comparison_table("graph op type (count)", base["graph_ops"], lib["graph_ops"], top)))
    print("\n".join(comparison_table("graph ops by part (count)", base["graph_parts"], lib["graph_parts"], top)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="V1-1.3-2")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="profiled batches")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--top", type=int, default=30, help="rows per table")
    vs_keras2.add_baseline_arguments(parser)
    parser.add_argument("--json", help="also write both sides' raw results to this file")
    parser.add_argument("--side", nargs=2, metavar=("SIDE", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        side, workdir = args.side
        print(json.dumps(profile_side(side, args.model, workdir, args.batch_size, args.warmup, args.steps)))
        return
    with tempfile.TemporaryDirectory() as workdir:
        vs_keras2.write_random_jpegs(os.path.join(workdir, "faces"), vs_keras2.CLASSES)
        results = {side: dict(run_profile(side, args, workdir), steps=args.steps) for side in ("baseline", "library")}
    if args.json:
        sys.path.insert(0, vs_keras2.REPOSITORY)
        import atomic_io

        atomic_io.write_json_atomic(args.json, results)
    print(f">>>> {args.model}, batch {args.batch_size}, {args.steps} profiled batches after {args.warmup}")
    print_results(results, args.top)


if __name__ == "__main__":
    main()
