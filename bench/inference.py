"""Benchmark: embeddings/s of the library's inference paths against plain Keras `predict` and the original's stack.

    python bench/inference.py [--models V1-1.3-1 V1-1.3-2 V2-1.3-1] [--batch_sizes 1 256] [--seconds 5]
        [--rounds 3] [--threads N] [--configs ...] [--tflite float32 float16 int8] [--jit_compile]
        [--baseline_python /work/venv-keras2/bin/python] [--baseline_onednn 1]
    python bench/inference.py --width 1.3 --strides 2   # one GhostFaceNetV1 by its width and stem stride

For each model (112x112, embedding 512, batch-norm statistics set from `export.sample_faces` images) a first
process builds it, saves it, exports it to ONNX (NHWC) and TFLite, logs the parity of each export against Keras,
and checks that the batch-norm-folded model (`bn_folding`, what the runner and the exports run) gives the
embeddings of the unfolded one. Then every configuration is timed in its own process, alternating their order over
`--rounds` rounds, on a random uint8 batch of each size (after one warm-up call, calls repeated for about
`--seconds`; no flip):

- `predict`: plain Keras 3 `model.predict` of the same, unfolded model (normalised input) — the in-run reference;
- `keras runner`: `embedding.load_runner` of the saved `.keras` file (what `FaceEmbedder` runs for a model file):
  the model folded once, normalisation inside, one traced function;
- `keras unfolded`: the unfolded model in one traced function, normalisation inside (the runner before folding);
- `keras live`: `embedding.KerasRunner` of the in-memory model sharing its layers (what evaluation during
  training runs), with `refold()` (the folded kernels recomputed from the model's current weights) before every
  call: the worst case, as the evaluation refolds once per evaluation, not per batch;
- `onnxruntime`, `tflite <quantization>`: the exported files through their runners (`--threads` CPU threads);
- `baseline`: the original's stack in the tf-keras side environment (bench/README.md): the embedding part of
  `bench/vs_keras2.py`'s `baseline_model` (kecam GhostNet + GDC head, random initialisation: timing only),
  `model.predict` on a normalised batch, with oneDNN on as in the library (`--baseline_onednn`).

Printed per batch size: embeddings/s (best and median over the rounds) and the ratios to `predict` and to
`baseline`: best / best and the median of the per-round ratios.
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

from vs_keras2 import add_baseline_arguments, parse_model, side_environment  # noqa: E402  (bench/ is on the path)

CONFIGS = ("predict", "keras unfolded", "keras runner", "keras live", "onnxruntime", "tflite", "baseline")
IMAGE_SIZE = 112


# ----------------------------------------------------------------------------------------------------------------
# Timing (every process)


def embeddings_per_second(runner, batch, seconds):
    """Call ``runner`` on ``batch`` after one warm-up call for about ``seconds``; embeddings per second."""
    runner(batch)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        runner(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def random_batch(batch_size):
    """A seeded random uint8 RGB batch (batch_size, 112, 112, 3)."""
    import numpy as np

    return np.random.default_rng(0).integers(0, 256, (batch_size, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)


def time_runner(runner, batch_sizes, seconds):
    """{batch size: embeddings/s} of ``runner`` (uint8 batch → embeddings)."""
    return {str(size): embeddings_per_second(runner, random_batch(size), seconds) for size in batch_sizes}


def onednn_enabled():
    """Whether this process's TensorFlow runs its oneDNN kernels."""
    from tensorflow.python.util import _pywrap_util_port

    return bool(_pywrap_util_port.IsMklEnabled())


# ----------------------------------------------------------------------------------------------------------------
# Library side


def library_model(model_name):
    """The library's GhostFaceNet of ``"V1-1.3-1"``-style name (no weight decay), seeded."""
    import keras

    import GhostFaceNets

    version, width, strides = parse_model(model_name)
    keras.utils.set_random_seed(0)
    build = GhostFaceNets.GhostFaceNetV2 if version == "V2" else GhostFaceNets.GhostFaceNetV1
    return build(width=width, strides=strides, weight_decay=0)


def folding_report(model):
    """How far the folded model's embeddings are from the unfolded model's, on 16 sample faces, with and without
    flip: max abs difference relative to the largest unfolded value, and the BatchNormalization counts."""
    import numpy as np

    import embedding
    import export
    from bn_folding import count_batch_norms
    from preprocess import normalize

    faces = export.sample_faces(16)
    unfolded = np.asarray(model(normalize(faces), training=False), np.float64)
    flipped = unfolded + np.asarray(model(normalize(faces[:, :, ::-1]), training=False), np.float64)
    runner = embedding.KerasRunner(model)
    report = {"batch_norms": count_batch_norms(model), "batch_norms_folded": count_batch_norms(runner.inference_model)}
    for name, expected, flip in (("relative_diff", unfolded, False), ("relative_diff_flip", flipped, True)):
        actual = embedding.embed_images(runner, faces, flip=flip)
        report[name] = float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
    return report


def prepare(model_name, workdir, quantizations):
    """Build, save and export one model under ``workdir``; returns the folding and export parity reports."""
    import export

    model = library_model(model_name)
    export.set_batchnorm_statistics(model, export.sample_faces(32))
    model.save(os.path.join(workdir, "model.keras"))
    faces, function = export.sample_faces(8), export.inference_function(model)
    report = {"parameters": model.count_params(), "folding": folding_report(model)}
    path = export.export_onnx(model, os.path.join(workdir, "model.onnx"), function=function)
    report["onnxruntime"] = export.check_parity(model, path, faces, "ONNX NHWC")
    for quantization in quantizations:
        path = export.export_tflite(model, os.path.join(workdir, f"model_{quantization}.tflite"), quantization,
                                    function=function)
        report[f"tflite {quantization}"] = export.check_parity(model, path, faces, f"TFLite {quantization}")
    return report


def unfolded_runner(model):
    """uint8 batch → embeddings of `model` as it is (no folding) in one traced function, normalisation inside."""
    import tensorflow as tf

    from preprocess import normalize

    spec = tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)
    function = tf.function(lambda images: model(normalize(images), training=False), input_signature=[spec])
    return lambda batch: function(batch.astype("float32")).numpy()


def library_runner(config, workdir, threads, jit_compile):
    """The uint8 batch → embeddings callable of a library configuration, from the files of `prepare`."""
    import embedding
    from GhostFaceNets import load_model
    from preprocess import normalize

    if config == "onnxruntime":
        return embedding.OnnxRunner(os.path.join(workdir, "model.onnx"), threads)
    if config.startswith("tflite"):
        return embedding.TFLiteRunner(os.path.join(workdir, f"model_{config.split()[1]}.tflite"), threads)
    model = load_model(os.path.join(workdir, "model.keras"))
    if config == "predict":
        return lambda batch: model.predict(normalize(batch), batch_size=len(batch), verbose=0)
    if config == "keras unfolded":
        return unfolded_runner(model)
    runner = embedding.KerasRunner(model, follow_weights=config == "keras live")
    if config == "keras live":
        return lambda batch: runner.refold() or runner(batch)
    if jit_compile:  # a lever under test: the same function, XLA-compiled
        import tensorflow as tf

        runner.function = tf.function(runner.embed_normalized, input_signature=runner.function.input_signature,
                                      jit_compile=True)
    return runner


# ----------------------------------------------------------------------------------------------------------------
# Baseline side (tf-keras side environment)


def baseline_runner(model_name):
    """`model.predict` of the embedding part of `vs_keras2.baseline_model` (tf-keras), on a normalised batch
    (centred at 255 / 2, divided by 128, written out here: the side environment cannot import the library)."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    from tensorflow import keras
    from vs_keras2 import baseline_model

    training_model = baseline_model(*parse_model(model_name))
    model = keras.Model(training_model.input, training_model.get_layer("embedding").output)
    mean, scale = 255 / 2, 1 / 128
    return lambda batch: model.predict((batch.astype("float32") - mean) * scale, batch_size=len(batch), verbose=0)


def measure(config, model_name, workdir, args):
    """One configuration's {batch size: embeddings/s} in this process, with whether oneDNN ran."""
    if config == "baseline":
        runner = baseline_runner(model_name)
    else:
        sys.path.insert(0, REPOSITORY)  # the library side only: the baseline's process must not see its modules
        import runtime_setup  # noqa: F401  (the library's TensorFlow settings, before TensorFlow is imported)

        runner = library_runner(config, workdir, args.threads, args.jit_compile)
    rates = time_runner(runner, args.batch_sizes, args.seconds)
    return {"config": config, "rates": rates, "onednn": onednn_enabled()}


# ----------------------------------------------------------------------------------------------------------------
# Parent: prepare, alternate the configurations, print the table


def child(args, workdir, *extra, config="prepare", python=None):
    """Run this script for one configuration (or `prepare`) in a fresh process; returns its JSON report."""
    command = [python or sys.executable, os.path.abspath(__file__), "--measure", config, workdir, *extra,
               "--batch_sizes", *map(str, args.batch_sizes), "--seconds", str(args.seconds),
               "--threads", str(args.threads), "--tflite", *args.tflite, *(["--jit_compile"] if args.jit_compile
                                                                          else [])]
    side = "baseline" if config == "baseline" else "library"
    result = subprocess.run(command, env=side_environment(side, args.baseline_onednn), capture_output=True,
                            text=True, cwd=workdir)
    if result.returncode:
        sys.stderr.write(result.stderr[-6000:])
        raise RuntimeError(f"{config} process failed with exit status {result.returncode}")
    sys.stdout.write("".join(line + "\n" for line in result.stdout.splitlines()[:-1]))  # the parity lines
    return json.loads(result.stdout.strip().splitlines()[-1])


def configurations(args):
    """The configurations to time, the `tflite` entry expanded to one per quantisation."""
    names = []
    for config in args.configs:
        names += [f"tflite {quantization}" for quantization in args.tflite] if config == "tflite" else [config]
    return names


def run_rounds(args, model_name, workdir):
    """{config: [report per round]} over `args.rounds` rounds, the order reversed every other round."""
    configs = configurations(args)
    reports = {config: [] for config in configs}
    for round_index in range(args.rounds):
        for config in configs if round_index % 2 == 0 else configs[::-1]:
            python = args.baseline_python if config == "baseline" else None
            report = child(args, workdir, "--models", model_name, config=config, python=python)
            reports[config].append(report)
            rates = ", ".join(f"batch {size} {rate:.1f}/s" for size, rate in report["rates"].items())
            print(f"round {round_index + 1} {model_name} {config:14s} {rates}, oneDNN {report['onednn']}", flush=True)
    return reports


def ratio_text(reports, config, reference, size):
    """``best/best x.xx, median x.xx`` of `config` against `reference` at batch `size`."""
    if reference not in reports:
        return "-"
    rates, references = ([report["rates"][size] for report in reports[name]] for name in (config, reference))
    per_round = [rate / base for rate, base in zip(rates, references, strict=True)]
    return f"{max(rates) / max(references):.2f} / {statistics.median(per_round):.2f}"


def summary_lines(model_name, reports, batch_sizes):
    """The table of one model: per batch size and configuration, best / median embeddings/s and the ratios."""
    lines = [f"{model_name}: embeddings/s best | median; ratio best/best / median of rounds, to predict | to baseline"]
    for size in map(str, batch_sizes):
        for config, runs in reports.items():
            rates = [report["rates"][size] for report in runs]
            lines.append(f"batch {size:>3s}  {config:14s} {max(rates):8.1f} | {statistics.median(rates):8.1f}   "
                         f"{ratio_text(reports, config, 'predict', size):>11s} | "
                         f"{ratio_text(reports, config, 'baseline', size):>11s}")
    return lines


def benchmark_model(args, model_name):
    """Prepare one model, time its configurations and print the folding check and the table."""
    with tempfile.TemporaryDirectory() as workdir:
        prepared = child(args, workdir, "--models", model_name)
        folding = prepared["folding"]
        folded = folding["batch_norms"] - folding["batch_norms_folded"]
        print(f">>>> {model_name}: {prepared['parameters']:,} parameters; folded {folded} of {folding['batch_norms']} "
              f"BatchNormalization layers; folded vs unfolded embeddings: max abs diff / max |value| "
              f"{folding['relative_diff']:.2g} (flip added in one pass: {folding['relative_diff_flip']:.2g})",
              flush=True)
        reports = run_rounds(args, model_name, workdir)
    print("\n".join(summary_lines(model_name, reports, args.batch_sizes)), flush=True)


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["V1-1.3-1"], help="VERSION-width-strides, e.g. V2-1.3-1")
    parser.add_argument("--width", type=float, help="with --strides: time GhostFaceNetV1-<width>-<strides>")
    parser.add_argument("--strides", type=int, help="stem stride of the --width model (default 2)")
    parser.add_argument("--batch_sizes", type=int, nargs="*", default=[1, 256])
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per configuration and batch size")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (each configuration once each)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime / LiteRT CPU threads")
    parser.add_argument("--configs", nargs="*", choices=CONFIGS, default=list(CONFIGS))
    parser.add_argument("--tflite", nargs="*", choices=("float32", "float16", "int8"), default=["float32"],
                        help="TFLite quantisations to export and time")
    parser.add_argument("--jit_compile", action="store_true", help="XLA-compile the keras runner's function")
    add_baseline_arguments(parser)
    parser.add_argument("--measure", nargs=2, metavar=("CONFIG", "WORKDIR"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.width is not None or args.strides is not None:
        args.models = [f"V1-{args.width or 1.3:g}-{args.strides or 2}"]
    return args


def main():
    args = parse_arguments()
    if args.measure:
        config, workdir = args.measure
        if config == "prepare":
            sys.path.insert(0, REPOSITORY)
            import logging

            logging.basicConfig(stream=sys.stdout, format="%(message)s")
            logging.getLogger("export").setLevel(logging.INFO)  # the parity lines
            print(json.dumps(prepare(args.models[0], workdir, args.tflite)))
        else:
            print(json.dumps(measure(config, args.models[0], workdir, args)))
        return
    print(f">>>> {os.cpu_count()} CPU cores, {args.threads} threads for ONNX Runtime / LiteRT, {args.rounds} rounds, "
          f"about {args.seconds:g} s per configuration and batch size, baseline TF_ENABLE_ONEDNN_OPTS="
          f"{args.baseline_onednn}", flush=True)
    for model_name in args.models:
        benchmark_model(args, model_name)


if __name__ == "__main__":
    main()
