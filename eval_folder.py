"""Evaluate a face model on a custom folder of identities (one sub-folder per person, aligned 112x112 faces).

Each identity's *register* is the L2-normalised sum of its images' embeddings, and every image is matched against
all registers. Two top-1 accuracies are reported: the original's, where each image is part of its own register
(optimistic), and a leave-one-out one, where an image is matched against its own register *without itself*
(images of single-image identities have no such register and are left out of that accuracy). The ROC of
"similarity to the own register" (positive) against "similarity to every other register" (negative) is printed
as TPR at FPR 1e-6 … 1e-1 and plotted to a file. `-B` writes a `.bin` of the hardest pairs for `evals.py`.

Bad input: a folder of one class, or of one image per class, is refused (every figure would be 1.0 or
undefined); an image that cannot be decoded is left out with a warning naming it; `-B` refuses to write a
`.bin` without pairs. The CLI exits with the message.

CLI: `python eval_folder.py -d folder -m model.keras [-b 64] [-S embs.npz] [-B pairs.bin] [-P roc.png]`.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import logging
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from atomic_io import save_figure_atomic, save_npz_atomic
from embedding import embed_images, load_runner
from evals import check_finite
from folder_scan import scan_folder
from image_decode import tf_imread
from preprocess import l2_normalize

logger = logging.getLogger(__name__)

FPR_POINTS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
MAX_NAMED_FILES = 10  # unreadable images named in the warning


def check_classes(imm_classes, source):
    """Raise ValueError naming `source` (the folder or the saved embeddings) unless the images `imm_classes`
    (N,) span at least 2 classes, one of them with at least 2 images: with one class every image matches its
    own register (top-1 and TPR 1.0 whatever the model), with one image per class an image is its own register
    and the leave-one-out accuracy has no image to count."""
    counts = np.bincount(np.asarray(imm_classes, dtype=np.int64))
    counts = counts[counts > 0]
    if counts.size < 2:
        raise ValueError(f"{source}: the images span {counts.size} class(es); the register evaluation needs at "
                         "least 2 classes (with one, top-1 and TPR are 1.0 whatever the model)")
    if counts.max() < 2:
        raise ValueError(f"{source}: one image per class; the register evaluation needs a class with at least 2 "
                         "images (an image alone in its class is its own register)")


def index_and_image(path, index, image_size):
    """`(uint8-valued float32 image (H, W, 3) of the file at `path`, index)`, see `readable_images`."""
    return tf_imread(path, image_size), index


def readable_images(filenames, image_size):
    """A dataset of `(image (H, W, 3) float32 0..255, index into filenames)` for the files that can be read and
    decoded, in order (`tf_imread`, resized to `image_size`); the others are dropped (`ignore_errors`)."""
    indexed = tf.data.Dataset.from_tensor_slices((list(filenames), np.arange(len(filenames), dtype=np.int64)))
    return indexed.map(lambda path, index: index_and_image(path, index, image_size),
                       num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()


class Eval_folder:  # noqa: N801 (the original's public name)
    """Embeddings of every image of `data_path` and register-based evaluation.

    `model_interf` is a Keras model, a model file or any callable, run through `embedding.load_runner` (RGB 0..255
    images at the model's input size, 112x112 when unspecified, normalised by the runner; a plain callable gets
    the 0..255 float32 batch). No flip test, as in the original.
    Class order is the sorted folder names, as the original's Keras directory reader used. `save_embeddings`:
    an `.npz` (`embs`, `imm_classes`, `filenames`) written after embedding and reloaded instead when present.
    Attributes: `embs` (N, D) unit-norm, `imm_classes` (N,), `filenames` (N,).

    Refused input (ValueError naming the folder or `.npz`, before embedding): fewer than 2 classes, or only one
    image per class (`check_classes`). An image that cannot be read or decoded is left out with a warning
    naming it (`embed`).
    """

    def __init__(self, model_interf, data_path, batch_size=128, save_embeddings=None):
        if save_embeddings and os.path.isfile(save_embeddings):
            self.data_path = save_embeddings
            with np.load(save_embeddings, allow_pickle=False) as saved:
                self.embs, self.imm_classes = saved["embs"], saved["imm_classes"]
                self.filenames = saved["filenames"].astype(str)
            check_classes(self.imm_classes, save_embeddings)
            return
        self.data_path = data_path
        names, classes, _ = scan_folder(data_path, class_order="sorted")
        self.filenames, self.imm_classes = np.array(names), np.asarray(classes, dtype=np.int64)
        check_classes(self.imm_classes, data_path)
        self.embs = self.embed(model_interf, batch_size)
        check_classes(self.imm_classes, data_path)  # again, without the unreadable images
        if save_embeddings:
            save_npz_atomic(save_embeddings, embs=self.embs, imm_classes=self.imm_classes, filenames=self.filenames)

    def embed(self, model, batch_size):
        """Unit-norm float32 embeddings (N, D) of the readable images (`embedding.embed_images`, no flip), in
        batches with a progress bar. Images that cannot be read or decoded are left out (`filenames` and
        `imm_classes` lose them too), with one warning naming them and their count."""
        runner = load_runner(model)
        batches = readable_images(self.filenames, runner.image_size).batch(batch_size)
        chunks, kept = [], []
        for images, indices in tqdm(batches, "Embedding", total=int(np.ceil(len(self.filenames) / batch_size))):
            chunks.append(embed_images(runner, images, flip=False))
            kept.append(indices.numpy())
        self.leave_out_unreadable(np.concatenate(kept) if kept else np.zeros(0, dtype=np.int64))
        embs = np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
        check_finite(embs, f"embeddings of the images in {self.data_path}")
        return l2_normalize(embs.astype(np.float32))

    def leave_out_unreadable(self, kept):
        """Keep only the images at the indices `kept` (sorted) in `filenames` and `imm_classes`; warn naming the
        others. ValueError naming the folder when no image is left."""
        unreadable = np.setdiff1d(np.arange(len(self.filenames)), kept)
        if not unreadable.size:
            return
        if not kept.size:
            raise ValueError(f"{self.data_path}: none of the {len(self.filenames)} images can be read as an image")
        names = ", ".join(self.filenames[unreadable[:MAX_NAMED_FILES]]) + (
            ", ..." if unreadable.size > MAX_NAMED_FILES else "")
        logger.warning("%s: %d of %d images cannot be read or decoded and are left out: %s", self.data_path,
                       unreadable.size, len(self.filenames), names)
        self.filenames, self.imm_classes = self.filenames[kept], self.imm_classes[kept]

    def registers(self):
        """Per-class sums of embeddings, shape (classes, D) (not normalised)."""
        sums = np.zeros((self.imm_classes.max() + 1, self.embs.shape[1]), dtype=np.float64)
        np.add.at(sums, self.imm_classes, self.embs)
        return sums

    def do_evaluation(self, leave_one_out=False):
        """Top-1 register accuracy and ROC data → `(accuracy, score, label)`.

        `score` holds, for every image, its cosine to its own register (label 1) and to every other register
        (label 0). With `leave_one_out`, the own register leaves the image out and images whose class has a
        single image are skipped.
        """
        sums = self.registers()
        similarities = self.embs @ l2_normalize(sums).T  # (N, classes)
        rows = np.arange(len(self.embs))
        if leave_one_out:
            own = sums[self.imm_classes] - self.embs
            has_others = np.bincount(self.imm_classes)[self.imm_classes] > 1
            similarities[rows, self.imm_classes] = np.sum(l2_normalize(own) * self.embs, axis=1)
            similarities, classes = similarities[has_others], self.imm_classes[has_others]
            rows = np.arange(len(classes))
        else:
            classes = self.imm_classes
        accuracy = float(np.mean(np.argmax(similarities, axis=1) == classes))
        label = np.zeros_like(similarities, dtype=np.int64)
        label[rows, classes] = 1
        return accuracy, similarities.ravel(), label.ravel()

    def generate_eval_pair_bin(self, save_dest, pos_num=3000, neg_num=3000, min_pos=0, max_neg=1.0, nfold=10):
        """Write a `.bin` of the hardest pairs (PNG images) arranged in `nfold` folds of positives then negatives.

        Positives: all within-class pairs with cosine > `min_pos`, the `pos_num` lowest kept. Negatives: for each
        class after the first, all pairs with the most similar earlier class, cosine < `max_neg`, the `neg_num`
        highest kept. Counts are cut to a multiple of `nfold` so every fold has the same numbers. Returns
        `(pairs of file names, scores, issame)` in file order. Raises ValueError naming `save_dest` (nothing
        written) when no pair is left; warns when only one kind of pair is (`evals.py` needs both).
        """
        from bin_files import make_bin

        positives, negatives = self._hardest_pairs(pos_num, neg_num, min_pos, max_neg)
        pos_fold, neg_fold = len(positives) // nfold, len(negatives) // nfold
        check_pair_counts(save_dest, pos_fold * nfold, neg_fold * nfold, len(positives), len(negatives))
        ordered, issame = [], []
        for fold in range(nfold):
            ordered += positives[fold * pos_fold:(fold + 1) * pos_fold]
            ordered += negatives[fold * neg_fold:(fold + 1) * neg_fold]
            issame += [True] * pos_fold + [False] * neg_fold
        pairs = [(self._png(first), self._png(second)) for first, second, _ in ordered]
        make_bin(pairs, issame, save_dest)
        names = [(self.filenames[first], self.filenames[second]) for first, second, _ in ordered]
        return names, np.array([score for _, _, score in ordered]), np.array(issame)

    def _hardest_pairs(self, pos_num, neg_num, min_pos, max_neg):
        """(positives, negatives) as lists of `(index, index, cosine)`, hardest first."""
        positives, negatives = [], []
        registers = l2_normalize(self.registers())
        members = [np.flatnonzero(self.imm_classes == class_id) for class_id in range(len(registers))]
        for class_id, indices in enumerate(members):
            scores = self.embs[indices] @ self.embs[indices].T
            first, second = np.triu_indices(len(indices), k=1)
            positives += [(indices[a], indices[b], scores[a, b]) for a, b in zip(first, second, strict=True)]
            if class_id > 0:
                nearest = int(np.argmax(registers[:class_id] @ registers[class_id]))
                cross = self.embs[indices] @ self.embs[members[nearest]].T
                negatives += [(indices[a], members[nearest][b], cross[a, b]) for a, b in np.ndindex(cross.shape)]
        positives = sorted((pair for pair in positives if pair[2] > min_pos), key=lambda pair: pair[2])[:pos_num]
        negatives = sorted((pair for pair in negatives if pair[2] < max_neg), key=lambda pair: -pair[2])[:neg_num]
        return positives, negatives

    def _png(self, index):
        """The image at `index` as an RGB uint8 array (`make_bin` encodes it as PNG)."""
        return tf_imread(self.filenames[index]).numpy().astype(np.uint8)


def check_pair_counts(save_dest, positives, negatives, positives_found, negatives_found):
    """ValueError naming `save_dest` when the `.bin` would hold no pair (`positives` + `negatives` kept, of the
    `*_found` candidates); a warning when it holds only one kind."""
    found = f"{positives_found} positive and {negatives_found} negative pairs found, each cut to a multiple of nfold"
    if positives + negatives == 0:
        raise ValueError(f"{save_dest}: no pair to write ({found}); not writing an empty .bin")
    if not positives or not negatives:
        logger.warning("%s: only %s pairs (%s); evals.py needs both kinds", save_dest,
                       "negative" if negatives else "positive", found)


def tpr_at_fpr(score, label, fpr_points=FPR_POINTS):
    """TPR at each FPR point on the ROC of `score` (higher = more similar) against binary `label`."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    return {point: float(tpr[np.searchsorted(fpr, point, side="right") - 1]) for point in fpr_points}


def plot_tpr_far(score, label, new_figure=True, label_prefix="", save_path="eval_folder_roc.png"):
    """The TPR-at-FPR table (a one-row DataFrame), with the ROC (log FPR axis) plotted and saved to `save_path`."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    table = pd.DataFrame({f"{point:.0e}": [value] for point, value in tpr_at_fpr(score, label).items()},
                         index=[label_prefix or "tpr"])
    if new_figure:
        plt.figure()
    plt.plot(fpr, tpr, lw=1, label=f"{label_prefix} AUC = {auc(fpr, tpr):.4f}".strip())
    plt.xscale("log")
    plt.xlim(1e-6, 1)
    plt.xlabel("False Positive Rate")
    plt.ylabel("True Positive Rate")
    plt.grid(alpha=0.3)
    plt.legend(loc="lower right")
    save_figure_atomic(plt.gcf(), save_path)
    return table


def parse_arguments(argv=None):
    """Command-line options of `python eval_folder.py`."""
    parser = argparse.ArgumentParser(description="Register-based evaluation on a folder of identities.")
    parser.add_argument("-d", "--data_path", required=True, help="folder with one sub-folder per identity")
    parser.add_argument("-m", "--model_file", help="model file (.keras / .h5); not needed with a saved -S file")
    parser.add_argument("-b", "--batch_size", type=int, default=64, help="batch size")
    parser.add_argument("-S", "--save_embeddings", default=None, help="embeddings .npz to write, or reload")
    parser.add_argument("-B", "--save_bins", default=None, help="write a .bin of the hardest pairs here")
    parser.add_argument("-P", "--plot_file", default="eval_folder_roc.png", help="where to save the ROC plot")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: print both top-1 accuracies and the TPR table, optionally write a `.bin`, save the ROC plot.
    A refused input (see `Eval_folder`, `check_classes`, `check_pair_counts`) exits with its message."""
    args = parse_arguments(argv)
    try:
        evaluator = Eval_folder(args.model_file, args.data_path, args.batch_size, args.save_embeddings)
        accuracy, score, label = evaluator.do_evaluation()
        loo_accuracy, _, _ = evaluator.do_evaluation(leave_one_out=True)
        print(f">>>> top1 accuracy: {accuracy:f}, leave-one-out top1 accuracy: {loo_accuracy:f}")
        if args.save_bins:
            evaluator.generate_eval_pair_bin(args.save_bins)
    except ValueError as error:
        raise SystemExit(f"eval_folder: {error}") from None
    print(plot_tpr_far(score, label, save_path=args.plot_file).to_string())
    return accuracy, loo_accuracy


if __name__ == "__main__":
    main()
