"""Benchmark: training from packed TFRecord shards against class folders, and packing a `.rec` against copying it.

    python bench/packed_records.py [--ids 100] [--images_per_id 30] [--shards 8] [--batch_size 128]
                                   [--random_status 0] [--seed S] [--rounds 3] [--rec_images 10000]
                                   [--only pipeline|conversion]

Synthetic 112x112 JPEGs (`synthetic_faces`, `--ids` × `--images_per_id`) are written as class folders and packed
into `--shards` TFRecord shards (`packed_records.folder_to_tfrecord`).

(a) Input pipeline: `data.prepare_dataset` images/s (read, check, decode, augment `--random_status`, normalise,
    one-hot labels, batches of `--batch_size`; no model) from the shard pattern and from the folders, on the same
    images. Each measurement runs in its own subprocess (a fresh TensorFlow, nothing cached), timing two epochs
    after one warm-up batch; the two sources alternate for `--rounds` rounds. Printed: best img/s of each and the
    ratio shards / folders, best against best and the median of the rounds' ratios.
(b) Conversion: a `train.rec` / `train.idx` of `--rec_images` records (the synthetic JPEGs in turn) is packed into
    shards (`packed_records.rec_to_tfrecord`, 1 shard per 1,250 images) and copied with `shutil.copyfile`,
    alternately, `--rounds` times; both read the `.rec` from the page cache. Printed: MB/s of each, the ratio
    packing / copy, and the files the packing left (the shards only: no image is written as a file). Also against
    the copy: the same packing writing through `tf.io.TFRecordWriter` (what it does without google-crc32c), and
    that writer alone writing the same records already encoded, one Python call per record (its software CRC32C
    bounds every conversion that writes through it).
"""

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)  # first: this script's own folder holds a packed_records.py too (this file)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pipeline_images_per_second(data_path, args):
    """img/s of `data.prepare_dataset(data_path)` over two epochs after one warm-up batch (in this process)."""
    import data

    ds, steps = data.prepare_dataset(data_path, batch_size=args.batch_size, random_status=args.random_status,
                                     seed=args.seed, cache_dir=os.path.join(args.workdir, "cache"))
    iterator = iter(ds)
    next(iterator)
    start = time.perf_counter()
    for _ in range(2 * steps):
        next(iterator)
    return 2 * steps * args.batch_size / (time.perf_counter() - start)


def measure_in_subprocess(data_path, args):
    """`pipeline_images_per_second(data_path)` measured in a fresh Python process."""
    command = [sys.executable, __file__, "--measure", data_path, "--workdir", args.workdir,
               "--batch_size", str(args.batch_size), "--random_status", str(args.random_status)]
    command += [] if args.seed is None else ["--seed", str(args.seed)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return float(output.strip().splitlines()[-1])


def print_comparison(name, rates, baseline_name, baselines, unit):
    """Best of each side, and the ratio best / best and the median of the per-round ratios."""
    paired = statistics.median(rate / base for rate, base in zip(rates, baselines, strict=True))
    print(f"{baseline_name}: best {max(baselines):.0f} {unit}; {name}: best {max(rates):.0f} {unit}; ratio "
          f"{name} / {baseline_name}: {max(rates) / max(baselines):.2f} best / best, {paired:.2f} median of the "
          "rounds' ratios")


def compare_pipelines(folder, pattern, args):
    """(a): shards against folders, alternating subprocesses."""
    shard_rates, folder_rates = [], []
    for _ in range(args.rounds):
        folder_rates.append(measure_in_subprocess(folder, args))
        shard_rates.append(measure_in_subprocess(pattern, args))
    print_comparison("TFRecord shards", shard_rates, "class folders", folder_rates, "img/s")


def write_rec(jpegs, rec_images, folder):
    """`folder/train.rec` + `train.idx` (insightface layout, header record 0) of `rec_images` records cycling
    through `jpegs` (a list of `(class, bytes)`); returns the `.rec` size in bytes."""
    import numpy as np

    from recordio import IRHeader, pack, write_indexed_recordio

    classes = 1 + max(label for label, _ in jpegs)
    header = IRHeader(2, np.array([rec_images + 1, rec_images + 1 + classes], np.float32), 0, 0)
    records = [(0, pack(header, b""))]
    for key in range(1, rec_images + 1):
        label, jpeg = jpegs[(key - 1) % len(jpegs)]
        records.append((key, pack(IRHeader(0, float(label), key, 0), jpeg)))
    write_indexed_recordio(os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx"), records)
    return os.path.getsize(os.path.join(folder, "train.rec"))


def timed(function):
    """Seconds `function()` takes."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def write_with_tf_writer(path, records):
    """Write serialized `records` to `path` through `tf.io.TFRecordWriter`, one Python call per record."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)


@contextlib.contextmanager
def tf_writer_only():
    """Within the block, `tfrecords` writes as without google-crc32c (through `tf.io.TFRecordWriter`)."""
    import tfrecords

    crc32c, tfrecords.CRC32C = tfrecords.CRC32C, None
    try:
        yield
    finally:
        tfrecords.CRC32C = crc32c


def compare_conversion(jpegs, args):
    """(b): packing a `.rec` into shards against `shutil.copyfile` of it, alternating; also the packing without
    google-crc32c and TensorFlow's TFRecord writer alone on the same records already encoded."""
    import packed_records
    import tfrecords

    rec_dir, out_dir = os.path.join(args.workdir, "rec"), os.path.join(args.workdir, "packed")
    os.makedirs(rec_dir)
    size = write_rec(jpegs, args.rec_images, rec_dir)
    copy_path, shards = os.path.join(args.workdir, "copy.rec"), max(1, args.rec_images // 1250)
    rec_path, written_path = os.path.join(rec_dir, "train.rec"), os.path.join(args.workdir, "written.tfrecord")
    encoded = [tfrecords.image_label_record(jpegs[index % len(jpegs)][1], jpegs[index % len(jpegs)][0])
               for index in range(args.rec_images)]

    def pack():
        packed_records.rec_to_tfrecord(rec_dir, os.path.join(out_dir, "faces.tfrecord"), shards)

    def pack_with_tf_writer():
        with tf_writer_only():
            pack()

    speeds = {"copy": [], "pack": [], "pack_tf": [], "writer": []}
    for _ in range(args.rounds):
        for path in (copy_path, written_path):
            if os.path.exists(path):
                os.remove(path)
        shutil.rmtree(out_dir, ignore_errors=True)
        speeds["copy"].append(size / 1e6 / timed(lambda: shutil.copyfile(rec_path, copy_path)))
        speeds["pack"].append(size / 1e6 / timed(pack))
        shutil.rmtree(out_dir)
        speeds["pack_tf"].append(size / 1e6 / timed(pack_with_tf_writer))
        speeds["writer"].append(size / 1e6 / timed(lambda: write_with_tf_writer(written_path, encoded)))
    crc = "installed" if tfrecords.CRC32C is not None else "NOT installed: packing writes through tf.io.TFRecordWriter"
    print(f">>>> .rec of {args.rec_images} images, {size / 1e6:.1f} MB, packed into {shards} shards; "
          f"google-crc32c {crc}")
    print_comparison("packing into shards", speeds["pack"], "shutil.copyfile", speeds["copy"], "MB/s")
    print_comparison("packing through TFRecordWriter", speeds["pack_tf"], "shutil.copyfile", speeds["copy"], "MB/s")
    print_comparison("TFRecordWriter alone", speeds["writer"], "shutil.copyfile", speeds["copy"], "MB/s")
    print(f"files left by the packing: {len(os.listdir(out_dir))} ({', '.join(sorted(os.listdir(out_dir))[:2])}, ...)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ids", type=int, default=100)
    parser.add_argument("--images_per_id", type=int, default=30)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--random_status", type=int, default=0)
    parser.add_argument("--seed", type=int, default=None, help="seed of both pipelines (default: unseeded)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rec_images", type=int, default=10000)
    parser.add_argument("--only", choices=["pipeline", "conversion"], help="run one of the two comparisons")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(pipeline_images_per_second(args.measure, args))
        return
    with tempfile.TemporaryDirectory() as workdir:
        args.workdir = workdir
        import packed_records
        from folder_scan import scan_folder
        from synthetic_faces import render_identities

        folder = os.path.join(workdir, "faces")
        render_identities(0, range(args.ids), args.images_per_id, 0.5, folder, desc="generate benchmark images")
        names, labels, _ = scan_folder(folder)
        if args.only != "conversion":
            packed_records.folder_to_tfrecord(folder, os.path.join(workdir, "shards", "faces.tfrecord"), args.shards)
            pattern = os.path.join(workdir, "shards", f"faces-*-of-{args.shards:05d}.tfrecord")
            print(f">>>> {len(names)} images, {args.shards} shards, batch {args.batch_size}, random_status "
                  f"{args.random_status}, seed {args.seed}, {os.cpu_count()} CPU cores")
            compare_pipelines(folder, pattern, args)
        if args.only != "pipeline":
            jpegs = [(int(label), Path(name).read_bytes()) for name, label in zip(names, labels, strict=True)]
            compare_conversion(jpegs, args)


if __name__ == "__main__":
    main()
