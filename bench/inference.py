"""Benchmark: embeddings/s of one model in Keras, ONNX Runtime and TFLite (LiteRT), in the same run.

    python bench/inference.py [--width 1.3] [--strides 2] [--batch_sizes 1 64] [--seconds 6] [--threads N]

Builds GhostFaceNetV1 (default width 1.3, stem stride 2, 112x112) with batch-norm statistics set from
`export.sample_faces` images, exports it to ONNX (NHWC) and TFLite (float32, float16, dynamic-range int8) in a
temporary folder, logs the parity of each export against Keras, then times the runner call (uint8 batch in,
normalised inside, no flip) at each batch size:
every runner is warmed up once and called repeatedly for about `--seconds`; the best of `--rounds`
alternating rounds is kept. Printed: embeddings/s and the ratio to Keras (a `tf.function`, `training=False`).
"""

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

import embedding
import export
import GhostFaceNets


def embeddings_per_second(runner, batch, seconds):
    """Call ``runner`` on ``batch`` after one warm-up call for about ``seconds``; embeddings per second."""
    runner(batch)
    calls, start = 0, time.perf_counter()
    while calls < 2 or time.perf_counter() - start < seconds:
        runner(batch)
        calls += 1
    return calls * len(batch) / (time.perf_counter() - start)


def build_runners(model, workdir, threads):
    """{name: runner}: Keras, and ONNX Runtime / TFLite runners of the model exported under ``workdir``."""
    faces = export.sample_faces(8)
    function = export.inference_function(model)
    runners = {"keras": embedding.KerasRunner(model)}
    onnx_path = export.export_onnx(model, Path(workdir) / "model.onnx", function=function)
    export.check_parity(model, onnx_path, faces, "ONNX NHWC")
    runners["onnxruntime"] = embedding.OnnxRunner(onnx_path, threads)
    for quantization in export.TFLITE_QUANTIZATIONS:
        path = export.export_tflite(model, Path(workdir) / f"model_{quantization}.tflite", quantization,
                                    function=function)
        export.check_parity(model, path, faces, f"TFLite {quantization}")
        runners[f"tflite {quantization}"] = embedding.TFLiteRunner(path, threads)
    return runners


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=1.3)
    parser.add_argument("--strides", type=int, default=2)
    parser.add_argument("--batch_sizes", type=int, nargs="*", default=[1, 64])
    parser.add_argument("--seconds", type=float, default=6.0, help="timed seconds per runner and batch size")
    parser.add_argument("--rounds", type=int, default=2, help="alternate the runners this many times, keep the best")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime / LiteRT CPU threads")
    args = parser.parse_args()
    logging.basicConfig(stream=sys.stdout, format="%(message)s")
    logging.getLogger("export").setLevel(logging.INFO)  # the parity lines

    model = GhostFaceNets.GhostFaceNetV1(width=args.width, strides=args.strides, weight_decay=0)
    export.set_batchnorm_statistics(model, export.sample_faces(32))
    print(f">>>> GhostFaceNetV1-{args.width:g}-{args.strides}, {model.count_params():,} parameters, "
          f"{os.cpu_count()} CPU cores, {args.threads} threads for ONNX Runtime / LiteRT")
    with tempfile.TemporaryDirectory() as workdir:
        runners = build_runners(model, workdir, args.threads)
        rng = np.random.default_rng(0)
        for batch_size in args.batch_sizes:
            batch = rng.integers(0, 256, (batch_size, 112, 112, 3), dtype=np.uint8)
            best = dict.fromkeys(runners, 0.0)
            for _ in range(args.rounds):
                for name, runner in runners.items():
                    best[name] = max(best[name], embeddings_per_second(runner, batch, args.seconds))
            for name, rate in best.items():
                print(f"batch {batch_size:3d}  {name:16s} {rate:8.1f} embeddings/s  ratio to keras "
                      f"{rate / best['keras']:.2f}")


if __name__ == "__main__":
    main()
