"""RecordIO reading without mxnet: a .rec/.idx written here byte by byte converts to the expected class folders."""

import os
import struct
from pathlib import Path

import numpy as np
import pytest

import prepare_data
from recordio import (
    MAGIC,
    MAGIC_BYTES,
    IRHeader,
    RecordIOError,
    RecordIOReader,
    encode_record,
    pack,
    read_idx,
    read_idx_arrays,
    unpack,
    write_indexed_recordio,
)


def fake_jpeg(tag, size=40):
    """Bytes that look like a JPEG (SOI ... EOI) and differ per tag."""
    rng = np.random.default_rng(tag)
    return b"\xff\xd8\xff\xe0" + rng.integers(0, 256, size, dtype=np.uint8).tobytes() + b"\xff\xd9"


def write_insightface_rec(folder, images, truncate_last=0):
    """Write train.rec/train.idx in the insightface layout: record 0 header, then (key, header, jpeg) records.

    `images` is a list of (label, jpeg bytes); label is a float or a list (multi-label header).
    """
    records = [(0, pack(IRHeader(2, np.array([len(images) + 1, len(images) + 5], np.float32), 0, 0), b""))]
    for key, (label, image) in enumerate(images, start=1):
        records.append((key, pack(IRHeader(0, label, key, 0), image)))
    rec_path, idx_path = os.path.join(folder, "train.rec"), os.path.join(folder, "train.idx")
    write_indexed_recordio(rec_path, idx_path, records)
    if truncate_last:
        with open(rec_path, "r+b") as rec:
            rec.truncate(os.path.getsize(rec_path) - truncate_last)
    return rec_path, idx_path


def test_part_layout_matches_the_format():
    payload = b"abcd" + MAGIC_BYTES + b"efg"  # magic word at aligned offset 4 -> split in two parts
    encoded = encode_record(payload)
    magic, lrec = struct.unpack("<II", encoded[:8])
    assert magic == MAGIC and lrec >> 29 == 1 and lrec & (2**29 - 1) == 4
    assert encoded[8:12] == b"abcd"
    magic, lrec = struct.unpack("<II", encoded[12:20])
    assert magic == MAGIC and lrec >> 29 == 3 and lrec & (2**29 - 1) == 3
    assert encoded[20:24] == b"efg\0"  # padded to a multiple of 4
    unaligned = b"ab" + MAGIC_BYTES + b"cd"  # not 4-byte aligned: stays one whole record
    assert struct.unpack("<II", encode_record(unaligned)[:8])[1] >> 29 == 0


def test_header_pack_unpack_single_and_multi_label():
    header, body = unpack(pack(IRHeader(0, 7.0, 3, 0), b"IMG"))
    assert (header.flag, header.label, header.id, body) == (0, 7.0, 3, b"IMG")
    header, body = unpack(pack(IRHeader(0, [5.0, 1.5, 2.0], 4, 0), b"IMG"))
    assert header.flag == 3 and np.array_equal(header.label, [5.0, 1.5, 2.0]) and body == b"IMG"


def test_rec_converts_to_class_folders(tmp_path):
    split_image = b"\xff\xd8\xff\xe0" + b"\0" * 16 + MAGIC_BYTES + b"tail" + MAGIC_BYTES + b"\xff\xd9"
    images = [
        (0.0, fake_jpeg(1)),
        (0.0, fake_jpeg(2)),
        (1.0, split_image),
        ([2.0, 0.5, 9.0], fake_jpeg(3)),
        (10.0, fake_jpeg(4)),
    ]
    # the 24-byte header puts the split image's magic words 4-byte aligned inside the payload
    assert (24 + 20) % 4 == 0
    dataset = tmp_path / "faces"
    dataset.mkdir()
    write_insightface_rec(dataset, images)
    with RecordIOReader(dataset / "train.rec") as reader:
        assert reader.read_image_record(3)[1] == split_image
    save_dir, written, existing, unreadable = prepare_data.MXnet_record_to_folder(str(dataset))
    assert (written, existing, unreadable) == (5, 0, 0)
    assert save_dir == str(dataset) + "_112x112_folders"
    expected = {
        "0/1.jpg": images[0][1],
        "0/2.jpg": images[1][1],
        "1/3.jpg": split_image,
        "2/4.jpg": images[3][1],
        "10/5.jpg": images[4][1],
    }
    found = {
        os.path.relpath(os.path.join(root, name), save_dir): (Path(root) / name).read_bytes()
        for root, _, names in os.walk(save_dir)
        for name in names
    }
    assert found == expected
    # resumable: a second run writes nothing and keeps every file
    assert prepare_data.MXnet_record_to_folder(str(dataset))[1:] == (0, 5, 0)


def test_truncated_tail_is_reported_and_skipped(tmp_path):
    images = [(0.0, fake_jpeg(1)), (1.0, fake_jpeg(2)), (1.0, fake_jpeg(3, size=200))]
    write_insightface_rec(tmp_path, images, truncate_last=50)
    with pytest.warns(UserWarning, match=r"train\.rec.*truncated"):
        save_dir, written, _, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    assert (written, unreadable) == (2, 1)
    assert sorted(os.listdir(os.path.join(save_dir, "1"))) == ["2.jpg"]


def test_idx_that_does_not_match_the_rec_is_refused(tmp_path):
    rec_path, idx_path = write_insightface_rec(tmp_path, [(0.0, fake_jpeg(1)), (1.0, fake_jpeg(2))])
    offsets = read_idx(idx_path)
    with open(idx_path, "w") as idx:
        idx.write(f"0\t{offsets[0]}\n1\t{offsets[1] + 4}\n2\t{offsets[2]}\n")
    with RecordIOReader(rec_path) as reader, pytest.raises(RecordIOError, match=r"train\.rec.*magic"):
        reader.read(1)
    with open(idx_path, "a") as idx:
        idx.write("3\t999999\n")
    with pytest.raises(RecordIOError, match=r"train\.idx.*beyond the end"):
        RecordIOReader(rec_path)


def test_reader_without_idx_scans_sequentially(tmp_path):
    rec_path, idx_path = write_insightface_rec(tmp_path, [(0.0, fake_jpeg(1)), (4.0, fake_jpeg(2))])
    os.remove(idx_path)
    with RecordIOReader(rec_path) as reader:
        assert reader.keys == [0, 1, 2]
        assert unpack(reader.read(2))[1] == fake_jpeg(2)


def converted_files(save_dir):
    """`{"<class>/<file>": bytes}` of a conversion's output folder."""
    return {
        os.path.relpath(os.path.join(root, name), save_dir): (Path(root) / name).read_bytes()
        for root, _, names in os.walk(save_dir)
        for name in names
    }


def test_truncated_rec_with_idx_entries_past_its_end_converts_the_rest(tmp_path, caplog):
    images = [(float(index % 2), fake_jpeg(index, size=200)) for index in range(6)]
    rec_path, idx_path = write_insightface_rec(tmp_path, images)
    offsets = read_idx(idx_path)
    with open(rec_path, "r+b") as rec:
        rec.truncate(offsets[5] + 10)  # record 5 cut short, record 6 wholly beyond the end
    with pytest.warns(UserWarning) as caught:
        save_dir, written, existing, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path),
                                                                                      str(tmp_path / "out"))
    assert (written, existing, unreadable) == (4, 0, 2)
    messages = [str(warning.message) for warning in caught]
    assert any(f"key 5: {rec_path}: truncated record at offset {offsets[5]}" in message for message in messages)
    assert any(f"key 6: {idx_path}: key 6 points to offset {offsets[6]}, beyond the end" in message
               for message in messages)
    assert f"{rec_path} -> {save_dir}: 4 written, 0 already present, 2 unreadable records skipped" in caplog.text
    assert sorted(converted_files(save_dir)) == ["0/1.jpg", "0/3.jpg", "1/2.jpg", "1/4.jpg"]
    assert not any(name.startswith(".") for name in os.listdir(save_dir))


def test_idx_entry_past_the_end_is_skipped_not_fatal(tmp_path):
    images = [(0.0, fake_jpeg(1)), (1.0, fake_jpeg(2)), (1.0, fake_jpeg(3))]
    rec_path, idx_path = write_insightface_rec(tmp_path, images)
    offsets = read_idx(idx_path)
    offsets[2] = os.path.getsize(rec_path) + 1000
    with open(idx_path, "w") as idx:
        idx.writelines(f"{key}\t{offset}\n" for key, offset in offsets.items())
    with pytest.raises(RecordIOError, match=r"train\.idx: key 2 points to offset \d+, beyond the end"):
        RecordIOReader(rec_path)  # the reader alone stays strict by default
    with RecordIOReader(rec_path, strict=False) as reader, pytest.raises(RecordIOError, match="beyond the end"):
        reader.read(2)
    with pytest.warns(UserWarning, match=r"key 2: .*train\.idx: key 2 points to offset"):
        _, written, _, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    assert (written, unreadable) == (2, 1)


def test_rec_without_idx_truncated_in_the_middle_converts_what_precedes(tmp_path, caplog):
    images = [(0.0, fake_jpeg(index, size=100)) for index in range(4)]
    rec_path, idx_path = write_insightface_rec(tmp_path, images)
    cut = read_idx(idx_path)[3] + 20
    os.remove(idx_path)
    with open(rec_path, "r+b") as rec:
        rec.truncate(cut)
    with pytest.raises(RecordIOError, match="truncated record"):
        RecordIOReader(rec_path)
    with pytest.warns(UserWarning, match=r"key 3: .*truncated record"):
        _, written, _, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    assert (written, unreadable) == (2, 1)
    assert "records after it cannot be found without an .idx" in caplog.text


def test_nan_negative_and_fractional_labels_are_skipped_with_their_key(tmp_path):
    images = [(0.0, fake_jpeg(1)), (float("nan"), fake_jpeg(2)), (-3.0, fake_jpeg(3)), (2.5, fake_jpeg(4)),
              (1.0, fake_jpeg(5)), ([float("nan"), 1.0], fake_jpeg(6))]
    write_insightface_rec(tmp_path, images)
    with pytest.warns(UserWarning) as caught:
        save_dir, written, _, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    assert (written, unreadable) == (2, 4)
    messages = "\n".join(str(warning.message) for warning in caught)
    for key, label in [(2, "nan"), (3, "-3.0"), (4, "2.5"), (6, "nan")]:
        assert f"train.rec key {key}: label {label} is not a non-negative integer class index" in messages
    assert sorted(os.listdir(save_dir)) == ["0", "1"]


def test_a_fully_unreadable_rec_is_an_error_naming_it(tmp_path):
    rec_path, idx_path = write_insightface_rec(tmp_path, [(0.0, fake_jpeg(1)), (1.0, fake_jpeg(2))])
    content = bytearray(Path(rec_path).read_bytes())
    offsets = read_idx(idx_path)
    for key in (1, 2):
        content[offsets[key]:offsets[key] + 4] = b"JUNK"  # the header record 0 stays readable
    Path(rec_path).write_bytes(bytes(content))
    with pytest.warns(UserWarning), pytest.raises(RecordIOError, match=r"train\.rec: none of its 2 image records"):
        prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    Path(rec_path).write_bytes(b"\0" * 64)
    with pytest.raises(RecordIOError, match=r"train\.rec: no RecordIO magic word at offset 0"):
        prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))


def test_many_bad_records_list_the_first_ones_and_count_all(tmp_path, caplog):
    count = prepare_data.MAX_LISTED_RECORDS + 5
    images = [(-1.0, fake_jpeg(index)) for index in range(count)] + [(0.0, fake_jpeg(99))]
    write_insightface_rec(tmp_path, images)
    with pytest.warns(UserWarning) as caught:
        _, written, _, unreadable = prepare_data.MXnet_record_to_folder(str(tmp_path), str(tmp_path / "out"))
    assert (written, unreadable) == (1, count)
    messages = [str(warning.message) for warning in caught]
    assert sum("is not a non-negative integer" in message for message in messages) == prepare_data.MAX_LISTED_RECORDS
    assert any("the others are only counted" in message for message in messages)
    assert f"{count} unreadable records skipped" in caplog.text


def test_index_arrays_and_offsets_of_keys(tmp_path):
    rec_path, idx_path = write_insightface_rec(tmp_path, [(0.0, fake_jpeg(1)), (1.0, fake_jpeg(2))])
    keys, offsets = read_idx_arrays(idx_path)
    assert keys.tolist() == [0, 1, 2] and read_idx(idx_path) == dict(zip([0, 1, 2], offsets.tolist(), strict=True))
    with RecordIOReader(rec_path) as reader:  # keys 0, 1, 2: dense
        assert reader.offsets_of([2, 0]).tolist() == [offsets[2], offsets[0]]
        with pytest.raises(KeyError, match="no record with key 3"):
            reader.offsets_of([1, 3])
    with open(idx_path, "w") as idx:  # sparse keys out of order, a blank line
        idx.write(f"7\t{offsets[1]}\n\n3\t{offsets[2]}\n0\t{offsets[0]}\n")
    with RecordIOReader(rec_path) as reader:
        assert reader.keys == [7, 3, 0]
        assert reader.offsets_of([0, 3, 7]).tolist() == [offsets[0], offsets[2], offsets[1]]
        assert unpack(reader.read(3))[1] == fake_jpeg(2)
        with pytest.raises(KeyError, match="no record with key 5"):
            reader.read(5)
    for bad_line in ("8 x", "-1\t4", "9\t4\t5"):
        with open(idx_path, "w") as idx:
            idx.write(f"7\t{offsets[1]}\n\n3\t{offsets[2]}\n0\t{offsets[0]}\n{bad_line}\n")
        with pytest.raises(RecordIOError, match=r"train\.idx: line 5 is not 'key<TAB>offset'"):
            read_idx_arrays(idx_path)
