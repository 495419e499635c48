"""Face-verification evaluation on `.bin` pair files (LFW, CFP-FP, AgeDB-30, ...).

Two accuracies are reported, as in the original Keras_insightface code:

- `accuracy_mean` / `accuracy_std`: the standard InsightFace 10-fold protocol, the one every published LFW /
  CFP-FP / AgeDB figure comes from. Embeddings (plus their flip embeddings, summed) are L2-normalised, a pair's
  distance is the squared L2 distance (0..4), thresholds are `arange(0, 4, 0.01)`, folds are an unshuffled
  `KFold`, and for each test fold the threshold with the best accuracy on the other folds is applied.
- `max_accuracy` / `max_accuracy_threshold`: the original training callback's figure, the best single cosine
  threshold over the whole set, searched only among the top 10 % negative-pair scores (optimistic; comparable
  only with the original's training logs).

`val`, `val_std`, `far` are the validation rate at FAR 1e-3 (thresholds `arange(0, 4, 0.001)`, same folds). The
original interpolated the threshold with SciPy's `interp1d`, which raises on SciPy >= 1.9 because the FAR curve
repeats values; here the threshold is interpolated linearly between the last threshold whose training FAR is
below the target and the next one, which is what `interp1d` computed on older SciPy.

Images: every image is decoded as RGB and embedded through `embedding.embed_dataset` (normalised there with
`preprocess.normalize`, the flip embeddings added with `flip`). An image whose size differs
from the model's input size (112x112 when the model accepts any size) is resized bilinearly, with a warning
naming the file: the standard benchmarks are 112x112, so a resize usually means a wrong file. Every image is
decoded once when a bin is opened (`eval_callback`, before training starts): a pair holding an image that cannot
be decoded is left out, with a warning naming the file, the pair and the image index, and the accuracies are over
the remaining pairs.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import glob
import logging
import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from sklearn.model_selection import KFold

from atomic_io import save_model_atomic
from bin_files import load_bin
from embedding import embed_dataset, load_runner
from image_decode import decode_image
from preprocess import l2_normalize

logger = logging.getLogger(__name__)

ACCURACY_THRESHOLDS = np.arange(0, 4, 0.01)
VAL_THRESHOLDS = np.arange(0, 4, 0.001)
FAR_TARGET = 1e-3
DECODE_CHECK_BATCH = 4096  # image indices fetched at a time by `undecodable_images`
MAX_NAMED_IMAGES = 20  # undecodable images named in a warning or error


class NonFiniteEmbeddingsError(ValueError):
    """Embeddings that contain NaN or infinity: a diverged model, nothing to evaluate."""


# ----------------------------------------------------------------------------------------------------------------
# Metrics on embeddings


def check_finite(embeddings, what="embeddings"):
    """Raise `NonFiniteEmbeddingsError` when `embeddings` hold NaN or infinity."""
    bad = np.size(embeddings) - np.count_nonzero(np.isfinite(embeddings))
    if bad:
        raise NonFiniteEmbeddingsError(
            f"{what} contain {bad} non-finite values (NaN or inf); the model probably diverged, nothing to evaluate"
        )


def pair_distances(embeddings):
    """Squared L2 distance of each pair (rows 2k, 2k+1) of already normalised embeddings, shape (N,)."""
    return np.sum(np.square(embeddings[0::2] - embeddings[1::2]), axis=1)


def count_below(sorted_values, thresholds):
    """How many of `sorted_values` are strictly below each threshold, shape (len(thresholds),)."""
    return np.searchsorted(sorted_values, thresholds, side="left")


def accuracy_per_threshold(thresholds, distances, issame):
    """Fraction of pairs classified right when "same" means `distance < threshold`, for each threshold."""
    positives, negatives = np.sort(distances[issame]), np.sort(distances[~issame])
    correct = count_below(positives, thresholds) + negatives.size - count_below(negatives, thresholds)
    return correct / distances.size


def val_far(threshold, distances, issame):
    """(VAL, FAR) at one threshold: accepted positives / positives, accepted negatives / negatives (NaN if none)."""
    accept = distances < threshold
    positives, negatives = np.count_nonzero(issame), np.count_nonzero(~issame)
    val = np.count_nonzero(accept & issame) / positives if positives else np.nan
    far = np.count_nonzero(accept & ~issame) / negatives if negatives else np.nan
    return val, far


def fold_splits(num_pairs, nrof_folds):
    """(train, test) index arrays of an unshuffled `KFold(nrof_folds)`; one fold means train = test = all."""
    indices = np.arange(num_pairs)
    if nrof_folds == 1:
        return [(indices, indices)]
    return list(KFold(n_splits=nrof_folds, shuffle=False).split(indices))


def threshold_at_far(thresholds, fars, far_target, interpolate=True):
    """The threshold at which the FAR curve `fars` (non-decreasing along `thresholds`) reaches `far_target`.

    Args:
        thresholds: candidate thresholds (T,), in the order of `fars`.
        fars: the false-accept rate (T,) at each threshold, non-decreasing.
        far_target: the FAR to reach.
        interpolate: True (the verification protocol): linear interpolation between the last threshold with FAR
            below the target and the first one with FAR at or above it, 0.0 when the curve never reaches the
            target (the standard protocol's convention). False: the last threshold whose FAR is at most the
            target, exactly (`thresholds[0]` when even the first FAR is above it).

    Returns:
        The threshold (a float, or an element of `thresholds`).
    """
    fars = np.asarray(fars)
    if not interpolate:
        within = np.flatnonzero(fars <= far_target)
        return thresholds[within[-1] if within.size else 0]
    if np.max(fars) < far_target:
        return 0.0
    upper = int(np.argmax(fars >= far_target))
    if upper == 0:
        return float(thresholds[0])
    lower = upper - 1
    fraction = (far_target - fars[lower]) / (fars[upper] - fars[lower])
    return thresholds[lower] + fraction * (thresholds[upper] - thresholds[lower])


def kfold_accuracy(distances, issame, nrof_folds=10, thresholds=ACCURACY_THRESHOLDS):
    """Per-fold test accuracy, each fold using the threshold that is best on the other folds, shape (folds,)."""
    accuracies = np.zeros(nrof_folds)
    for fold, (train, test) in enumerate(fold_splits(len(distances), nrof_folds)):
        best = thresholds[np.argmax(accuracy_per_threshold(thresholds, distances[train], issame[train]))]
        accuracies[fold] = accuracy_per_threshold(np.array([best]), distances[test], issame[test])[0]
    return accuracies


def calculate_val(distances, issame, far_target=FAR_TARGET, nrof_folds=10, thresholds=VAL_THRESHOLDS):
    """VAL at `far_target` over unshuffled folds → `(val_mean, val_std, far_mean)`.

    For each fold the threshold reaching `far_target` on the other folds (`threshold_at_far`) is applied to the
    test fold.
    """
    vals, fars = np.zeros(nrof_folds), np.zeros(nrof_folds)
    for fold, (train, test) in enumerate(fold_splits(len(distances), nrof_folds)):
        train_negatives = np.sort(distances[train][~issame[train]])
        train_fars = count_below(train_negatives, thresholds) / train_negatives.size
        threshold = threshold_at_far(thresholds, train_fars, far_target)
        vals[fold], fars[fold] = val_far(threshold, distances[test], issame[test])
    return float(np.mean(vals)), float(np.std(vals)), float(np.mean(fars))


def max_threshold_accuracy(cosines, issame):
    """The original callback's accuracy: `(accuracy, threshold)` of the best single cosine threshold.

    A pair counts as right when a positive's cosine is `> t` or a negative's is `<= t`. Candidate thresholds are
    only the largest 10 % of negative-pair cosines (all of them when there are fewer than 10 negatives, as the
    original's `ff[-0:]` slice does); ties go to the lowest candidate.
    """
    positives, negatives = np.sort(cosines[issame]), np.sort(cosines[~issame])
    candidates = negatives[-int(0.1 * negatives.size):]
    correct = [np.count_nonzero(positives > value) + np.count_nonzero(negatives <= value) for value in candidates]
    best = int(np.argmax(correct))
    return correct[best] / cosines.size, float(candidates[best])


def evaluate_embeddings(embeddings, issame, embeddings_flip=None, nrof_folds=10, far_target=FAR_TARGET):
    """All verification metrics of pair embeddings.

    Args:
        embeddings: (2N, D) embeddings, pair k = rows 2k and 2k+1.
        issame: N booleans, whether pair k shows one person.
        embeddings_flip: optional (2N, D) embeddings of the horizontally flipped images, added before normalising.
        nrof_folds: folds of the protocol (10 for the published figures).
        far_target: FAR at which `val` is measured (1e-3 for the published figures).

    Returns a dict of floats: `accuracy_mean`, `accuracy_std` (10-fold protocol, fractions), `max_accuracy`,
    `max_accuracy_threshold` (original callback's rule, a cosine), `val`, `val_std`, `far`. Raises
    `NonFiniteEmbeddingsError` on NaN/inf and `ValueError` when the shapes do not match or a class is missing.
    """
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings_flip is not None:
        embeddings = embeddings + np.asarray(embeddings_flip, dtype=np.float64)
    issame = np.asarray(issame, dtype=bool)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * issame.size:
        raise ValueError(f"expected (2N, D) embeddings for N={issame.size} pairs, got shape {embeddings.shape}")
    if issame.all() or not issame.any():
        raise ValueError("issame must hold both positive and negative pairs")
    check_finite(embeddings)
    normalized = l2_normalize(embeddings)  # float64, as cast above
    distances = pair_distances(normalized)
    accuracies = kfold_accuracy(distances, issame, nrof_folds)
    val, val_std, far = calculate_val(distances, issame, far_target, nrof_folds)
    cosines = np.sum(normalized[0::2] * normalized[1::2], axis=1)
    max_accuracy, max_threshold = max_threshold_accuracy(cosines, issame)
    return {
        "accuracy_mean": float(np.mean(accuracies)),
        "accuracy_std": float(np.std(accuracies)),
        "max_accuracy": float(max_accuracy),
        "max_accuracy_threshold": max_threshold,
        "val": val,
        "val_std": val_std,
        "far": far,
    }


# ----------------------------------------------------------------------------------------------------------------
# Retrieval: Recall@k

RECALL_BLOCK_ELEMENTS = 1 << 24  # similarities held at once by `nearest_neighbours` (64 MiB of float32)


def nearest_neighbours(embeddings, max_k, block_elements=RECALL_BLOCK_ELEMENTS):
    """Indices (N, max_k) of each row's `max_k` most cosine-similar *other* rows, most similar first.

    Computed in blocks of query rows so that at most about `block_elements` similarities exist at a time
    (100,000 samples: blocks of 167 rows). `max_k` must be below N.
    """
    unit = l2_normalize(np.asarray(embeddings, dtype=np.float64)).astype(np.float32)
    count = len(unit)
    block = max(1, block_elements // count)
    neighbours = np.empty((count, max_k), dtype=np.int64)
    for start in range(0, count, block):
        similarities = unit[start : start + block] @ unit.T
        rows = np.arange(len(similarities))
        similarities[rows, start + rows] = -np.inf
        top = np.argpartition(-similarities, max_k - 1, axis=1)[:, :max_k]
        order = np.argsort(-np.take_along_axis(similarities, top, axis=1), axis=1, kind="stable")
        neighbours[start : start + block] = np.take_along_axis(top, order, axis=1)
    return neighbours


def retrieval_hits(embeddings, labels, ks):
    """`(hits, answerable)` of every sample used as a query against all the others.

    `hits` (N, len(ks)) bool: a sample of the query's class is among its `k` nearest neighbours (all others when
    `k` >= N); `answerable` (N,) bool: the query's class has another sample (only those count for Recall@k).
    """
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    answerable = counts[inverse.reshape(-1)] > 1
    hits = np.zeros((len(labels), len(ks)), dtype=bool)
    if len(labels) < 2:
        return hits, answerable
    max_k = min(max(ks), len(labels) - 1)
    same_class = labels[nearest_neighbours(embeddings, max_k)] == labels[:, None]
    first_hit = np.where(same_class.any(axis=1), same_class.argmax(axis=1), max_k)
    hits[:] = first_hit[:, None] < np.minimum(ks, max_k)[None, :]
    return hits, answerable


def recall_at_k(embeddings, labels, k=(1, 5, 10), groups=None, within_groups=False):
    """Recall@k of nearest-neighbour retrieval: each sample queries all the others by cosine similarity.

    Args:
        embeddings: (N, D) embeddings (normalised here); labels: N class labels (any comparable values).
        k: the k values; Recall@k = fraction of queries with a sample of their class among their k nearest.
        groups: optional N group names (e.g. RFW's African / Asian / Caucasian / Indian) for a per-group breakdown.
        within_groups: search each group's samples only among that group (as for RFW's per-group subsets);
            False searches the whole set and only sorts the queries by group.

    Queries whose class has no other sample (in the searched set) cannot hit and are skipped, and counted.
    Returns a pandas DataFrame: rows `"all"` then each group (natural order), columns `"R@<k>"` (fractions; NaN
    for a row without queries), `"queries"` (queries counted) and `"skipped"`.
    """
    import pandas as pd

    from folder_scan import natural_sort_key

    embeddings, labels = np.asarray(embeddings), np.asarray(labels)
    if embeddings.ndim != 2 or len(embeddings) != len(labels):
        raise ValueError(f"expected (N, D) embeddings for N={len(labels)} labels, got shape {embeddings.shape}")
    check_finite(embeddings)
    ks = sorted({int(value) for value in np.atleast_1d(k)})
    if not ks or ks[0] < 1:
        raise ValueError(f"k values must be >= 1, got {k}")
    groups = None if groups is None else np.asarray(groups).astype(str)
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"{len(groups)} group names for {len(labels)} samples")

    hits, answerable = np.zeros((len(labels), len(ks)), dtype=bool), np.zeros(len(labels), dtype=bool)
    subsets = [groups == name for name in np.unique(groups)] if within_groups and groups is not None else [
        np.ones(len(labels), dtype=bool)
    ]
    for subset in subsets:
        hits[subset], answerable[subset] = retrieval_hits(embeddings[subset], labels[subset], ks)

    names = [] if groups is None else sorted(set(groups), key=natural_sort_key)
    rows = {}
    for name, members in [("all", np.ones(len(labels), dtype=bool))] + [(g, groups == g) for g in names]:
        counted = members & answerable
        recalls = hits[counted].mean(axis=0) if counted.any() else np.full(len(ks), np.nan)
        rows[name] = {**{f"R@{value}": float(recall) for value, recall in zip(ks, recalls, strict=True)},
                      "queries": int(counted.sum()), "skipped": int((members & ~answerable).sum())}
    return pd.DataFrame.from_dict(rows, orient="index")


# ----------------------------------------------------------------------------------------------------------------
# Embedding a .bin file


def warn_if_resized(bins, image_size, path):
    """Warn when the first image of a `.bin` is not `image_size` (images are then resized bilinearly)."""
    shape = tuple(tf.io.decode_image(bins[0], channels=3, expand_animations=False).shape[:2])
    if shape != tuple(image_size):
        warnings.warn(
            f"{path}: images are {shape[0]}x{shape[1]}, the model expects {image_size[0]}x{image_size[1]}; "
            "resizing them (bilinear). Published benchmark figures use 112x112 bins.",
            stacklevel=3,
        )


def index_and_decoded_shape(index, data):
    """`(index, shape (3,) of the decoded image)`: the element `undecodable_images` keeps when decoding works."""
    return index, tf.shape(tf.io.decode_image(data, channels=3, expand_animations=False))


def undecodable_images(bins):
    """Indices (sorted int64 array) of the encoded images of `bins` (a list of bytes) that `tf.io.decode_image`
    cannot decode (not an image, truncated, corrupt): one parallel decoding pass, the pixels are not kept (1.1 to
    2.6 s for 12,000 112x112 JPEGs, the size of LFW, on two busy CPU cores: as long as the decoding part of one
    evaluation)."""
    indexed = tf.data.Dataset.zip(tf.data.Dataset.range(len(bins)),
                                  tf.data.Dataset.from_tensor_slices(tf.constant(bins, dtype=tf.string)))
    decoded = indexed.map(index_and_decoded_shape, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    readable = np.zeros(len(bins), dtype=bool)
    for indices, _ in decoded.batch(DECODE_CHECK_BATCH):
        readable[indices.numpy()] = True
    return np.flatnonzero(~readable)


def drop_undecodable_pairs(bins, issame, path):
    """Leave out the pairs of a `.bin` that hold an image `undecodable_images` finds.

    Logs one warning naming the file, the count, and each such pair with its image index (pair k = images 2k,
    2k+1). Returns `(bins, issame, skipped)`: the remaining images (list) and labels (bool array), and the
    skipped pair indices (sorted list). Raises ValueError naming the file when no pair is left.
    """
    bad_images = undecodable_images(bins)
    if not bad_images.size:
        return bins, issame, []
    skipped = sorted({int(index) // 2 for index in bad_images})
    named = ", ".join(f"pair {index // 2} (image {index})" for index in bad_images[:MAX_NAMED_IMAGES])
    named += ", ..." if bad_images.size > MAX_NAMED_IMAGES else ""
    if len(skipped) == len(issame):
        raise ValueError(f"{path}: no pair left to evaluate, every pair holds an image that cannot be decoded: "
                         f"{named}")
    logger.warning("%s: %d of %d pairs hold an image that cannot be decoded (not an image, truncated or corrupt) "
                   "and are left out of the evaluation, whose accuracies are over the other %d pairs: %s", path,
                   len(skipped), len(issame), len(issame) - len(skipped), named)
    keep = np.ones(len(issame), dtype=bool)
    keep[skipped] = False
    return [data for index, data in enumerate(bins) if keep[index // 2]], issame[keep], skipped


def bin_dataset(bins, image_size, batch_size):
    """Batches of uint8 RGB images (B, H, W, 3) decoded from encoded image bytes, resized bilinearly to
    `image_size` (then rounded) when their size differs (`image_decode.decode_image`)."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(bins, dtype=tf.string))
    return dataset.map(lambda data: decode_image(data, image_size), num_parallel_calls=tf.data.AUTOTUNE).batch(
        batch_size)


class eval_callback(keras.callbacks.Callback):  # noqa: N801 (the original's public name)
    """Evaluate `basic_model` on one `.bin` pair file at each epoch end (and every `eval_freq` batches).

    Logs `>>>> <name> evaluation max accuracy: ..., thresh: ..., previous max accuracy: ...` (plus
    `PCA accuray = mean ± std`, the 10-fold accuracy, with `PCA_acc=True`; there is no PCA, the name is the
    original's) and `>>>> Improved = ...` when the accuracy is at least the best so far. Then, with `save_model`,
    the basic model is saved to `<checkpoint_dir>/<save_model>_basic_<name>_epoch_<step>_<accuracy>.h5`,
    replacing the previous best file of this bin. Non-finite embeddings log a message and skip the evaluation.

    Undecodable images: every image of the bin is decoded once when the callback is constructed, before training
    starts (`drop_undecodable_pairs`). A pair holding an image that cannot be decoded is left out of every
    evaluation, with one warning naming the file, each such pair and image index, and the count; the accuracies
    are then over the remaining pairs. A bin with no decodable pair raises ValueError naming the file.

    Args:
        basic_model: the Keras embedding model (its embedding part is used, `GhostFaceNets.embedding_model`).
        test_bin_file: the `.bin` pair file.
        batch_size: images per model call.
        save_model: name stem of the best-model files; None saves nothing.
        eval_freq: also evaluate every `eval_freq` batches when > 1.
        flip: add the embeddings of the mirrored images (the standard flip test).
        PCA_acc: also compute the 10-fold protocol's accuracy (`metrics`).
        checkpoint_dir: the folder of the best-model files (attribute `checkpoint_dir`).

    Attributes: `test_names` (bin stem), `test_issame` (labels of the pairs evaluated), `skipped_pairs` (indices
    of the pairs left out, in the file's numbering), `steps`, `max_accuracy`, `cur_acc`, `acc_thresh`, `embs`
    (flip-summed raw embeddings of the last run), `tt`/`ff` (sorted positive / negative cosines), `metrics` (the
    full `evaluate_embeddings` dict when `PCA_acc=True`).
    """

    def __init__(self, basic_model, test_bin_file, batch_size=128, save_model=None, eval_freq=1, flip=True,
                 PCA_acc=False, checkpoint_dir="checkpoints"):
        super().__init__()
        self.test_bin_file = os.fspath(test_bin_file)
        bins, issame = load_bin(self.test_bin_file)
        self.bins, self.test_issame, self.skipped_pairs = drop_undecodable_pairs(bins, issame, self.test_bin_file)
        self.test_names = os.path.splitext(os.path.basename(self.test_bin_file))[0]
        self.basic_model, self.batch_size = basic_model, batch_size
        self.save_model, self.eval_freq, self.flip, self.PCA_acc = save_model, eval_freq, flip, PCA_acc
        self.checkpoint_dir = checkpoint_dir
        self.steps = int(np.ceil(len(self.bins) / batch_size))
        self.max_accuracy, self.cur_acc, self.acc_thresh = 0.0, 0.0, 0.0
        self.embs, self.tt, self.ff, self.metrics = None, None, None, None
        self._dataset, self._runner, self._runner_model = None, None, None

    def dataset(self):
        """The decoded, batched uint8 images (built once, on first use, at the model's input size)."""
        if self._dataset is None:
            image_size = self.runner().image_size
            warn_if_resized(self.bins, image_size, self.test_bin_file)
            self._dataset = bin_dataset(self.bins, image_size, self.batch_size)
        return self._dataset

    def runner(self):
        """The `embedding.KerasRunner` of the current `basic_model`, rebuilt when `basic_model` is replaced."""
        if self._runner_model is not self.basic_model:
            self._runner, self._runner_model = load_runner(self.basic_model), self.basic_model
        return self._runner

    def current_runner(self):
        """`runner()` with its folded batch normalisation recomputed from `basic_model`'s current weights."""
        runner = self.runner()
        runner.refold()
        return runner

    def embedding_function(self):
        """The runner's compiled `tf.function` (images → float32 embeddings) with `basic_model`'s current weights,
        traced once for any batch size."""
        return self.current_runner().function

    def compute_embeddings(self):
        """Raw embeddings (2N, D) float32 of all images, plus those of the flipped images when `flip`."""
        return embed_dataset(self.current_runner(), self.dataset(), self.flip, self.steps,
                             desc="Evaluating " + self.test_names)

    def on_batch_end(self, batch, logs=None):
        if self.eval_freq > 1 and batch != 0 and batch % self.eval_freq == 0:
            self.evaluate_now(f"{self.last_finished_epoch() + 1}_batch_{batch}")

    def last_finished_epoch(self):
        """Index of the last epoch the model's History recorded, 0 before the first one ends."""
        history = getattr(self.model, "history", None) if self.model is not None else None
        epochs = getattr(history, "epoch", None)
        return epochs[-1] if epochs else 0

    def on_epoch_end(self, epoch=0, logs=None):
        self.evaluate_now(str(epoch + 1))

    def evaluate_now(self, cur_step):
        """Embed the bin, log the accuracy line, and save the basic model when it improved."""
        embs = self.compute_embeddings()
        if not np.isfinite(embs).all():
            logger.warning(">>>> %s: NAN or inf in embs, not a good one; skipping this evaluation", self.test_names)
            return
        self.embs = embs
        normalized = l2_normalize(np.asarray(embs, dtype=np.float64))
        cosines = np.sum(normalized[0::2] * normalized[1::2], axis=1)
        self.tt, self.ff = np.sort(cosines[self.test_issame]), np.sort(cosines[~self.test_issame])
        acc_max, self.acc_thresh = max_threshold_accuracy(cosines, self.test_issame)
        self.cur_acc = acc_max
        line = (f">>>> {self.test_names} evaluation max accuracy: {acc_max:f}, thresh: {self.acc_thresh:f}, "
                f"previous max accuracy: {self.max_accuracy:f}")
        if self.PCA_acc:
            self.metrics = evaluate_embeddings(embs, self.test_issame)
            line += f", PCA accuray = {self.metrics['accuracy_mean']:f} ± {self.metrics['accuracy_std']:f}"
        logger.info(line)
        if acc_max >= self.max_accuracy:
            logger.info(">>>> Improved = %f", acc_max - self.max_accuracy)
            self.max_accuracy = acc_max
            if self.save_model:
                self.save_best(cur_step)

    def save_best(self, cur_step):
        """Save the basic model as the new best of this bin in `checkpoint_dir` (atomically: a temporary file
        renamed into place), then remove the previous best file."""
        save_path_base = os.path.join(self.checkpoint_dir, f"{self.save_model}_basic_{self.test_names}_epoch_")
        save_path = save_path_base + f"{cur_step}_{self.max_accuracy:f}.h5"
        logger.info(">>>> Saving model to: %s", save_path)
        save_model_atomic(self.basic_model, save_path)
        for old in glob.glob(glob.escape(save_path_base) + "*.h5"):
            if os.path.abspath(old) != os.path.abspath(save_path):
                os.remove(old)


def evaluate_bin_files(basic_model, test_bin_files, batch_size=128, flip=True):
    """All metrics of `basic_model` on each `.bin` → pandas DataFrame indexed by bin name (NaN rows, with a
    logged message, for bins whose embeddings are non-finite). Every bin is opened and checked before any is
    embedded: pairs with an undecodable image are left out with a warning, as in `eval_callback`; a bin that
    cannot be loaded or has no decodable pair raises (`BinFileError` / ValueError naming it)."""
    import pandas as pd

    rows = {}
    callbacks = [eval_callback(basic_model, path, batch_size=batch_size, flip=flip) for path in test_bin_files]
    for path, callback in zip(test_bin_files, callbacks, strict=True):  # every bin checked before any embedding
        try:
            rows[callback.test_names] = evaluate_embeddings(callback.compute_embeddings(), callback.test_issame)
        except NonFiniteEmbeddingsError as error:
            logger.warning(">>>> %s: %s", path, error)
            rows[callback.test_names] = {}
    return pd.DataFrame.from_dict(rows, orient="index")


def parse_arguments(argv=None):
    """Command-line options of `python evals.py`."""
    parser = argparse.ArgumentParser(description="Evaluate a basic (embedding) model on .bin pair files.")
    parser.add_argument("-m", "--basic_model", required=True, help="model file (.h5 / .keras), the embedding model")
    parser.add_argument("-b", "--batch_size", type=int, default=128, help="batch size")
    parser.add_argument("-t", "--test_bin_files", nargs="*", default=[], help=".bin pair files to evaluate")
    parser.add_argument("-F", "--no_flip", action="store_true", help="do not add flipped-image embeddings")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: print a table of all metrics per `.bin`; returns the DataFrame. A refused bin exits with its
    message."""
    import pandas as pd

    from GhostFaceNets import load_model

    args = parse_arguments(argv)
    model = load_model(args.basic_model)
    try:
        table = evaluate_bin_files(model, args.test_bin_files, batch_size=args.batch_size, flip=not args.no_flip)
    except ValueError as error:  # a bin refused (unreadable, no decodable pair): its message names it
        raise SystemExit(f"evals: {error}") from None
    with pd.option_context("display.max_columns", None, "display.width", 200, "display.precision", 6):
        print(table)
    return table


if __name__ == "__main__":
    main()
