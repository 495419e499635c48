"""A pickle reader for evaluation `.bin` files that builds nothing but plain data.

A legitimate `.bin` (see `bin_files`) holds bytes (Python 3 `bytes`, Python 2 `str`, `bytearray`), lists and
tuples, Python bools and ints, numpy bool/int/bytes arrays and numpy scalars. `restricted_loads` rebuilds exactly
these and nothing else:

- The stream is checked opcode by opcode (`check_opcodes`) before anything is built: only the opcodes of plain
  data, globals and `REDUCE`/`BUILD` are admitted, every argument must be complete, and memo indices are bounded
  by the stream's length (the C unpickler sizes its memo table by the largest index it sees).
- Globals resolve to our own constructors (`SAFE_GLOBALS`), never to numpy's or Python's: `numpy.ndarray` is a
  token that can only be handed to `_reconstruct`, `numpy.dtype` accepts only plain dtype codes and only the state
  numpy itself writes for them (so a state cannot clear an object dtype's flags), and array data must be exactly
  `prod(shape) × itemsize` bytes taken from the file (so no array is allocated from a shape alone and no
  uninitialised memory is returned). Raw bytes never become an object array: an object array is accepted only in
  the form numpy pickles it, a list of already-unpickled items, and comes back as that Python list.
- Numpy scalars come back as Python `bool` / `int` / `bytes`.

Anything else raises `UnsafePickleError` (a `pickle.UnpicklingError`).
"""

import io
import math
import pickle
import pickletools
import re

import numpy as np

PLAIN_DTYPE_CODE = re.compile(r"^(b1|[ui][1248]|S[1-9][0-9]{0,8}|O8)$")
MAX_NDIM = 4
ARRAY_STATE_VERSION = 1
ALLOWED_OPCODES = frozenset({
    "PROTO", "FRAME", "STOP", "MARK", "POP", "POP_MARK", "DUP", "INT", "BININT", "BININT1", "BININT2", "LONG",
    "LONG1", "LONG4", "NONE", "NEWTRUE", "NEWFALSE", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING",
    "BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8", "UNICODE", "SHORT_BINUNICODE", "BINUNICODE",
    "BINUNICODE8", "EMPTY_LIST", "APPEND", "APPENDS", "LIST", "EMPTY_TUPLE", "TUPLE", "TUPLE1", "TUPLE2", "TUPLE3",
    "EMPTY_DICT", "DICT", "SETITEM", "SETITEMS", "GET", "BINGET", "LONG_BINGET", "PUT", "BINPUT", "LONG_BINPUT",
    "MEMOIZE", "GLOBAL", "STACK_GLOBAL", "REDUCE", "BUILD",
})
MEMO_PUT_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
LATIN1_NAMES = frozenset({"latin1", "latin-1", "iso-8859-1", "iso8859-1"})


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle that needs something a `.bin` file never holds; the message says what."""


def _opcodes(data):
    """`pickletools.genops` over `data`; a cut-short or malformed stream raises `pickle.UnpicklingError`."""
    try:
        yield from pickletools.genops(io.BytesIO(data))
    except ValueError as error:
        raise pickle.UnpicklingError(f"truncated or malformed pickle ({error})") from error


def check_opcodes(data):
    """Walk the opcodes of the pickle `data` (bytes) without building anything.

    Raises `UnsafePickleError` for an opcode outside `ALLOWED_OPCODES`, a `GLOBAL` outside `SAFE_GLOBALS` or a
    memo index larger than the number of opcodes before it, and `pickle.UnpicklingError` for a stream that is
    cut short or malformed (after checking the opcodes before the damage).
    """
    for count, (opcode, argument, position) in enumerate(_opcodes(data)):
        if opcode.name == "GLOBAL":
            _check_global(*argument.split(" ", 1))
        if opcode.name not in ALLOWED_OPCODES:
            raise UnsafePickleError(f"opcode {opcode.name} at byte {position} is not used by .bin files")
        if opcode.name in MEMO_PUT_OPCODES and not 0 <= argument <= count:
            raise UnsafePickleError(f"memo index {argument} at byte {position} is out of range")


class _Refuses:
    """Base of every object our globals produce: no attributes can be set, `BUILD` is refused unless allowed."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError(f"cannot set the state of {type(self).__name__.lstrip('_')}")


class _NdarrayToken(_Refuses):
    """What `numpy.ndarray` resolves to: only accepted as the first argument of `_reconstruct`."""

    __slots__ = ()

    def __call__(self, *arguments):
        raise UnsafePickleError("numpy.ndarray(shape) would return uninitialised memory; refused")


NDARRAY = _NdarrayToken()


class _Constructor(_Refuses):
    """A callable that a `REDUCE` opcode may call: one of our safe constructors under an allowed global's name."""

    __slots__ = ("build",)

    def __init__(self, build):
        self.build = build

    def __call__(self, *arguments):
        return self.build(*arguments)


def _latin1_bytes(value):
    """`value` (bytes, bytearray, or a str of code points < 256 as Python 2 and latin-1 pickles hold) as bytes."""
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        return value.encode("latin1")
    raise UnsafePickleError(f"expected bytes, got {type(value).__name__}")


def _bytes_arguments(arguments):
    """The bytes that `bytes(*arguments)` / `bytearray(*arguments)` pickles describe: (), (data,), (str, latin1)."""
    if not arguments:
        return b""
    if len(arguments) == 2 and isinstance(arguments[0], str) and str(arguments[1]).lower() in LATIN1_NAMES:
        return arguments[0].encode("latin1")
    if len(arguments) == 1 and isinstance(arguments[0], bytes | bytearray):
        return bytes(arguments[0])
    raise UnsafePickleError("bytes / bytearray may only be rebuilt from bytes or a latin-1 string")


def _codecs_encode(text, encoding):
    """`_codecs.encode(text, 'latin1')`, how protocol-2 pickles store bytes; any other codec is refused."""
    if not isinstance(text, str) or str(encoding).lower() not in LATIN1_NAMES:
        raise UnsafePickleError("_codecs.encode is only accepted for a string and the latin-1 codec")
    return text.encode("latin1")


def _is_flag(value, expected):
    """Whether `value` is the bool / int `expected` (0 or 1), as numpy writes a dtype's `align` and `copy`."""
    return type(value) in (bool, int) and value == expected


def _state_of(dtype):
    """The `BUILD` state numpy writes for `dtype`."""
    return dtype.__reduce__()[2]


class _DtypeSpec(_Refuses):
    """What `numpy.dtype(code, False, True)` builds: a plain dtype, its byte order set once by a numpy-made state."""

    __slots__ = ("dtype", "has_state")

    def __init__(self, code, align=False, copy=True):
        plain = isinstance(code, str) and PLAIN_DTYPE_CODE.match(code)
        if not plain or not _is_flag(align, 0) or not _is_flag(copy, 1):
            raise UnsafePickleError(f"dtype {code!r:.40} is not a plain bool / integer / bytes / object dtype")
        self.dtype, self.has_state = np.dtype(code), False

    @property
    def is_object(self):
        """Whether this is the object dtype (accepted only for arrays pickled as a list of items)."""
        return self.dtype.kind == "O"

    def __setstate__(self, state):
        if self.has_state:
            raise UnsafePickleError("dtype state given twice")
        candidates = [self.dtype.newbyteorder(order) for order in "<>"]
        matching = [candidate for candidate in candidates if type(state) is tuple and state == _state_of(candidate)]
        if not matching:
            raise UnsafePickleError(f"dtype {self.dtype.str} with a state numpy never writes for it")
        self.dtype, self.has_state = matching[0], True


def _plain_dtype(spec):
    """The numpy dtype of a `_DtypeSpec` that may be built from raw bytes (not the object dtype)."""
    if not isinstance(spec, _DtypeSpec):
        raise UnsafePickleError(f"expected a numpy dtype, got {type(spec).__name__}")
    if spec.is_object:
        raise UnsafePickleError("an object dtype cannot be built from raw bytes")
    return spec.dtype


def _element_count(shape):
    """Number of elements of `shape`, a tuple of at most `MAX_NDIM` non-negative ints."""
    if type(shape) is not tuple or len(shape) > MAX_NDIM:
        raise UnsafePickleError(f"array shape must be a tuple of at most {MAX_NDIM} sizes")
    if not all(type(size) is int and size >= 0 for size in shape):
        raise UnsafePickleError("array sizes must be non-negative integers")
    return math.prod(shape)


def _array_from_bytes(data, dtype, shape, fortran_order):
    """A fresh numpy array of `shape` and plain `dtype` holding exactly the bytes `data` (bool bytes 0 or 1)."""
    data = _latin1_bytes(data)
    expected = _element_count(shape) * dtype.itemsize
    if len(data) != expected:
        raise UnsafePickleError(f"array of shape {shape} and dtype {dtype.str} needs {expected} bytes, got {len(data)}")
    if dtype.kind == "b" and data.strip(b"\0\1"):
        raise UnsafePickleError("a bool array holds bytes other than 0 and 1")
    return np.frombuffer(data, dtype).reshape(shape, order="F" if fortran_order else "C").copy()


class _ArrayValue(_Refuses):
    """An array under construction: empty after `_reconstruct`, filled by one `BUILD` (or by `_frombuffer`).

    `value` is a numpy array of a plain dtype, or a Python list for an object array.
    """

    __slots__ = ("value",)

    def __init__(self, value=None):
        self.value = value

    def __setstate__(self, state):
        if self.value is not None:
            raise UnsafePickleError("array state given twice")
        if type(state) is tuple and len(state) == 5 and state[0] == ARRAY_STATE_VERSION:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise UnsafePickleError("array state is not (version, shape, dtype, fortran_order, data)")
        shape, spec, fortran_order, data = state
        if isinstance(spec, _DtypeSpec) and spec.is_object:
            self.value = _object_items(shape, data)
        else:
            self.value = _array_from_bytes(data, _plain_dtype(spec), shape, bool(fortran_order))


def _object_items(shape, items):
    """The items of a one-dimensional object array pickled as a list of already-unpickled objects."""
    if type(items) is not list or len(shape) != 1 or _element_count(shape) != len(items):
        raise UnsafePickleError("an object array must be one-dimensional and given as a list of its items")
    return items


def _reconstruct(cls, shape, typecode):
    """`numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`: an empty array waiting for its state."""
    if cls is not NDARRAY or shape != (0,) or _latin1_bytes(typecode) != b"b":
        raise UnsafePickleError("_reconstruct is only accepted as numpy writes it: (ndarray, (0,), b'b')")
    return _ArrayValue()


def _frombuffer(buffer, spec, shape, order):
    """`numpy.core.numeric._frombuffer(bytes, dtype, shape, order)`: an array of a plain dtype from those bytes."""
    if order not in ("C", "F"):
        raise UnsafePickleError(f"array order {order!r:.20} is neither 'C' nor 'F'")
    return _ArrayValue(_array_from_bytes(buffer, _plain_dtype(spec), shape, order == "F"))


def _scalar(spec, data):
    """`numpy.core.multiarray.scalar(dtype, bytes)`: a numpy scalar as the Python bool, int or bytes it holds."""
    return _array_from_bytes(data, _plain_dtype(spec), (), False).item()


def _constructors(names, build):
    """`{(module, name): _Constructor}` for every `module.name` in `names` (`module name` strings)."""
    return {tuple(name.split()): _Constructor(build) for name in names}


SAFE_GLOBALS = {
    **_constructors(["builtins bytes", "__builtin__ bytes"], lambda *arguments: _bytes_arguments(arguments)),
    **_constructors(
        ["builtins bytearray", "__builtin__ bytearray"], lambda *arguments: bytearray(_bytes_arguments(arguments))
    ),
    **_constructors(["_codecs encode"], _codecs_encode),
    ("numpy", "ndarray"): NDARRAY,
    **_constructors(["numpy dtype"], _DtypeSpec),
    **_constructors(["numpy.core.multiarray _reconstruct", "numpy._core.multiarray _reconstruct"], _reconstruct),
    **_constructors(["numpy.core.multiarray scalar", "numpy._core.multiarray scalar"], _scalar),
    **_constructors(["numpy.core.numeric _frombuffer", "numpy._core.numeric _frombuffer"], _frombuffer),
}


def _check_global(module, name):
    """Raise `UnsafePickleError` unless `module.name` is one of `SAFE_GLOBALS`."""
    if (module, name) not in SAFE_GLOBALS:
        raise UnsafePickleError(f"refusing to load global '{module}.{name}'")


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals are `SAFE_GLOBALS` (our constructors); any other global raises."""

    def find_class(self, module, name):
        _check_global(module, name)
        return SAFE_GLOBALS[(module, name)]


def plain_value(value):
    """`value` with an array built by the unpickler replaced by its numpy array (or list, for object arrays)."""
    if isinstance(value, _ArrayValue):
        if value.value is None:
            raise UnsafePickleError("an array was never given its data")
        return value.value
    return value


def restricted_loads(data):
    """Unpickle `data` (bytes) after `check_opcodes`, with `RestrictedUnpickler`; arrays come back as
    `_ArrayValue`s (see `plain_value`).

    Python 2 `str` objects are decoded as latin-1, which maps each byte to one character; `bin_files.load_bin`
    turns them back into the identical bytes, and numpy data pickled by Python 2 needs exactly this decoding.
    """
    check_opcodes(data)
    return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
