"""Evaluation `.bin` pair files: a loader that cannot run code, and a writer.

Format: a pickle of a 2-sequence `(bins, issame)`. `bins` holds 2N encoded images (JPEG/PNG bytes), `issame` N
booleans; pair k is images 2k and 2k+1. InsightFace's files are Python 2 pickles (a tuple of `str`), some hold
`bytearray`s or uint8 numpy arrays instead of bytes, and files rewritten by the original `prepare_data.py -T` are
a Python 3 list `[bytes_list, bool_list]`. All of these load.

`.bin` files come from the internet, so they are unpickled with `RestrictedUnpickler`, which resolves only the few
builtins and numpy names such a file legitimately references; any other global (`os.system`, `subprocess.Popen`,
`builtins.eval`, ...) makes loading fail with `BinFileError` before anything runs.
"""

import io
import os
import pickle

import numpy as np

# Globals a legitimate .bin may reference: how Python 2/3 pickle bytes and bytearrays, and how numpy pickles
# arrays, dtypes and scalars (numpy 1 `numpy.core`, numpy 2 `numpy._core`). Nothing else resolves.
ALLOWED_GLOBALS = {
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("builtins", "bytes"),
    ("_codecs", "encode"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}


class BinFileError(ValueError):
    """A `.bin` file that is unreadable, malformed or refused as unsafe; the message names the file."""


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only `ALLOWED_GLOBALS`; everything else raises `pickle.UnpicklingError`."""

    def find_class(self, module, name):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global '{module}.{name}'")
        return super().find_class(module, name)


def restricted_loads(data):
    """Unpickle `data` (bytes) with `RestrictedUnpickler`.

    Python 2 `str` objects are decoded as latin-1, which maps each byte to one character, and are turned back
    into the identical bytes by `load_bin`; numpy arrays pickled by Python 2 need exactly this decoding.
    """
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()


def _as_image_bytes(item, index, path):
    """One stored image as `bytes`, whatever container the file used."""
    if isinstance(item, bytes):
        return item
    if isinstance(item, bytearray | memoryview):
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
    raise BinFileError(f"{path}: issame entry {index} is {value!r}, not a boolean")


def load_bin(path, limit=0):
    """Load a `.bin` pair file safely.

    Returns `(bins, issame)`: a list of 2N encoded images as `bytes` and a bool numpy array of N pair labels
    (pair k = images 2k, 2k+1). `limit > 0` keeps only the first `limit` pairs. Raises `BinFileError` naming
    the file when it cannot be read, is not a `(bins, issame)` pair list, or would need a forbidden global.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as file:
            loaded = restricted_loads(file.read())
    except pickle.UnpicklingError as error:
        raise BinFileError(f"{path}: cannot load as a .bin pair file ({error})") from error
    except (OSError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as error:
        raise BinFileError(f"{path}: unreadable .bin file ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, tuple | list) or len(loaded) != 2:
        raise BinFileError(f"{path}: expected a pickled (bins, issame) pair, got {type(loaded).__name__}")
    raw_bins, raw_issame = loaded
    issame = np.array([_as_bool(value, index, path) for index, value in enumerate(raw_issame)], dtype=bool)
    if len(raw_bins) != 2 * len(issame):
        raise BinFileError(f"{path}: {len(raw_bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    if limit > 0:
        issame, raw_bins = issame[:limit], raw_bins[: 2 * limit]
    bins = [_as_image_bytes(item, index, path) for index, item in enumerate(raw_bins)]
    return bins, issame


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
    written beside `path` and renamed into place, so an interrupted write never leaves a half file.
    """
    bins, issame = [bytes(item) for item in bins], [bool(value) for value in issame]
    if len(bins) != 2 * len(issame):
        raise ValueError(f"{len(bins)} images for {len(issame)} pairs (expected {2 * len(issame)})")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    temporary = os.path.join(directory, "." + os.path.basename(path) + ".tmp")
    with open(temporary, "wb") as file:
        pickle.dump([bins, issame], file, protocol=4)
    os.replace(temporary, path)
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
