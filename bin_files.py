"""Evaluation `.bin` pair files: a loader that cannot run code, and a writer.

Format: a pickle of a 2-sequence `(bins, issame)`. `bins` holds 2N encoded images (JPEG/PNG bytes), `issame` N
booleans; pair k is images 2k and 2k+1. InsightFace's files are Python 2 pickles (a tuple of `str`), some hold
`bytearray`s or uint8 numpy arrays instead of bytes, and files rewritten by the original `prepare_data.py -T` are
a Python 3 list `[bytes_list, bool_list]`. All of these load.

`.bin` files come from the internet, so they are unpickled with `bin_unpickler.restricted_loads`, which builds
only plain data (bytes, lists, tuples, bool / int / bytes numpy arrays and scalars) through its own constructors,
checks every array's dtype, state and size before building it, and refuses any other global (`os.system`,
`subprocess.Popen`, `builtins.eval`, ...). Every failure, whatever its cause, is a `BinFileError` naming the file.
"""

import os
import pickle

import numpy as np

from atomic_io import atomic_path
from bin_unpickler import SAFE_GLOBALS, RestrictedUnpickler, plain_value, restricted_loads  # noqa: F401 (re-exported)

# The globals a legitimate .bin may reference (each resolves to a safe constructor of bin_unpickler).
ALLOWED_GLOBALS = frozenset(SAFE_GLOBALS)
MAX_ERROR_TEXT = 300


class BinFileError(ValueError):
    """A `.bin` file that is unreadable, malformed or refused as unsafe; the message names the file."""


def _as_image_bytes(item, index, path):
    """One stored image as `bytes`, whatever container the file used."""
    item = plain_value(item)
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray):
        return bytes(item)
    if isinstance(item, str):
        return item.encode("latin1")  # a Python 2 str, decoded as latin-1 by restricted_loads
    if isinstance(item, np.ndarray) and item.dtype == np.uint8 and item.ndim == 1:
        return item.tobytes()
    if isinstance(item, np.ndarray) and item.dtype.kind == "S" and item.ndim == 0:
        return item.item()
    raise BinFileError(f"{path}: image {index} is a {type(item).__name__}, not encoded image bytes")


def _as_bool(value, index, path):
    """One `issame` entry as a Python bool."""
    if isinstance(value, bool | np.bool_ | int | np.integer) and int(value) in (0, 1):
        return bool(value)
    raise BinFileError(f"{path}: issame entry {index} is {type(value).__name__} {value!s:.40}, not a boolean")


def _sequence(value, what, path):
    """`value` (a list, tuple or one-dimensional array built by the unpickler) as something to iterate over."""
    value = plain_value(value)
    if isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim == 1):
        return value
    raise BinFileError(f"{path}: {what} is a {type(value).__name__}, not a list")


def _pairs_from(loaded, path, limit):
    """`(bins, issame)` of an unpickled `.bin`: images as bytes, pair labels as a bool array (see `load_bin`)."""
    loaded = plain_value(loaded)
    if not isinstance(loaded, tuple | list) or len(loaded) != 2:
        raise BinFileError(f"{path}: expected a pickled (bins, issame) pair, got {type(loaded).__name__}")
    raw_bins, raw_issame = _sequence(loaded[0], "bins", path), _sequence(loaded[1], "issame", path)
    issame = np.array([_as_bool(value, index, path) for index, value in enumerate(raw_issame)], dtype=bool)
    if len(raw_bins) != 2 * len(issame):
        raise BinFileError(f"{path}: {len(raw_bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    if limit > 0:
        issame, raw_bins = issame[:limit], raw_bins[: 2 * limit]
    bins = [_as_image_bytes(item, index, path) for index, item in enumerate(raw_bins)]
    return bins, issame


def load_bin(path, limit=0):
    """Load a `.bin` pair file safely.

    Returns `(bins, issame)`: a list of 2N encoded images as `bytes` and a bool numpy array of N pair labels
    (pair k = images 2k, 2k+1). `limit > 0` keeps only the first `limit` pairs. Raises `BinFileError` naming
    the file for every failure: unreadable, truncated or malformed, not a `(bins, issame)` pair list, or refused
    by the restricted unpickler (a forbidden global, a dtype or array state numpy never writes, array data that
    does not match its shape); no other exception escapes.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            return _pairs_from(restricted_loads(file.read()), path, limit)
    except BinFileError:
        raise
    except pickle.UnpicklingError as error:
        raise BinFileError(f"{path}: cannot load as a .bin pair file ({error!s:.{MAX_ERROR_TEXT}})") from error
    except Exception as error:  # every other failure of a hostile file (MemoryError, OverflowError, ...) too
        message = f"{type(error).__name__}: {error!s:.{MAX_ERROR_TEXT}}"
        raise BinFileError(f"{path}: unreadable .bin file ({message})") from error


def _encode_image(image, image_format):
    """Encode an HxWx3 RGB uint8 array (or HxW grey) as PNG or JPEG bytes."""
    import cv2

    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"images given as arrays must be uint8, got {array.dtype}")
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, encoded = cv2.imencode("." + image_format, array)
    if not ok:
        raise ValueError(f"could not encode an image of shape {array.shape} as {image_format}")
    return encoded.tobytes()


def _image_bytes_from(image, image_format):
    """Encoded bytes for one pair member given as encoded bytes, a file path or a uint8 array."""
    if isinstance(image, bytes | bytearray):
        return bytes(image)
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as file:
            return file.read()
    return _encode_image(image, image_format)


def save_bin(path, bins, issame):
    """Write already-encoded images and pair labels as `[list of bytes, list of bool]` (pickle protocol 4).

    This is the form the original `prepare_data.py -T` produced, so the original code reads it too. The file is
    written through `atomic_io.atomic_path`, so an interrupted write never leaves a half file.
    """
    bins, issame = [bytes(item) for item in bins], [bool(value) for value in issame]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    with atomic_path(path) as temporary, open(temporary, "wb") as file:
        pickle.dump([bins, issame], file, protocol=4)
    return path


def make_bin(pairs, issame, path, image_format="png"):
    """Write a `.bin` pair file from `pairs`, a sequence of `(image_a, image_b)`.

    Each image is encoded bytes (stored as given), a file path (its bytes are stored as they are) or an HxWx3
    RGB uint8 array (encoded as `image_format`, "png" or "jpg"). `issame[k]` says whether pair k shows one
    person. Returns `path`.
    """
    pairs = list(pairs)
    if len(pairs) != len(issame):
        raise ValueError(f"{len(pairs)} pairs but {len(issame)} issame labels")
    bins = [_image_bytes_from(image, image_format) for pair in pairs for image in pair]
    return save_bin(path, bins, issame)
