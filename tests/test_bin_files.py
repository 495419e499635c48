"""The .bin loader accepts every legitimate variant and refuses pickles that would run code."""

import os
import pickle
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import data
import prepare_data
from bin_files import BinFileError, load_bin, make_bin, save_bin

IMAGES = [b"\xff\xd8\xff\xe0first\xff\xd9", b"\x89PNG second", b"\xff\xd8third\xff\xd9", b"\xff\xd8\x00fourth"]
ISSAME = [True, False]


def py2_pickle(bins, issame):
    """A protocol-2 pickle as Python 2 writes `(list_of_str, list_of_bool)`: str items as BINSTRING opcodes."""
    out = b"\x80\x02]q\x00("
    for item in bins:
        out += b"T" + struct.pack("<i", len(item)) + item  # BINSTRING: a Python 2 str
    out += b"e]q\x01(" + b"".join(b"\x88" if same else b"\x89" for same in issame) + b"e\x86q\x02."
    return out


def write(path, content):
    with open(path, "wb") as file:
        file.write(content)
    return path


@pytest.mark.parametrize(
    "make",
    [
        lambda: pickle.dumps((IMAGES, ISSAME)),  # Python 3 tuple of bytes
        lambda: pickle.dumps([IMAGES, ISSAME], protocol=2),  # list, bytes through _codecs.encode
        lambda: pickle.dumps(([bytearray(x) for x in IMAGES], ISSAME), protocol=2),  # bytearrays
        lambda: pickle.dumps(([np.frombuffer(x, np.uint8) for x in IMAGES], np.array(ISSAME))),  # uint8 arrays
        lambda: pickle.dumps((np.array(IMAGES, dtype=object), [np.bool_(x) for x in ISSAME]), protocol=5),
        lambda: py2_pickle(IMAGES, ISSAME),  # Python 2 str items
        lambda: pickle.dumps(([np.frombuffer(x, np.uint8) for x in IMAGES], np.array(ISSAME)), protocol=2),
        lambda: pickle.dumps(([np.bytes_(x) for x in IMAGES], np.array(ISSAME, dtype=">i8")), protocol=4),
    ],
    ids=["py3-tuple", "list-proto2", "bytearray", "uint8-arrays", "object-array-np-bools", "python2",
         "uint8-arrays-proto2", "bytes-scalars-big-endian-int-issame"],
)
def test_legitimate_variants_load_identically(tmp_path, make):
    bins, issame = load_bin(write(tmp_path / "x.bin", make()))
    assert bins == IMAGES and all(type(item) is bytes for item in bins)
    assert issame.dtype == bool and issame.tolist() == ISSAME


class CallsSystem:
    def __reduce__(self):
        return (os.system, ("touch should_not_exist",))


def test_refuses_a_pickle_that_would_call_os_system(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "evil.bin", pickle.dumps((IMAGES, CallsSystem())))
    with pytest.raises(BinFileError, match=r"evil\.bin.*refusing to load global '(posix|os)\.system'"):
        load_bin(path)
    assert not os.path.exists(tmp_path / "should_not_exist")
    eval_path = write(tmp_path / "eval.bin", b"\x80\x02cbuiltins\neval\nq\x00X\x04\x00\x00\x001+1q\x01\x85q\x02Rq\x03.")
    with pytest.raises(BinFileError, match=r"builtins\.eval"):
        load_bin(eval_path)


def test_malformed_files_get_a_message_naming_them(tmp_path):
    with pytest.raises(BinFileError, match=r"short\.bin.*truncated"):
        load_bin(write(tmp_path / "short.bin", pickle.dumps((IMAGES, ISSAME))[:20]))
    with pytest.raises(BinFileError, match=r"empty\.bin: cannot load"):
        load_bin(write(tmp_path / "empty.bin", b""))
    with pytest.raises(BinFileError, match=r"folder\.bin: unreadable \.bin file \(IsADirectoryError"):
        (tmp_path / "folder.bin").mkdir()
        load_bin(tmp_path / "folder.bin")
    with pytest.raises(BinFileError, match=r"odd\.bin: 3 images for 2 pairs"):
        load_bin(write(tmp_path / "odd.bin", pickle.dumps((IMAGES[:3], ISSAME))))
    with pytest.raises(BinFileError, match=r"dict\.bin: expected a pickled"):
        load_bin(write(tmp_path / "dict.bin", pickle.dumps({"a": 1})))
    with pytest.raises(BinFileError, match=r"floats\.bin: image 0 is a float"):
        load_bin(write(tmp_path / "floats.bin", pickle.dumps(([1.0, 2.0], [True]))))


def test_make_bin_round_trip_from_bytes_paths_and_arrays(tmp_path):
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 200
    write(tmp_path / "a.jpg", IMAGES[0])
    path = data.make_bin([(IMAGES[1], str(tmp_path / "a.jpg")), (image, image)], [False, True], tmp_path / "made.bin")
    bins, issame = data.load_bin(path)
    assert bins[:2] == [IMAGES[1], IMAGES[0]] and issame.tolist() == [False, True]
    import cv2

    decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(bins[2], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    assert np.array_equal(decoded, image)  # PNG by default: lossless
    with pytest.raises(ValueError, match="3 pairs but 2"):
        make_bin([(IMAGES[0], IMAGES[1])] * 3, [True, False], tmp_path / "bad.bin")


def test_prepare_data_T_rewrites_bins_with_limit(tmp_path):
    images = [bytes([i]) * 5 for i in range(10)]
    write(tmp_path / "lfw.bin", py2_pickle(images, [True, False, True, False, True]))
    prepare_data.main(["-D", str(tmp_path), "-T", "lfw.bin", "--limit", "1"])
    with open(tmp_path / "lfw.bin", "rb") as file:
        rewritten = pickle.load(file)
    assert isinstance(rewritten, list) and rewritten[0] == images[:2] + images[8:] and rewritten[1] == [True, True]
    save_bin(tmp_path / "again.bin", *load_bin(tmp_path / "lfw.bin"))
    assert load_bin(tmp_path / "again.bin")[0] == rewritten[0]


# ---------------------------------------------------------------------------------------------------------------
# Hostile files: each is loaded in a subprocess (a segfault fails the test instead of killing pytest) with its
# address space limited, so a huge allocation shows as an escaped MemoryError instead of exhausting the machine.

REPO_ROOT = Path(__file__).resolve().parents[1]
MEMORY_LIMIT = 3 << 30
ISOLATION_PREAMBLE = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
sys.path.insert(0, {root!r})
"""
LOADER_SCRIPT = """
from bin_files import BinFileError, load_bin
try:
    bins, issame = load_bin(sys.argv[1])
    print("loaded", len(bins), "images:", [len(item) for item in bins])
except BinFileError as error:
    print("BinFileError", error)
"""


def run_isolated(script, *arguments, timeout=120):
    """`(return code, output)` of the Python `script` run in a fresh process with a 3 GiB address-space limit and
    the repository on its path (`sys` imported); `arguments` are its `sys.argv[1:]`."""
    preamble = ISOLATION_PREAMBLE.format(limit=MEMORY_LIMIT, root=str(REPO_ROOT))
    environment = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", preamble + script, *map(str, arguments)], capture_output=True,
                          text=True, timeout=timeout, env=environment, check=False)
    return done.returncode, (done.stdout + done.stderr).strip()


def load_in_subprocess(path):
    """`(return code, output)` of `load_bin(path)` run by `run_isolated`."""
    return run_isolated(LOADER_SCRIPT, path)


def op_unicode(text):
    """BINUNICODE opcode pushing `text`."""
    encoded = text.encode("utf-8")
    return b"X" + struct.pack("<I", len(encoded)) + encoded


def op_global(module, name):
    """GLOBAL opcode pushing `module.name`."""
    return b"c" + f"{module}\n{name}\n".encode()


def op_bytes(data):
    """BINBYTES opcode pushing `data`."""
    return b"B" + struct.pack("<I", len(data)) + data


def op_dtype(code, flags=0, elsize=-1, alignment=-1, byteorder="|"):
    """`numpy.dtype(code, False, True)` followed by BUILD with a state (3, byteorder, None, None, None, ...)."""
    state = (b"(K\x03" + op_unicode(byteorder) + b"NNN" + b"J" + struct.pack("<i", elsize)
             + b"J" + struct.pack("<i", alignment) + b"J" + struct.pack("<i", flags) + b"t")
    return op_global("numpy", "dtype") + op_unicode(code) + b"\x89\x88\x87R" + state + b"b"


def op_long(value):
    """LONG1 opcode pushing the positive integer `value`."""
    encoded = value.to_bytes(value.bit_length() // 8 + 1, "little")
    return b"\x8a" + bytes([len(encoded)]) + encoded


def op_frombuffer(data, dtype_ops, length):
    """`numpy._core.numeric._frombuffer(data, dtype, (length,), 'C')`."""
    return (op_global("numpy._core.numeric", "_frombuffer") + b"(" + op_bytes(data) + dtype_ops
            + b"J" + struct.pack("<i", length) + b"\x85" + op_unicode("C") + b"tR")


def op_ndarray(length_ops):
    """`numpy.ndarray((length,), 'u1')` called directly: uninitialised memory of that size."""
    return op_global("numpy", "ndarray") + b"(" + length_ops + b"\x85" + op_unicode("u1") + b"tR"


def bin_pickle(bins_ops, issame_ops=b"]\x88a"):
    """A protocol-2 pickle of the tuple (bins, issame) from the opcodes pushing each."""
    return b"\x80\x02" + bins_ops + issame_ops + b"\x86."


def two_images(first_ops):
    """Opcodes of a list holding the image pushed by `first_ops` and a plain bytes image."""
    return b"](" + first_ops + op_bytes(b"\xff\xd8img\xff\xd9") + b"e"


OBJECT_DTYPE_FLAGS_CLEARED = op_dtype("O8", flags=0)
HOSTILE_FILES = {
    # the crafted file that segfaulted every loader: object dtype whose state clears its flags, then raw bytes as
    # object pointers through _frombuffer (here as the whole bins list) or scalar
    "object-dtype-flags-cleared-frombuffer": (
        bin_pickle(op_frombuffer(b"A" * 16, OBJECT_DTYPE_FLAGS_CLEARED, 2)),
        r"dtype \|O with a state numpy never writes",
    ),
    "object-dtype-flags-cleared-scalar": (
        bin_pickle(two_images(op_global("numpy._core.multiarray", "scalar") + OBJECT_DTYPE_FLAGS_CLEARED
                              + op_bytes(b"A" * 8) + b"\x86R")),
        r"dtype \|O with a state numpy never writes",
    ),
    "object-dtype-from-raw-bytes": (
        bin_pickle(op_frombuffer(b"A" * 16, op_dtype("O8", flags=63), 2)),
        r"object dtype cannot be built from raw bytes",
    ),
    "dtype-state-with-another-size": (
        bin_pickle(two_images(op_frombuffer(b"A" * 16, op_dtype("u1", elsize=8, alignment=1), 2))),
        r"dtype \|u1 with a state numpy never writes",
    ),
    "ndarray-4096-uninitialised": (bin_pickle(two_images(op_ndarray(b"M\x00\x10"))), r"uninitialised memory"),
    "ndarray-2**36": (bin_pickle(two_images(op_ndarray(op_long(2**36)))), r"uninitialised memory"),
    "array-data-shorter-than-shape": (bin_pickle(two_images(op_frombuffer(b"abc", op_dtype("u1"), 4096))),
                                      r"needs 4096 bytes, got 3"),
    "bool-array-byte-2": (bin_pickle(two_images(op_bytes(b"x")), op_frombuffer(b"\x02", op_dtype("b1"), 1)),
                          r"bool array holds bytes other than 0 and 1"),
    "memo-index-2**32": (bin_pickle(two_images(op_bytes(b"x") + b"r\xf0\xff\xff\xff")), r"memo index 4294967280"),
    "bytes8-length-2**63": (bin_pickle(b"]\x8e" + struct.pack("<Q", 2**63 + 5) + b"abc"), r"truncated"),
    "bytes-of-2**40": (bin_pickle(two_images(op_global("builtins", "bytes") + op_long(2**40) + b"\x85R")),
                       r"bytes / bytearray may only be rebuilt"),
    "python2-str-beyond-latin1": (bin_pickle(two_images(op_unicode("\u0100image"))), r"UnicodeEncodeError"),
    "newobj": (bin_pickle(two_images(op_global("builtins", "bytearray") + b")\x81")), r"opcode NEWOBJ"),
}


@pytest.mark.parametrize("name", list(HOSTILE_FILES))
def test_hostile_file_is_refused_without_crashing(tmp_path, name):
    content, reason = HOSTILE_FILES[name]
    path = write(tmp_path / f"{name}.bin", content)
    returncode, output = load_in_subprocess(path)
    assert returncode == 0, f"the loader crashed (return code {returncode}): {output[-2000:]}"
    assert re.match(rf"BinFileError {re.escape(str(path))}: .*{reason}", output), output
