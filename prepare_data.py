#!/usr/bin/env python3
"""Prepare training and evaluation data.

- `-D dir`: convert an insightface dataset folder (`train.rec`, `train.idx`, `property`, `*.bin`) into class
  folders `<save_dir>/<class>/<record key>.jpg`, without mxnet. The JPEG bytes are written exactly as stored.
  Resumable: files already present are skipped (each file is written under a temporary name and renamed, so a
  file that exists is complete). Records that cannot be read are reported and skipped.
- `-D dir -T lfw.bin ...`: rewrite those evaluation `.bin` files (names relative to `-D`) in place into a
  plain `[list of bytes, list of bool]` pickle, which our loader and the original code read directly.
- `--synthetic dir`: build the synthetic demo data set (`dir/train/<id>/<k>.jpg` and `dir/val.bin`).
"""

import argparse
import os
import sys
import warnings

from tqdm import tqdm

from bin_files import load_bin, save_bin
from recordio import RecordIOError, RecordIOReader, unpack

PNG_SIGNATURE = b"\x89PNG"


def _image_keys(reader):
    """Keys of the image records: `1 … int(label[0]) − 1` when record 0 is the insightface header, else all keys."""
    keys = reader.keys
    if keys and keys[0] == 0:
        header, _ = unpack(reader.read(0), f"{reader.rec_path} key 0")
        if header.flag > 0:
            first_non_image = int(header.label[0])
            return [key for key in keys if 1 <= key < first_non_image]
    return keys


def _write_atomically(path, data):
    """Write `data` to `path` through a temporary file in the same folder, so `path` is never half written."""
    temporary = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".part")
    with open(temporary, "wb") as file:
        file.write(data)
    os.replace(temporary, path)


def _record_class(header):
    """Class index of an image record: `label` for a single-label header, the first label for a multi-label one."""
    return int(header.label if header.flag == 0 else header.label[0])


def MXnet_record_to_folder(dataset_dir, save_dir=None, limit=0):
    """Convert `dataset_dir/train.rec` (+ `train.idx`) to class folders `save_dir/<class>/<key>.jpg`.

    `save_dir` defaults to `<dataset_dir>_112x112_folders`; `limit > 0` converts only the first `limit` images.
    Existing files are kept (resume). Unreadable records are skipped with one warning each naming the file, key
    and problem. Returns `(save_dir, number written, number skipped as existing, number unreadable)`.
    """
    dataset_dir = os.path.normpath(dataset_dir)
    save_dir = save_dir or dataset_dir + "_112x112_folders"
    rec_path = os.path.join(dataset_dir, "train.rec")
    written = existing = unreadable = 0
    with RecordIOReader(rec_path, os.path.join(dataset_dir, "train.idx")) as reader:
        keys = _image_keys(reader)
        keys = keys[:limit] if limit > 0 else keys
        known_dirs = set()
        for key in tqdm(keys, desc=f"{rec_path} -> {save_dir}", unit="img"):
            try:
                header, image = reader.read_image_record(key)
            except RecordIOError as error:
                warnings.warn(f"skipping unreadable record: {error}", stacklevel=2)
                unreadable += 1
                continue
            class_dir = os.path.join(save_dir, str(_record_class(header)))
            if class_dir not in known_dirs:
                os.makedirs(class_dir, exist_ok=True)
                known_dirs.add(class_dir)
            extension = ".png" if image.startswith(PNG_SIGNATURE) else ".jpg"
            path = os.path.join(class_dir, f"{key}{extension}")
            if os.path.exists(path):
                existing += 1
                continue
            _write_atomically(path, image)
            written += 1
    print(f">>>> {save_dir}: {written} written, {existing} already present, {unreadable} unreadable records skipped")
    return save_dir, written, existing, unreadable


def MXnet_bin_files_to_tf(test_bins, limit=0):
    """Rewrite each `.bin` in `test_bins` in place as `[list of bytes, list of bool]`.

    `limit > 0` keeps only the first `limit` and the last `limit` pairs (as the original). Files are loaded with
    the safe loader, so a malicious or broken file is refused with its name.
    """
    for path in test_bins:
        bins, issame = load_bin(path)
        if limit > 0 and 2 * limit < len(issame):
            keep_pairs = list(range(limit)) + list(range(len(issame) - limit, len(issame)))
            bins = [bins[2 * pair + member] for pair in keep_pairs for member in (0, 1)]
            issame = issame[keep_pairs]
        save_bin(path, bins, issame)
        print(f">>>> {path}: rewritten with {len(issame)} pairs")


def read_property(dataset_dir):
    """`(classes, height, width)` from an insightface `property` file, or None when there is none."""
    path = os.path.join(dataset_dir, "property")
    if not os.path.isfile(path):
        return None
    with open(path) as file:
        fields = file.read().strip().split(",")
    try:
        return tuple(int(field) for field in fields)
    except ValueError as error:
        raise ValueError(f"{path}: expected 'classes,height,width', got {','.join(fields)!r}") from error


def parse_arguments(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-D", "--dataset_dir", help="insightface dataset folder holding train.rec / train.idx")
    parser.add_argument(
        "-T", "--test_bins", nargs="*", default=[], help="evaluation .bin names (relative to -D) to rewrite"
    )
    parser.add_argument("-S", "--save_dir", default=None, help="output folder (default <dataset_dir>_112x112_folders)")
    parser.add_argument(
        "--limit", type=int, default=0, help="records: convert the first N images; -T: keep first/last N pairs"
    )
    parser.add_argument("--synthetic", metavar="DIR", help="write the synthetic demo data set into DIR")
    parser.add_argument("--seed", type=int, default=0, help="--synthetic: random seed")
    parser.add_argument("--train_ids", type=int, default=400, help="--synthetic: training identities")
    parser.add_argument("--images_per_id", type=int, default=12, help="--synthetic: images per training identity")
    parser.add_argument("--test_ids", type=int, default=100, help="--synthetic: unseen identities in the .bin")
    parser.add_argument(
        "--pairs", type=int, default=3000, help="--synthetic: positive (and negative) pairs in the .bin"
    )
    parser.add_argument("--nuisance", type=float, default=0.5, help="--synthetic: nuisance strength in [0, 1]")
    parser.add_argument("--workers", type=int, default=None, help="--synthetic: processes (default: all cores)")
    args = parser.parse_args(argv)
    if not args.dataset_dir and not args.synthetic:
        parser.error("one of -D/--dataset_dir or --synthetic is required")
    return args


def main(argv=None):
    args = parse_arguments(argv)
    if args.synthetic:
        from synthetic_faces import build_demo

        train_dir, bin_path = build_demo(
            args.synthetic,
            seed=args.seed,
            train_ids=args.train_ids,
            images_per_id=args.images_per_id,
            test_ids=args.test_ids,
            num_pairs=args.pairs,
            nuisance=args.nuisance,
            workers=args.workers,
        )
        print(f">>>> synthetic demo: training folder {train_dir}, evaluation pairs {bin_path}")
    if not args.dataset_dir:
        return 0
    if args.test_bins:
        MXnet_bin_files_to_tf([os.path.join(args.dataset_dir, name) for name in args.test_bins], args.limit)
        return 0
    prop = read_property(args.dataset_dir)
    if prop:
        print(f">>>> {args.dataset_dir}: {prop[0]} classes, images {prop[1]}x{prop[2]}")
    MXnet_record_to_folder(args.dataset_dir, args.save_dir, args.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
