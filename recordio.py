"""MXNet RecordIO (`.rec` + `.idx`) read and write in plain Python, without mxnet.

Byte layout (the one mxnet's own `MXIndexedRecordIO` writes):

- `.idx` is text, one line per record: `key<TAB>offset`, the byte offset of the record's first part in `.rec`.
- `.rec` is a sequence of parts. A part is `uint32 magic 0xCED7230A`, `uint32 lrec` (little-endian), then `length`
  payload bytes and zero padding up to a multiple of 4. `cflag = lrec >> 29`, `length = lrec & (2**29 - 1)`;
  cflag 0 is a whole record, 1 the first part, 2 a middle part, 3 the last part. The writer cuts a record wherever
  the magic word appears 4-byte aligned inside its payload and drops the word there, so a reader puts it back
  between the parts.
- A record payload used for images starts with the header `struct <IfQQ` (24 bytes): `flag`, `label` (float32),
  `id`, `id2`. When `flag > 0`, `flag` float32 labels follow the header (and `label` is unused). The image bytes
  come last.
"""

import logging
import os
import struct
import warnings
from typing import NamedTuple

import numpy as np

from atomic_io import atomic_path

logger = logging.getLogger(__name__)

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_MASK = (1 << 29) - 1
HEADER_FORMAT = "<IfQQ"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)

WHOLE, FIRST, MIDDLE, LAST = 0, 1, 2, 3


class RecordIOError(ValueError):
    """A `.rec` / `.idx` file that does not follow the RecordIO layout; the message names the file and the place."""


class IRHeader(NamedTuple):
    """The image-record header: `label` is a float (flag 0) or a float32 array of `flag` labels."""

    flag: int
    label: float | np.ndarray
    id: int
    id2: int


def _padded(length):
    """Number of bytes a payload of `length` bytes occupies in the file (rounded up to a multiple of 4)."""
    return (length + 3) & ~3


def _parse_idx_lines(idx_path):
    """`(keys, offsets)` of an `.idx` file read line by line; `RecordIOError` naming the first bad line."""
    keys, offsets = [], []
    with open(idx_path, encoding="ascii") as file:
        for line_number, line in enumerate(file, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 2 or not (fields[0].isdigit() and fields[1].isdigit()):
                raise RecordIOError(f"{idx_path}: line {line_number} is not 'key<TAB>offset': {line.rstrip()!r}")
            keys.append(int(fields[0]))
            offsets.append(int(fields[1]))
    return np.array(keys, np.int64), np.array(offsets, np.int64)


def read_idx_arrays(idx_path):
    """Read an `.idx` file into `(keys, byte offsets)`, two int64 arrays (N,) in the file's order: parsed by
    numpy (16 bytes a record in memory), the file read line by line only to name a bad line."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's warning about an empty file
            table = np.loadtxt(idx_path, dtype=np.int64, comments=None, ndmin=2, encoding="ascii")
    except ValueError:
        table = None
    if table is None or table.shape[1] != 2 or np.any(table < 0):
        return _parse_idx_lines(idx_path)
    return table[:, 0].copy(), table[:, 1].copy()


def read_idx(idx_path):
    """Read an `.idx` file into a dict `{key: byte offset}` (both ints), keeping the file's order."""
    keys, offsets = read_idx_arrays(idx_path)
    return dict(zip(keys.tolist(), offsets.tolist(), strict=True))


def read_record_at(file, offset, rec_path="<rec>"):
    """Read the record whose first part starts at byte `offset` of the open binary `file`.

    Returns `(payload bytes, offset just after the record)`. Raises `RecordIOError` naming `rec_path` and the
    offset for a wrong magic word, an unexpected part flag or a record cut short by the end of the file.
    """
    parts = []
    position = offset
    while True:
        file.seek(position)
        head = file.read(8)
        if len(head) < 8:
            raise RecordIOError(f"{rec_path}: truncated record at offset {offset} (file ends inside a part header)")
        magic, lrec = struct.unpack("<II", head)
        if magic != MAGIC:
            raise RecordIOError(
                f"{rec_path}: no RecordIO magic word at offset {position} (found 0x{magic:08x}); "
                "the .idx offsets do not match this .rec file or the file is damaged"
            )
        cflag, length = lrec >> 29, lrec & LENGTH_MASK
        expected = (WHOLE, FIRST) if not parts else (MIDDLE, LAST)
        if cflag not in expected:
            raise RecordIOError(f"{rec_path}: part flag {cflag} at offset {position} where {expected} was expected")
        data = file.read(length)
        if len(data) < length:
            raise RecordIOError(
                f"{rec_path}: truncated record at offset {offset} (needs {length} bytes, {len(data)} left)"
            )
        parts.append(data)
        position += 8 + _padded(length)
        if cflag in (WHOLE, LAST):
            return MAGIC_BYTES.join(parts), position


def _beyond_the_end(idx_path, key, offset, rec_path, size):
    """The message for an `.idx` entry whose offset lies at or past the end of the `.rec` file."""
    return (f"{idx_path}: key {key} points to offset {offset}, beyond the end of {rec_path} ({size} bytes); the "
            ".idx and .rec files do not belong together or the .rec is truncated")


class RecordIOReader:
    """Random access to the records of `rec_path` through its `.idx` (default: same stem, `.idx` suffix).

    Without an index file the records are found by reading the `.rec` sequentially (keys 0, 1, 2, ...).
    `strict=True` refuses, when opening, an `.idx` with an offset past the end of the `.rec` and a `.rec` whose
    sequential scan meets a damaged record. `strict=False` opens them anyway (for converting what can be read):
    reading such a key raises `RecordIOError` naming the files, key and offset, and a sequential scan keeps the
    keys up to the damaged record (reading that one raises) and logs a warning that later records are lost.
    Use as a context manager, or call `close()`.
    """

    def __init__(self, rec_path, idx_path=None, strict=True):
        self.rec_path = str(rec_path)
        self.idx_path = str(idx_path) if idx_path else os.path.splitext(self.rec_path)[0] + ".idx"
        if not os.path.isfile(self.rec_path):
            raise FileNotFoundError(f"RecordIO file not found: {self.rec_path}")
        self.strict = strict
        self.file = open(self.rec_path, "rb")  # noqa: SIM115 (closed by close() / __exit__)
        self.size = os.path.getsize(self.rec_path)
        try:
            found = read_idx_arrays(self.idx_path) if os.path.isfile(self.idx_path) else self._scan_offsets()
            self.key_array, self.offsets = found
            self._dense = np.array_equal(self.key_array, np.arange(len(self.key_array)))
            self._sorted = None if self._dense else np.argsort(self.key_array, kind="stable")
            if strict:
                self._check_offsets()
        except Exception:
            self.close()
            raise

    def _check_offsets(self):
        """Raise `RecordIOError` for the first `.idx` offset at or past the end of the `.rec`."""
        beyond = np.flatnonzero(self.offsets >= self.size)
        if beyond.size:
            key, offset = int(self.key_array[beyond[0]]), int(self.offsets[beyond[0]])
            raise RecordIOError(_beyond_the_end(self.idx_path, key, offset, self.rec_path, self.size))

    def _scan_offsets(self):
        """Walk the whole `.rec` once and number its records 0, 1, 2, ... (used when there is no `.idx`)."""
        offsets, position = [], 0
        while position < self.size:
            offsets.append(position)
            try:
                _, position = read_record_at(self.file, position, self.rec_path)
            except RecordIOError as error:
                if self.strict:
                    raise
                logger.warning("%s (records after it cannot be found without an .idx file)", error)
                break
        return np.arange(len(offsets), dtype=np.int64), np.array(offsets, np.int64)

    @property
    def keys(self):
        """The record keys in file order (a list)."""
        return self.key_array.tolist()

    def offsets_of(self, keys):
        """The byte offsets (N,) int64 of the records `keys` (N,); KeyError naming the first unknown key."""
        keys = np.asarray(keys, np.int64).reshape(-1)
        if self._dense:  # keys 0, 1, 2, ... in order (insightface's files): a key is its position
            places, known = np.clip(keys, 0, max(len(self.offsets) - 1, 0)), (keys >= 0) & (keys < len(self.offsets))
        else:
            sorted_keys = self.key_array[self._sorted]
            places = self._sorted[np.minimum(np.searchsorted(sorted_keys, keys), max(len(sorted_keys) - 1, 0))]
            known = self.key_array[places] == keys if len(sorted_keys) else np.zeros(len(keys), bool)
        if not np.all(known):
            raise KeyError(f"{self.idx_path}: no record with key {keys[np.argmin(known)]}")
        return self.offsets[places]

    def read(self, key):
        """The payload bytes of record `key`."""
        offset = int(self.offsets_of([key])[0])
        if offset >= self.size:
            raise RecordIOError(_beyond_the_end(self.idx_path, key, offset, self.rec_path, self.size))
        payload, _ = read_record_at(self.file, offset, self.rec_path)
        return payload

    def read_image_record(self, key):
        """Record `key` split into `(IRHeader, image bytes)`."""
        return unpack(self.read(key), f"{self.rec_path} key {key}")

    def close(self):
        """Close the `.rec` file."""
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def unpack(payload, source="record"):
    """Split an image-record payload into `(IRHeader, remaining bytes)`; `flag > 0` labels become a float32 array."""
    if len(payload) < HEADER_SIZE:
        raise RecordIOError(f"{source}: payload of {len(payload)} bytes is shorter than the {HEADER_SIZE}-byte header")
    flag, label, id1, id2 = struct.unpack(HEADER_FORMAT, payload[:HEADER_SIZE])
    body = payload[HEADER_SIZE:]
    if flag > 0:
        if len(body) < 4 * flag:
            raise RecordIOError(f"{source}: header announces {flag} labels but the payload is too short")
        label = np.frombuffer(body[: 4 * flag], dtype="<f4").copy()
        body = body[4 * flag :]
    return IRHeader(flag, label, id1, id2), body


def pack(header, image_bytes):
    """Build an image-record payload from an `IRHeader` (array label → multi-label header) and the image bytes."""
    label = np.asarray(header.label, dtype="<f4")
    if label.ndim == 0:
        return struct.pack(HEADER_FORMAT, 0, float(label), header.id, header.id2) + image_bytes
    flat = label.ravel()
    return struct.pack(HEADER_FORMAT, flat.size, 0.0, header.id, header.id2) + flat.tobytes() + image_bytes


def encode_record(payload):
    """The bytes one record occupies in a `.rec` file, split into parts at every aligned magic word."""
    pieces, start = [], 0
    for position in range(0, len(payload) - 3, 4):
        if payload[position : position + 4] == MAGIC_BYTES:
            pieces.append(payload[start:position])
            start = position + 4
    pieces.append(payload[start:])
    flags = [WHOLE] if len(pieces) == 1 else [FIRST] + [MIDDLE] * (len(pieces) - 2) + [LAST]
    encoded = bytearray()
    for flag, piece in zip(flags, pieces, strict=True):
        encoded += struct.pack("<II", MAGIC, (flag << 29) | len(piece)) + piece
        encoded += b"\0" * (_padded(len(piece)) - len(piece))
    return bytes(encoded)


def write_indexed_recordio(rec_path, idx_path, records):
    """Write `records` (an iterable of `(key, payload bytes)`) to a `.rec` file and its `.idx` text index, each
    through `atomic_io.atomic_path` (the index replaced after the records)."""
    with (atomic_path(idx_path) as idx_temporary, atomic_path(rec_path) as rec_temporary,
          open(rec_temporary, "wb") as rec_file, open(idx_temporary, "w", encoding="ascii") as idx_file):
        for key, payload in records:
            idx_file.write(f"{key}\t{rec_file.tell()}\n")
            rec_file.write(encode_record(payload))
