"""Seeds of the stateless random ops (`tf.random.stateless_*`) that all data augmentation draws from.

A seed is a (2,) int64 tensor; the same seed gives the same draw, on every run and whatever the order in which
`tf.data`'s parallel calls run. A data pipeline gives batch `i` the seed `[seed, i]` (`batch_seed`; an unseeded pipeline
draws its int seed once, `pipeline_seed`), each image of the batch one seed split from it (`image_seeds`), and
every random draw of an op one seed folded from those (`op_seed`). A function called with `seed=None` draws a
fresh one from TensorFlow's global generator (`fresh_seed`).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import random

import tensorflow as tf

SEED_RANGE = 2**31 - 1  # fresh seeds are drawn in [0, SEED_RANGE)


def fresh_seed():
    """A new (2,) int64 seed drawn from TensorFlow's global generator (the `seed=None` case)."""
    return tf.random.uniform([2], 0, SEED_RANGE, dtype=tf.int64)


def seed_or_fresh(seed):
    """`seed` as a (2,) int64 tensor, or `fresh_seed()` when it is None."""
    return fresh_seed() if seed is None else tf.cast(seed, tf.int64)


def op_seed(seed, salt):
    """The (2,) int64 seed of one random draw, told apart by the int `salt`, derived from `seed` ((2,) int); None
    when `seed` is None (the draw then takes a fresh seed where it happens, `seed_or_fresh`)."""
    return None if seed is None else tf.random.experimental.stateless_fold_in(tf.cast(seed, tf.int64), salt)


def pipeline_seed(seed):
    """The int seed of a data pipeline: `seed`, or when it is None a fresh one from Python's `random` (seeded by
    `keras.utils.set_random_seed`), so that the pipeline holds no stateful random op either way."""
    return random.randrange(SEED_RANGE) if seed is None else int(seed)


def batch_seed(seed, index):
    """The (2,) int64 seed `[seed, index]` of batch `index` (int64 scalar) of a pipeline seeded by the int `seed`."""
    return tf.stack([tf.constant(seed, tf.int64), tf.cast(index, tf.int64)])


def image_seeds(seed, count):
    """`count` independent seeds, int64 (count, 2), derived from a batch's (2,) `seed`: one per image."""
    return tf.random.experimental.stateless_split(seed_or_fresh(seed), count)
