#!/usr/bin/env python3
"""Prepare training and evaluation data.

- `-D dir`: convert an insightface dataset folder (`train.rec`, `train.idx`, `property`, `*.bin`) into class
  folders `<save_dir>/<class>/<record key>.jpg`, without mxnet. The JPEG bytes are written exactly as stored.
  Resumable: files already present are skipped (each file is written under a temporary name and renamed, so a
  file that exists is complete). Records that cannot be read (truncated `.rec`, `.idx` offsets past its end, a
  NaN, negative or fractional label) are reported with the file and key, counted and skipped.
- `-D dir --tfrecord faces.tfrecord [--shards N] [--shuffle_seed S] [--limit N]` and `--folder DIR --tfrecord
  faces.tfrecord ...`: pack the images of `train.rec` / of a class-folder tree into TFRecord shards
  `faces-0000i-of-0000N.tfrecord` in one streaming pass, without writing any image as a file (resumable after a
  kill; unreadable records reported and skipped; see `packed_records`). Train on `faces-*-of-0000N.tfrecord`.
- `-D dir -T lfw.bin ...`: rewrite those evaluation `.bin` files (names relative to `-D`) in place into a
  plain `[list of bytes, list of bool]` pickle, which our loader and the original code read directly.
- `--synthetic dir`: build the synthetic demo data set (`dir/train/<id>/<k>.jpg` and `dir/val.bin`).
- `--synthetic_ijb dir [--subset IJBB|IJBC] [--ijb_ids N]`: build a synthetic IJB-B / IJB-C layout
  (`dir/<subset>/loose_crop`, `dir/<subset>/meta`) for `IJB_evals.py -d dir -s <subset>`.
- `--json image_list.json --root DIR --output name.tfrecord [--margin 0.0] [--size 112] [--shards N]`: crop the
  faces of an FFEM image list (`{relative_path: {label, x1, y1, x2, y2}}`) into a TFRecord for `train.Train`,
  with a per-item report of the entries skipped (see `json_to_tfrecord`).
"""

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass, field

from tqdm import tqdm

from atomic_io import remove_stale_temp_files, write_bytes_atomic
from bin_files import load_bin, save_bin
from packed_records import (
    MAX_LISTED_RECORDS,
    RecordSource,
    UnreadableItemError,
    folder_to_tfrecord,
    header_class,
    image_keys_and_classes,
    pack_records,
    rec_to_tfrecord,
    warn_skipped,
    write_class_names,
)
from recordio import RecordIOError, RecordIOReader

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG"


def _read_class_and_image(reader, key):
    """`(class index, image bytes)` of record `key` (`packed_records.header_class`). Raises `RecordIOError` naming
    the file, key or offset for a damaged record or a label that is not a non-negative integer."""
    header, image = reader.read_image_record(key)
    return header_class(header, f"{reader.rec_path} key {key}"), image


def _image_path(save_dir, class_index, key, image, known_dirs):
    """Where record `key` goes: `save_dir/<class>/<key>.jpg` (`.png` for PNG bytes). A class folder met for the
    first time in this run is created and cleared of the temporary files a killed run left there."""
    class_dir = os.path.join(save_dir, str(class_index))
    if class_dir not in known_dirs:
        os.makedirs(class_dir, exist_ok=True)
        remove_stale_temp_files(class_dir)
        known_dirs.add(class_dir)
    extension = ".png" if image.startswith(PNG_SIGNATURE) else ".jpg"
    return os.path.join(class_dir, f"{key}{extension}")


@dataclass
class _RecordCounts:
    """What a RecordIO conversion did: files written, already present, and records unreadable (skipped)."""

    written: int = 0
    existing: int = 0
    unreadable: int = 0

    def skip(self, key, error):
        """Count record `key` as unreadable; warn with `error` (naming file, key, offset) for the first few
        (`packed_records.warn_skipped`)."""
        self.unreadable += 1
        warn_skipped(self.unreadable, f"skipping unreadable record key {key}: {error}")


def _convert_records(reader, keys, save_dir):
    """Write the image of each record in `keys` as a class-folder file (see `MXnet_record_to_folder`)."""
    counts, known_dirs = _RecordCounts(), set()
    for key in tqdm(keys, desc=f"{reader.rec_path} -> {save_dir}", unit="img"):
        try:
            class_index, image = _read_class_and_image(reader, key)
        except RecordIOError as error:
            counts.skip(key, error)
            continue
        path = _image_path(save_dir, class_index, key, image, known_dirs)
        if os.path.exists(path):
            counts.existing += 1
        else:
            write_bytes_atomic(path, image)
            counts.written += 1
    return counts


def MXnet_record_to_folder(dataset_dir, save_dir=None, limit=0):
    """Convert `dataset_dir/train.rec` (+ `train.idx`) to class folders `save_dir/<class>/<key>.jpg`.

    `save_dir` defaults to `<dataset_dir>_112x112_folders`; `limit > 0` converts only the first `limit` images.
    Existing files are kept (resume). Damaged records (truncated, an `.idx` offset past the end of the `.rec` or
    without the RecordIO magic word, a label that is NaN, negative or fractional) are skipped with a warning naming
    the file, key and offset or label (the first `MAX_LISTED_RECORDS`; all are counted). Raises `RecordIOError`
    naming the file when no record at all can be read, or the header record 0 cannot. Returns `(save_dir, number
    written, number skipped as existing, number unreadable)`.
    """
    dataset_dir = os.path.normpath(dataset_dir)
    save_dir = save_dir or dataset_dir + "_112x112_folders"
    rec_path = os.path.join(dataset_dir, "train.rec")
    with RecordIOReader(rec_path, os.path.join(dataset_dir, "train.idx"), strict=False) as reader:
        keys, _ = image_keys_and_classes(reader)
        keys = keys[:limit] if limit > 0 else keys
        counts = _convert_records(reader, keys, save_dir)
    if keys and counts.unreadable == len(keys):
        raise RecordIOError(f"{rec_path}: none of its {len(keys)} image records can be read")
    logger.log(logging.WARNING if counts.unreadable else logging.INFO,
               "%s -> %s: %d written, %d already present, %d unreadable records skipped", rec_path, save_dir,
               counts.written, counts.existing, counts.unreadable)
    return save_dir, counts.written, counts.existing, counts.unreadable


def MXnet_bin_files_to_tf(test_bins, limit=0):
    """Rewrite each `.bin` in `test_bins` in place as `[list of bytes, list of bool]`.

    `limit > 0` keeps only the first `limit` and the last `limit` pairs (as the original). Files are loaded with
    the safe loader, so a malicious or broken file is refused with its name (`bin_files.BinFileError`). Returns
    a list of `(path, number of pairs kept)`.
    """
    rewritten = []
    for path in test_bins:
        bins, issame = load_bin(path)
        if limit > 0 and 2 * limit < len(issame):
            keep_pairs = list(range(limit)) + list(range(len(issame) - limit, len(issame)))
            bins = [bins[2 * pair + member] for pair in keep_pairs for member in (0, 1)]
            issame = issame[keep_pairs]
        save_bin(path, bins, issame)
        logger.info("%s: rewritten with %d pairs", path, len(issame))
        rewritten.append((path, len(issame)))
    return rewritten


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


# ----------------------------------------------------------------------------------------------------------------
# JSON image list with bounding boxes (the FFEM layout) -> cropped-face TFRecord

BOX_FIELDS = ("x1", "y1", "x2", "y2")
JPEG_QUALITY = 95
MAX_COORDINATE = 2**31
MAX_CLASSES = 2**24  # 16.8 M classes: 8 times the largest public face set, and int32-safe for training


class BadItemError(UnreadableItemError):
    """One JSON entry that cannot be written; the message says why."""


@dataclass
class BoxListReport:
    """What `json_to_tfrecord` did: `written` images; `problems`, a list of `(key, problem)` for every entry not
    written (or, for duplicate keys, every later occurrence); `clipped`, the keys whose box reached outside the
    image and was clipped to it (written); `classes`; `class_names`, the string labels in class-index order (None
    for integer labels) and `class_names_file`, where they were saved."""

    written: int = 0
    problems: list = field(default_factory=list)
    clipped: list = field(default_factory=list)
    classes: int = 0
    class_names: list | None = None
    class_names_file: str | None = None

    def lines(self):
        """The report as text lines: a summary, then one line per problem and per clipped box."""
        summary = (f"{self.written} images written, {len(self.problems)} entries with problems, "
                   f"{len(self.clipped)} boxes clipped to the image, {self.classes} classes")
        return ([summary] + [f"  {key}: {problem}" for key, problem in self.problems]
                + [f"  {key}: box clipped to the image (written)" for key in self.clipped])


class _Pairs(list):
    """The (key, value) pairs of one JSON object, in file order, duplicates included."""


def load_box_list(json_path):
    """Read an FFEM image list `{relative_path: {label, x1, y1, x2, y2}, ...}`.

    Returns `(entries, problems)`: `entries` a list of `(key, fields dict)` in file order, each key once (the
    first occurrence); `problems` a list of `(key, problem)` for each later occurrence of a key (and each
    repeated field inside an entry, which makes that entry unusable). Raises ValueError naming the file when it
    is not JSON or not a JSON object.
    """
    try:
        with open(json_path, encoding="utf-8") as file:
            top = json.load(file, object_pairs_hook=_Pairs)
    except json.JSONDecodeError as error:
        raise ValueError(f"{json_path}: not valid JSON ({error})") from error
    if not isinstance(top, _Pairs):
        raise ValueError(f"{json_path}: expected a JSON object {{relative_path: {{label, x1, y1, x2, y2}}}}")
    entries, problems, seen = [], [], {}
    for key, value in top:
        if key in seen:
            same = "the same" if value == seen[key] else "a different"
            problems.append((key, f"duplicate key with {same} entry (only the first occurrence is used)"))
            continue
        seen[key] = value
        entries.append((key, value))
    return entries, problems


def entry_fields(value):
    """`(label, (x1, y1, x2, y2))` of one JSON entry; raises BadItemError when fields are missing, repeated or not
    numbers, a coordinate is NaN, infinite or beyond ±`MAX_COORDINATE` pixels, or the label is neither a
    non-negative integer nor a string."""
    if not isinstance(value, _Pairs):
        raise BadItemError(f"entry is {type(value).__name__}, expected an object {{label, x1, y1, x2, y2}}")
    names = [name for name, _ in value]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise BadItemError(f"repeated field(s) {repeated}")
    fields = dict(value)
    missing = [name for name in ("label", *BOX_FIELDS) if name not in fields]
    if missing:
        raise BadItemError(f"missing field(s) {missing}")
    box = tuple(fields[name] for name in BOX_FIELDS)
    if not all(isinstance(coordinate, int | float) and not isinstance(coordinate, bool) for coordinate in box):
        raise BadItemError(f"box {box} holds values that are not numbers")
    if not all(-MAX_COORDINATE <= coordinate <= MAX_COORDINATE for coordinate in box):  # False for NaN
        raise BadItemError(f"box {box} holds NaN, infinite or out-of-range values (beyond ±2^31 pixels)")
    label = fields["label"]
    if isinstance(label, bool) or not isinstance(label, int | str) or (isinstance(label, int) and label < 0):
        raise BadItemError(f"label {label!r} is neither a non-negative integer nor a string")
    return label, box


def class_indices(labels):
    """`(index of each label, class count, class names or None)`.

    Integer labels are class indices as they are (`classes = max + 1`). As soon as one label is a string, every
    label is read as a string and the distinct strings are numbered in natural order (digit runs compare as
    numbers: "id2" < "id10"); the names in index order are returned.
    """
    from folder_scan import natural_sort_key

    if all(isinstance(label, int) for label in labels):
        return list(labels), (max(labels) + 1 if labels else 0), None
    names = sorted({str(label) for label in labels}, key=natural_sort_key)
    index = {name: position for position, name in enumerate(names)}
    return [index[str(label)] for label in labels], len(names), names


def crop_box(box, image_height, image_width, margin):
    """Integer crop `(left, top, right, bottom)` (right / bottom exclusive) of `box` (x1, y1, x2, y2) grown by
    `margin` × its width / height on each side and clipped to the image, plus whether the box itself reached
    outside the image. Raises BadItemError for a zero-area box or one outside the image."""
    x1, y1, x2, y2 = box
    if x2 <= x1 or y2 <= y1:
        raise BadItemError(f"box {box} has zero area (needs x1 < x2 and y1 < y2)")
    if x2 <= 0 or y2 <= 0 or x1 >= image_width or y1 >= image_height:
        raise BadItemError(f"box {box} lies outside the {image_width}x{image_height} image")
    clipped = x1 < 0 or y1 < 0 or x2 > image_width or y2 > image_height
    grow_x, grow_y = margin * (x2 - x1), margin * (y2 - y1)
    left, top = max(0, round(x1 - grow_x)), max(0, round(y1 - grow_y))
    right, bottom = min(image_width, round(x2 + grow_x)), min(image_height, round(y2 + grow_y))
    if right <= left or bottom <= top:
        raise BadItemError(f"box {box} is less than one pixel inside the image")
    return (left, top, right, bottom), clipped


def resize_face(face, size):
    """`face` (H, W, 3) resized to `size` × `size` (aspect ratio not kept): pixel-area averaging when shrinking,
    bilinear interpolation (pixel centres, edges clamped) otherwise."""
    import cv2

    shrinking = face.shape[0] * face.shape[1] > size * size
    return cv2.resize(face, (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def _decoded_image(path):
    """The image file `path` decoded as BGR uint8 (H, W, 3); BadItemError for a missing, empty or unreadable file."""
    import cv2
    import numpy as np

    if not os.path.isfile(path):
        raise BadItemError(f"missing file {path}")
    try:
        encoded = np.fromfile(path, dtype=np.uint8)
    except OSError as error:
        raise BadItemError(f"cannot read {path} ({error})") from error
    if encoded.size == 0:
        raise BadItemError(f"empty image file {path} (0 bytes)")
    try:
        image = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise BadItemError(f"unreadable image {path}")
    return image


def cropped_face_jpeg(path, box, margin, size):
    """JPEG bytes of the face cut from the image file `path` by `box`, plus whether the box was clipped; raises
    BadItemError for a missing, empty or unreadable file and for a bad box."""
    import cv2

    image = _decoded_image(path)
    (left, top, right, bottom), clipped = crop_box(box, image.shape[0], image.shape[1], margin)
    face = resize_face(image[top:bottom, left:right], size)
    ok, encoded = cv2.imencode(".jpg", face, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise BadItemError(f"could not encode the face of {path} as JPEG")
    return encoded.tobytes(), clipped


def check_class_count(json_path, usable, classes):
    """Refuse integer labels that would make more than `MAX_CLASSES` classes (ValueError naming the file, the key
    and its label); warn when there are more than ten times as many classes as entries."""
    if classes > MAX_CLASSES:
        key, label = max(((key, label) for key, label, _ in usable), key=lambda pair: pair[1])
        raise ValueError(
            f"{json_path}: {key} has label {label}, which would make {classes} classes (at most {MAX_CLASSES}); "
            "integer labels are class indices: number the classes 0..K-1, or give string labels to have them "
            "numbered densely"
        )
    if classes > 10 * max(len(usable), 1):
        logger.warning("%s: %d classes for %d entries (integer labels are class indices): most classes have no "
                       "image", json_path, classes, len(usable))


def usable_items(json_path, entries, report):
    """`(key, class index, box)` of the `entries` whose fields are good (the others go to `report.problems`);
    sets `report.classes` and `report.class_names` (see `class_indices`, `check_class_count`)."""
    usable = []
    for key, value in entries:
        try:
            usable.append((key, *entry_fields(value)))
        except BadItemError as error:
            report.problems.append((key, str(error)))
    labels, report.classes, report.class_names = class_indices([label for _, label, _ in usable])
    check_class_count(json_path, usable, report.classes)
    return [(key, index, box) for (key, _, box), index in zip(usable, labels, strict=True)]


def box_list_source(json_path, root, items, margin, size, report):
    """The `packed_records.RecordSource` of the usable `(key, class index, box)` items of an image list: each
    face cut from its image file by `cropped_face_jpeg` (a `BadItemError` skips it), a clipped box noted in
    `report.clipped`."""
    entries = {key: (label, box) for key, label, box in items}

    def read(key):
        label, box = entries[key]
        image, clipped = cropped_face_jpeg(os.path.join(root, key), box, margin, size)
        if clipped:
            report.clipped.append(key)
        return label, image

    return RecordSource(os.fspath(json_path), list(entries), read, report.classes)


def json_to_tfrecord(json_path, root, output, margin=0.0, size=112, shards=1, shuffle_seed=None):
    """Crop the faces of an FFEM image list into TFRecord file(s) that `train.Train(data_path=...)` reads.

    `json_path`: `{relative_path: {label, x1, y1, x2, y2}}` with paths relative to `root` and the box in pixels
    (left, top, right, bottom; right / bottom exclusive). Each face is the box grown by `margin` × its width /
    height on each side, clipped to the image, resized to `size` × `size` (see `resize_face`) and stored as a
    JPEG (quality 95) in the (image, label) layout of `tfrecords` (the first record of each file also holds
    `classes` and `total`, that file's record count). Labels: see `class_indices`; integer labels making more
    than `MAX_CLASSES` classes (a label of 10^12) are refused with a ValueError naming the key. The files are
    written by `packed_records.pack_records`: `shards > 1` writes `<stem>-0000i-of-0000N.tfrecord` files, each
    a consecutive run of the entries; `shuffle_seed` (int) puts the entries in a random order first (recommended:
    the reader's shuffle buffer mixes only nearby records); each file is written atomically, and a rerun after a
    kill keeps the files already finished. Entries with a missing / empty / unreadable file, a bad box (zero
    area, outside the image, NaN or infinite coordinates) or bad fields, and later occurrences of a duplicate
    key, are skipped and listed in the report; the rest is written. Returns `(list of the files written,
    BoxListReport)`.
    """
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    if size < 1 or margin < 0:
        raise ValueError(f"size must be >= 1 and margin >= 0, got size={size}, margin={margin}")
    entries, problems = load_box_list(json_path)
    report = BoxListReport(problems=problems)
    items = usable_items(json_path, entries, report)
    packed = pack_records(box_list_source(json_path, root, items, margin, size, report), output, shards,
                          shuffle_seed)
    report.written = packed.written + packed.resumed
    report.problems += packed.problems
    if report.class_names is not None:
        report.class_names_file = write_class_names(output, report.class_names)
    return packed.files, report


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
    parser.add_argument("--synthetic_ijb", metavar="DIR",
                        help="write a synthetic IJB layout into DIR (also uses --seed, --nuisance, --workers)")
    parser.add_argument("--subset", default="IJBB", choices=["IJBB", "IJBC"], help="--synthetic_ijb: file names")
    parser.add_argument("--ijb_ids", type=int, default=40, help="--synthetic_ijb: subjects (3 templates x 3 images)")
    parser.add_argument("--json", help="FFEM image list {relative_path: {label, x1, y1, x2, y2}} to crop into --output")
    parser.add_argument("--root", default=".", help="--json: folder the image paths are relative to")
    parser.add_argument("--output", help="--json: output TFRecord, e.g. faces.tfrecord")
    parser.add_argument("--margin", type=float, default=0.0, help="--json: box growth per side, fraction of its size")
    parser.add_argument("--size", type=int, default=112, help="--json: output faces are size x size")
    parser.add_argument("--tfrecord", metavar="OUTPUT",
                        help="-D / --folder: pack the images into TFRecord shards named after OUTPUT (e.g. "
                             "faces.tfrecord -> faces-0000i-of-0000N.tfrecord) instead of class folders")
    parser.add_argument("--folder", metavar="DIR", help="class-per-folder tree to pack into --tfrecord shards")
    parser.add_argument("--shards", type=int, default=None,
                        help="number of TFRecord files (--json: default one; --tfrecord: one per 50,000 images)")
    parser.add_argument("--shuffle_seed", type=int, default=None,
                        help="seed of the records' random order (--json: default the JSON order; --tfrecord: 0)")
    args = parser.parse_args(argv)
    if not (args.dataset_dir or args.synthetic or args.synthetic_ijb or args.json or args.folder):
        parser.error("one of -D/--dataset_dir, --synthetic, --synthetic_ijb, --json or --folder is required")
    if args.json and not args.output:
        parser.error("--json needs --output name.tfrecord")
    if args.folder and not args.tfrecord:
        parser.error("--folder needs --tfrecord name.tfrecord")
    return args


def pack_to_tfrecord(args):
    """The `--tfrecord` conversions (`-D` and / or `--folder`, `packed_records`): pack, then print a summary, the
    first skipped items and the shard pattern to train on."""
    seed = 0 if args.shuffle_seed is None else args.shuffle_seed
    reports = []
    if args.dataset_dir:
        reports.append(rec_to_tfrecord(args.dataset_dir, args.tfrecord, args.shards, seed, args.limit))
    if args.folder:
        reports.append(folder_to_tfrecord(args.folder, args.tfrecord, args.shards, seed))
    for report in reports:
        print(f">>>> {args.tfrecord}: {report.summary()}, {report.classes} classes")
        for key, why in report.problems[:MAX_LISTED_RECORDS]:
            print(f"  skipped {key}: {why}")
        pattern = report.paths[0] if len(report.paths) == 1 else report.paths[0].replace("-00000-of-", "-*-of-")
        print(f">>>> train with: Train(data_path={pattern!r}, ...)")


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
    if args.synthetic_ijb:
        from synthetic_faces import build_ijb_layout

        build_ijb_layout(args.synthetic_ijb, args.subset, seed=args.seed, num_ids=args.ijb_ids,
                         nuisance=args.nuisance, workers=args.workers)
        print(f">>>> synthetic {args.subset}: {args.synthetic_ijb}/{args.subset} (evaluate with IJB_evals.py "
              f"-d {args.synthetic_ijb} -s {args.subset})")
    if args.json:
        paths, report = json_to_tfrecord(args.json, args.root, args.output, args.margin, args.size, args.shards or 1,
                                         args.shuffle_seed)
        print("\n".join([f">>>> {args.json}: wrote {', '.join(paths) or 'nothing'}", *report.lines()]))
    if args.tfrecord:
        pack_to_tfrecord(args)
        return 0
    if not args.dataset_dir:
        return 0
    if args.test_bins:
        for path, pairs in MXnet_bin_files_to_tf([os.path.join(args.dataset_dir, name) for name in args.test_bins],
                                                 args.limit):
            print(f">>>> {path}: rewritten with {pairs} pairs")
        return 0
    prop = read_property(args.dataset_dir)
    if prop:
        print(f">>>> {args.dataset_dir}: {prop[0]} classes, images {prop[1]}x{prop[2]}")
    save_dir, written, existing, unreadable = MXnet_record_to_folder(args.dataset_dir, args.save_dir, args.limit)
    print(f">>>> {save_dir}: {written} written, {existing} already present, {unreadable} unreadable records skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
