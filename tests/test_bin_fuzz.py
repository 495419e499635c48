"""Fuzzing the .bin loader: thousands of mutated copies of small legitimate bins (byte flips, truncations,
insertions, repeated slices; seeded) are loaded in one subprocess. None may crash the process, take long, or raise
anything but `BinFileError`."""

import json
import pickle
import time

import numpy as np
from test_bin_files import IMAGES, ISSAME, py2_pickle, run_isolated

MUTATIONS = 3000
SEED = 17
TIME_LIMIT_S = 60

FUZZ_SCRIPT = """
import json, random, traceback
from pathlib import Path
from bin_files import BinFileError, load_bin

bases = [path.read_bytes() for path in sorted(Path(sys.argv[1]).glob("base-*.bin"))]
target = Path(sys.argv[1]) / "current.bin"
rng = random.Random({seed})
INTERESTING = [0x00, 0x01, 0x7F, 0x80, 0xFF, ord("("), ord("R"), ord("b"), ord("."), ord("q"), ord("r")]


def mutate(data):
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(["flip", "interesting", "truncate", "insert", "repeat", "delete"])
        position = rng.randrange(len(data) + 1)
        if kind == "flip" and position < len(data):
            data[position] ^= 1 << rng.randrange(8)
        elif kind == "interesting" and position < len(data):
            data[position] = rng.choice(INTERESTING)
        elif kind == "truncate":
            del data[position:]
        elif kind == "insert":
            data[position:position] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif kind == "repeat":
            data[position:position] = data[position:position + rng.randint(1, 32)]
        elif kind == "delete":
            del data[position:position + rng.randint(1, 8)]
    return bytes(data)


outcomes = {{"loaded": 0, "BinFileError": 0}}
for iteration in range({count}):
    target.write_bytes(mutate(rng.choice(bases)))
    try:
        load_bin(target)
        outcomes["loaded"] += 1
    except BinFileError as error:
        if str(target) not in str(error):
            sys.exit(f"mutation {{iteration}}: the message does not name the file: {{error}}")
        outcomes["BinFileError"] += 1
    except BaseException:
        traceback.print_exc()
        sys.exit(f"mutation {{iteration}} escaped the loader's error class (file kept as {{target}})")
print(json.dumps(outcomes))
"""


def legitimate_bases():
    """Small legitimate bins in the variants real files use (Python 2 and 3 pickles, bytes, arrays, np.bool_)."""
    return [
        py2_pickle(IMAGES, ISSAME),
        pickle.dumps((IMAGES, ISSAME), protocol=2),
        pickle.dumps(([bytearray(item) for item in IMAGES], ISSAME), protocol=4),
        pickle.dumps(([np.frombuffer(item, np.uint8) for item in IMAGES], np.array(ISSAME)), protocol=2),
        pickle.dumps((np.array(IMAGES, dtype=object), [np.bool_(value) for value in ISSAME]), protocol=5),
    ]


def test_mutated_bins_never_crash_nor_escape_the_error_class(tmp_path):
    for index, content in enumerate(legitimate_bases()):
        (tmp_path / f"base-{index}.bin").write_bytes(content)
    started = time.monotonic()
    returncode, output = run_isolated(FUZZ_SCRIPT.format(seed=SEED, count=MUTATIONS), tmp_path, timeout=300)
    elapsed = time.monotonic() - started
    assert returncode == 0, f"return code {returncode}: {output[-3000:]}"
    outcomes = json.loads(output.splitlines()[-1])
    assert sum(outcomes.values()) == MUTATIONS and outcomes["BinFileError"] > MUTATIONS // 2, outcomes
    assert elapsed < TIME_LIMIT_S, f"{MUTATIONS} mutations took {elapsed:.0f} s"

