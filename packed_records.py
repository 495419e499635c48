"""Images → sharded (image, label) TFRecord files, in one streaming pass that a killed run resumes.

Sources (`RecordSource`: keys and a reader of one key): an insightface `.rec` + `.idx` (`rec_source`, read
through a memory map, a shard's records parsed together with numpy, `rec_read_many`), a class-per-folder tree
(`folder_source`), and `prepare_data.json_to_tfrecord`'s cropped faces. The encoded image bytes go straight into
the shards: no image is written as a file of its own, nothing is decoded. A shard is checked (`complete_images`)
and laid out (`tfrecords.frame_image_label_records`) with numpy, and written in one call when google-crc32c is
installed (`tfrecords.write_framed_records`).

Layout and order: the items are put in a random order seeded by `shuffle_seed` (None keeps the source's order;
the reader's shuffle buffer only mixes nearby records, so a class-sorted source must be shuffled here), and shard
`i` of `N` (`shard_paths`: `<stem>-0000i-of-0000N.tfrecord`, the output itself for one shard) takes the `i`-th of
`N` consecutive runs of that order. Every record holds `image` and `label`; the first record of a shard also
`classes`, `total` (its record count) and `conversion`, a tag of the conversion (item count, shards, seed).

Resuming: shards are made one at a time, in order. A shard's items are read, checked and encoded in memory (a
shard's worth of JPEG bytes), then the shard is written under a temporary name and renamed
(`atomic_io.atomic_path`): a shard under its final name is complete and final. A rerun with the same source,
shard count and seed skips every shard already present with the same tag and redoes the others; a shard present
with another tag is refused. Items that cannot be read (a truncated record, a bad header or label, bytes that are
not a complete image, `image_decode.looks_like_complete_image`) are reported with the source and key and skipped.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import contextlib
import itertools
import logging
import math
import mmap
import os
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from atomic_io import remove_stale_temp_files, write_text_atomic
from folder_scan import ImageClassesRule_map, scan_folder
from recordio import (
    HEADER_SIZE,
    LENGTH_MASK,
    MAGIC,
    WHOLE,
    RecordIOError,
    RecordIOReader,
    read_record_at,
    unpack,
)

# TensorFlow (with `image_decode` and `tfrecords`) is imported where a shard is made: prepare_data.py imports this
# module, and its other commands start without TensorFlow.

logger = logging.getLogger(__name__)

IMAGES_PER_SHARD = 50_000  # default shard size: 200–400 MB of 112x112 face JPEGs, held in memory while written
MAX_LISTED_RECORDS = 20  # unreadable items warned about one by one; the others are only counted and listed


class UnreadableItemError(ValueError):
    """An item of a source that cannot be packed; the message says where and why."""


@dataclass
class RecordSource:
    """Images to pack.

    Attributes:
        description: what the source is, for messages (a file or folder path).
        keys: one key per image, in the source's order (a list, or an int array).
        read: key → `(class index, encoded image bytes)`; raises `UnreadableItemError` for an item to skip.
        classes: the class count known before reading (0: found as the largest label + 1).
        read_many: optional, `(positions in keys, PackReport) → (keys, labels, images)` of the readable items
            among them, the others noted in the report: many items read at once (`rec_source`).
    """

    description: str
    keys: list
    read: Callable
    classes: int = 0
    read_many: Callable | None = None


@dataclass
class PackReport:
    """What `pack_records` did: the shard `paths`, the records `written` by this run and those of the shards
    found finished (`resumed`, in `finished_shards`), the `problems` `(key, why)` of the items skipped, and
    `classes` (the largest class count of the shard headers)."""

    paths: list
    written: int = 0
    resumed: int = 0
    finished_shards: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    classes: int = 0

    @property
    def files(self):
        """The shard files that exist (a shard with no readable item is not written)."""
        return [path for path in self.paths if os.path.exists(path)]

    def summary(self):
        """One line: shards, records written and resumed, items skipped."""
        return (f"{len(self.paths)} shards ({len(self.finished_shards)} already finished), {self.written} records "
                f"written, {self.resumed} in finished shards, {len(self.problems)} unreadable items skipped")

    def note_problem(self, description, key, why):
        """Record item `key` of the source `description` as skipped because of `why` (`warn_skipped`)."""
        self.problems.append((key, why))
        warn_skipped(len(self.problems), f"{description}: skipping {key}: {why}")


def warn_skipped(count, message):
    """Warn `message` about the `count`-th item skipped when `count` ≤ `MAX_LISTED_RECORDS`; at the next one,
    warn once that the others are only counted."""
    if count <= MAX_LISTED_RECORDS:
        warnings.warn(message, stacklevel=3)
    elif count == MAX_LISTED_RECORDS + 1:
        warnings.warn(f"more than {MAX_LISTED_RECORDS} unreadable items: the others are only counted", stacklevel=3)


# ----------------------------------------------------------------------------------------------------------------
# Shard names and order


def output_stem(output):
    """`output` without its `.tfrecord` extension."""
    output = os.fspath(output)
    return output[: -len(".tfrecord")] if output.endswith(".tfrecord") else output


def shard_paths(output, shards):
    """Output files: `output` itself for one shard, else `<stem>-00000-of-0000N.tfrecord` beside it."""
    if shards == 1:
        return [os.fspath(output)]
    stem = output_stem(output)
    return [f"{stem}-{index:05d}-of-{shards:05d}.tfrecord" for index in range(shards)]


def write_class_names(output, class_names):
    """Save class names, one a line in class-index order, as `<output stem>_classes.txt`; its path."""
    path = output_stem(output) + "_classes.txt"
    write_text_atomic(path, "".join(name + "\n" for name in class_names))
    return path


def default_shard_count(images):
    """Shards for `images` items when none is asked: one per `IMAGES_PER_SHARD` images, at least one."""
    return max(1, math.ceil(images / IMAGES_PER_SHARD))


def shard_members(count, shards, shuffle_seed):
    """Item indices of each shard: `shards` consecutive, near-equal runs of a permutation of `range(count)`
    (`numpy.random.default_rng(shuffle_seed)`; the identity when `shuffle_seed` is None)."""
    order = np.arange(count) if shuffle_seed is None else np.random.default_rng(shuffle_seed).permutation(count)
    bounds = [count * index // shards for index in range(shards + 1)]
    return [order[start:end] for start, end in itertools.pairwise(bounds)]


def conversion_tag(count, shards, shuffle_seed):
    """The bytes that tie a shard to its conversion: item count, shard count and seed."""
    return f"items={count} shards={shards} shuffle_seed={shuffle_seed}".encode()


# ----------------------------------------------------------------------------------------------------------------
# One shard

# `image_decode.looks_like_complete_image`'s rule, on numpy arrays: signatures accepted with the end marker within
# the last `COMPLETENESS_TAIL_BYTES` bytes (JPEG, PNG), and signatures accepted alone (GIF, BMP, WebP, JPEG XL).
ENDED_SIGNATURES = [(b"\xff\xd8\xff", b"\xff\xd9"), (b"\x89PNG", b"IEND")]
SIGNATURES = [b"GIF8", b"BM", b"RIFF", b"\xff\x0a", b"\x00\x00\x00\x0c"]


def bytes_from(buffer, starts, lengths, width):
    """`buffer[starts[i] : starts[i] + min(lengths[i], width)]` for every i, zero-padded: (N, width) uint8."""
    columns = np.arange(width)
    used = columns < np.minimum(lengths, width)[:, None]
    return np.where(used, buffer[np.where(used, starts[:, None] + columns, 0)], 0).astype(np.uint8)


def _starts_with(heads, lengths, signature):
    """Whether each image, of first 4 bytes `heads` (N,) as little-endian uint32 words (zero-padded) and
    `lengths` (N,), starts with `signature` (at most 4 bytes)."""
    mask = (1 << 8 * len(signature)) - 1
    return (lengths >= len(signature)) & ((heads & mask) == int.from_bytes(signature, "little"))


def _contains(tails, marker):
    """Whether `marker` occurs in each row of `tails` (N, w) uint8."""
    positions = tails.shape[1] - len(marker) + 1
    found = np.ones((len(tails), positions), bool)
    for index, byte in enumerate(marker):
        found &= tails[:, index : index + positions] == byte
    return found.any(axis=1)


def complete_images(buffer, starts, lengths):
    """`image_decode.looks_like_complete_image` of the images `buffer[starts[i] : starts[i] + lengths[i]]`
    (uint8 buffer, (N,) offsets and lengths), computed with numpy on their first and last bytes: (N,) bool."""
    from image_decode import COMPLETENESS_HEAD_BYTES, COMPLETENESS_TAIL_BYTES

    heads = bytes_from(buffer, starts, lengths, COMPLETENESS_HEAD_BYTES).view("<u4")[:, 0]  # 4 bytes: one word
    tail_lengths = np.minimum(lengths, COMPLETENESS_TAIL_BYTES)
    tails = bytes_from(buffer, starts + lengths - tail_lengths, tail_lengths, COMPLETENESS_TAIL_BYTES)
    complete = np.zeros(len(starts), bool)
    for signature, end_marker in ENDED_SIGNATURES:
        complete |= _starts_with(heads, lengths, signature) & _contains(tails, end_marker)
    for signature in SIGNATURES:
        complete |= _starts_with(heads, lengths, signature)
    return complete


def read_items(source, members, report):
    """`(keys, labels, images)` of the readable items at positions `members` of `source.keys` (unreadable ones go
    to `report`): `source.read_many` when the source has it, else `source.read` one key at a time."""
    if source.read_many is not None:
        return source.read_many(members, report)
    keys, labels, images = [], [], []
    for key in (source.keys[index] for index in members):
        try:
            label, image = source.read(key)
        except UnreadableItemError as error:
            report.note_problem(source.description, key, str(error))
            continue
        keys.append(key)
        labels.append(label)
        images.append(image)
    return keys, labels, images


def read_shard(source, members, report):
    """`(labels, images, FramedRecords of them)` of the complete, readable images at positions `members` of
    `source.keys` (the others go to `report`); `(labels, images, None)` when there is none."""
    from image_decode import UNREADABLE
    from tfrecords import frame_image_label_records

    keys, labels, images = read_items(source, members, report)
    framed = frame_image_label_records(images, labels) if images else None
    complete = complete_images(framed.buffer, framed.image_starts, framed.image_lengths) if images else []
    if not all(complete):
        for key in itertools.compress(keys, ~complete):
            report.note_problem(source.description, key, UNREADABLE)
        labels, images = list(itertools.compress(labels, complete)), list(itertools.compress(images, complete))
        framed = frame_image_label_records(images, labels) if images else None
    return labels, images, framed


def finished_shard_header(path, tag):
    """`(records, classes)` of the shard `path` when a run of the conversion `tag` finished it; None when it does
    not exist. A file of another conversion, or not a TFRecord, is refused (ValueError naming it)."""
    import tensorflow as tf

    from tfrecords import first_example

    if not os.path.exists(path):
        return None
    try:
        features = first_example(path).features.feature
    except (tf.errors.OpError, ValueError) as error:
        raise ValueError(f"{path} exists and is not a TFRecord shard (remove it to write the shard): {error}") \
            from error
    found = features["conversion"].bytes_list.value[0] if "conversion" in features else b"(no tag)"
    if found != tag:
        raise ValueError(f"{path} belongs to another conversion ({found.decode()}, this one is {tag.decode()}): "
                         "remove the old shards or write to another output name")
    return int(features["total"].int64_list.value[0]), int(features["classes"].int64_list.value[0])


def pack_shard(source, members, path, tag, report):
    """Read, check, encode and write one shard of the items at positions `members` of `source.keys` to `path`;
    returns the records written (0: every item was unreadable, no file). Its first record also holds `classes`,
    `total` and the conversion `tag`."""
    from tfrecords import image_label_example, write_framed_records

    labels, images, framed = read_shard(source, members, report)
    if framed is None:
        return 0
    classes = max(source.classes, int(max(labels)) + 1)
    header = image_label_example(bytes(images[0]), int(labels[0]), classes, len(images), tag)
    write_framed_records(path, framed, header.SerializeToString())
    report.classes = max(report.classes, classes)
    return len(images)


def pack_records(source, output, shards=None, shuffle_seed=0):
    """Pack the images of `source` into `shards` TFRecord files named after `output` (see the module docstring).

    Args:
        source: a `RecordSource`.
        output: the output name, e.g. `faces.tfrecord` (shards: `faces-0000i-of-0000N.tfrecord`).
        shards: number of files (None: `default_shard_count`).
        shuffle_seed: seed of the items' order (None: the source's order).

    Returns:
        A `PackReport`. Read the shards with `train.Train(data_path="<stem>-*-of-0000N.tfrecord")`.
    """
    shards = shards or default_shard_count(len(source.keys))
    paths, tag = shard_paths(output, shards), conversion_tag(len(source.keys), shards, shuffle_seed)
    output_dir = os.path.dirname(os.path.abspath(output))
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_temp_files(output_dir)
    report = PackReport(paths)
    progress = tqdm(total=len(source.keys), desc=f"{source.description} -> {output}", unit="img")
    with progress:
        for path, members in zip(paths, shard_members(len(source.keys), shards, shuffle_seed), strict=True):
            finished = finished_shard_header(path, tag)
            if finished is not None:
                report.resumed += finished[0]
                report.classes = max(report.classes, finished[1])
                report.finished_shards.append(path)
            else:
                report.written += pack_shard(source, members, path, tag, report)
            progress.update(len(members))
    logger.log(logging.WARNING if report.problems else logging.INFO, "%s -> %s: %s", source.description, output,
               report.summary())
    return report


# ----------------------------------------------------------------------------------------------------------------
# Sources


MAX_CLASS_INDEX = 2**53  # float labels are exact integers below it


def class_index(value, source):
    """`value` (a float label) as a class index; `RecordIOError` naming `source` unless a non-negative integer
    below `MAX_CLASS_INDEX`."""
    value = float(value)
    if not (math.isfinite(value) and 0 <= value < MAX_CLASS_INDEX and value.is_integer()):
        raise RecordIOError(f"{source}: label {value} is not a non-negative integer class index")
    return int(value)


def header_class(header, source):
    """The class index of an image record's `IRHeader`: `label` for a single-label header, the first label of a
    multi-label one (`RecordIOError` naming `source` for a NaN, negative or fractional label)."""
    return class_index(header.label if header.flag == 0 else header.label[0], source)


def image_key_array_and_classes(reader):
    """`(image record keys (N,) int64, classes)` of an open `RecordIOReader`. When record 0 is the insightface
    header (flag > 0, labels `[first identity record, end]`), the images are keys `1 … label[0] − 1` and `classes =
    label[1] − label[0]`; otherwise every key is an image and classes is 0 (unknown)."""
    keys = reader.key_array
    if len(keys) and keys[0] == 0:
        source = f"{reader.rec_path} key 0"
        header, _ = unpack(reader.read(0), source)
        if header.flag > 0:
            first_non_image = class_index(header.label[0], source)
            classes = class_index(header.label[1], source) - first_non_image if header.flag > 1 else 0
            return keys[(keys >= 1) & (keys < first_non_image)], max(classes, 0)
    return keys, 0


def image_keys_and_classes(reader):
    """`image_key_array_and_classes` with the keys as a list of ints."""
    keys, classes = image_key_array_and_classes(reader)
    return keys.tolist(), classes


def payload_at(mapped, offset, rec_path):
    """The payload of the record at byte `offset` of a memory-mapped `.rec`: sliced directly when the record is
    one whole part (the usual case), else assembled by `recordio.read_record_at` (which also names what is wrong
    with a damaged record)."""
    if offset + 8 > len(mapped):
        raise RecordIOError(f"{rec_path}: offset {offset} lies beyond the end of the file ({len(mapped)} bytes)")
    magic, lrec = struct.unpack_from("<II", mapped, offset)
    end = offset + 8 + (lrec & LENGTH_MASK)
    if magic == MAGIC and lrec >> 29 == WHOLE and end <= len(mapped):
        return mapped[offset + 8 : end]
    return read_record_at(mapped, offset, rec_path)[0]


# The first 36 bytes of a record: its part header, the IRHeader, the first label of a multi-label header.
RECORD_START = np.dtype([("magic", "<u4"), ("lrec", "<u4"), ("flag", "<u4"), ("label", "<f4"), ("id", "<u8"),
                         ("id2", "<u8"), ("first_label", "<f4")])


def parse_whole_records(array, offsets):
    """The records at byte `offsets` (N,) of a `.rec` file's bytes `array` (uint8), parsed all at once.

    Returns `(labels (N,) float64, image starts (N,), image ends (N,), usable (N,) bool)`: usable where the record
    lies within the file in one whole part with the magic word, and its label (`label`, or the first of `flag`
    labels) is an integer in `[0, MAX_CLASS_INDEX)`. The others are to be read one by one (`payload_at`,
    `header_class`): a record in several parts is then assembled, a damaged one reported.
    """
    offsets = np.asarray(offsets, np.int64)
    inside = (offsets >= 0) & (offsets + RECORD_START.itemsize <= len(array))
    starts = np.where(inside, offsets, 0)
    fields = array[starts[:, None] + np.arange(RECORD_START.itemsize)].view(RECORD_START)[:, 0]
    flags = fields["flag"].astype(np.int64)
    labels = np.where(flags == 0, fields["label"], fields["first_label"]).astype(np.float64)
    image_starts = offsets + 8 + HEADER_SIZE + 4 * flags
    ends = offsets + 8 + (fields["lrec"] & LENGTH_MASK)
    whole = (fields["magic"] == MAGIC) & (fields["lrec"] >> 29 == WHOLE) & (image_starts <= ends)
    class_labels = (labels >= 0) & (labels < MAX_CLASS_INDEX) & (np.floor(labels) == labels)
    usable = inside & whole & (ends <= len(array)) & class_labels
    return labels, image_starts, ends, usable


def rec_read_many(mapped, offsets, keys, read, rec_path):
    """`RecordSource.read_many` of a memory-mapped `.rec`: records at byte `offsets` (N,) of the items `keys` (N,),
    parsed together (`parse_whole_records`), the images memoryview slices of `mapped` (no copy); the records
    not parsed that way are read by `read` (key → `(class, image)`, `UnreadableItemError` when unreadable)."""
    array, view = np.frombuffer(mapped, np.uint8), memoryview(mapped)

    def read_many(members, report):
        item_keys = keys[members].tolist()
        labels, starts, ends, usable = parse_whole_records(array, offsets[members])
        labels = labels.astype(np.int64).tolist()
        images = [view[start:end] for start, end in zip(starts.tolist(), ends.tolist(), strict=True)]
        for index in np.flatnonzero(~usable):
            try:
                labels[index], images[index] = read(item_keys[index])
                usable[index] = True
            except UnreadableItemError as error:
                report.note_problem(rec_path, item_keys[index], str(error))
        return [list(itertools.compress(items, usable)) for items in (item_keys, labels, images)]

    return read_many


def physical_memory():
    """Bytes of physical memory (0 where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def map_file(file, size):
    """A read-only memory map of the open binary `file` of `size` bytes. Under a quarter of the physical memory, it
    is mapped with `MAP_POPULATE` (Linux): the file is read ahead and its pages mapped in one call, and the random
    reads of a conversion then run ~3x faster than through page faults."""
    populate = getattr(mmap, "MAP_POPULATE", 0) if size < physical_memory() // 4 else 0
    if populate:
        return mmap.mmap(file.fileno(), 0, flags=mmap.MAP_SHARED | populate, prot=mmap.PROT_READ)
    return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


@contextlib.contextmanager
def rec_source(dataset_dir, limit=0):
    """Context manager: the `RecordSource` of `dataset_dir/train.rec` (+ `train.idx`), keys the image record keys
    (the first `limit` when > 0), labels as `header_class` reads them, `classes` from the header record; a shard's
    records are read together (`rec_read_many`)."""
    rec_path = os.path.join(os.fspath(dataset_dir), "train.rec")
    with RecordIOReader(rec_path, os.path.join(os.fspath(dataset_dir), "train.idx"), strict=False) as reader:
        if reader.size == 0:
            raise RecordIOError(f"{rec_path}: empty file")
        keys, classes = image_key_array_and_classes(reader)
        keys = keys[:limit] if limit > 0 else keys
        mapped = map_file(reader.file, reader.size)  # closed when freed (an image slice may outlive this block)

        def read(key):
            source = f"{rec_path} key {key}"
            try:
                header, image = unpack(payload_at(mapped, int(reader.offsets_of([key])[0]), rec_path), source)
                return header_class(header, source), image
            except RecordIOError as error:
                raise UnreadableItemError(str(error)) from error
            except ValueError as error:  # an mmap seek past the end of a truncated file
                raise UnreadableItemError(f"{source}: {error}") from error

        read_many = rec_read_many(mapped, reader.offsets_of(keys), keys, read, rec_path)
        yield RecordSource(rec_path, keys, read, classes, read_many)


def folder_source(folder, class_order="natural"):
    """`(RecordSource of a class-per-folder tree, class names in index order)`: keys are the image paths
    (`folder_scan.scan_folder`), the class of an image its folder's index (`folder_scan.ImageClassesRule_map`)."""
    names, _, class_names = scan_folder(os.fspath(folder), class_order)
    class_of = ImageClassesRule_map(os.fspath(folder), class_order=class_order)

    def read(path):
        try:
            with open(path, "rb") as file:
                return class_of(path), file.read()
        except OSError as error:
            raise UnreadableItemError(f"cannot read {path} ({error})") from error

    return RecordSource(os.fspath(folder), names, read, len(class_names)), class_names


def rec_to_tfrecord(dataset_dir, output, shards=None, shuffle_seed=0, limit=0):
    """Pack `dataset_dir/train.rec` (+ `train.idx`) into TFRecord shards (`pack_records`); `limit > 0` packs
    only the first `limit` images. Raises `RecordIOError` naming the file when no image record can be read.
    Returns the `PackReport`."""
    with rec_source(dataset_dir, limit) as source:
        report = pack_records(source, output, shards, shuffle_seed)
    if len(source.keys) and len(report.problems) == len(source.keys):
        raise RecordIOError(f"{source.description}: none of its {len(source.keys)} image records can be read")
    return report


def folder_to_tfrecord(folder, output, shards=None, shuffle_seed=0, class_order="natural"):
    """Pack a class-per-folder tree into TFRecord shards (`pack_records`) and save its class names to
    `<output stem>_classes.txt` (`write_class_names`). Returns the `PackReport`."""
    source, class_names = folder_source(folder, class_order)
    report = pack_records(source, output, shards, shuffle_seed)
    write_class_names(output, class_names)
    return report
