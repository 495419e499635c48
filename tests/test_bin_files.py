"""The .bin loader accepts every legitimate variant and refuses pickles that would run code."""

import os
import pickle
import struct

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
    ],
    ids=["py3-tuple", "list-proto2", "bytearray", "uint8-arrays", "object-array-np-bools", "python2"],
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
