"""Evaluate a face model on a custom folder of identities (one sub-folder per person, aligned 112x112 faces).

Each identity's *register* is the L2-normalised sum of its images' embeddings, and every image is matched against
all registers. Two top-1 accuracies are reported: the original's, where each image is part of its own register
(optimistic), and a leave-one-out one, where an image is matched against its own register *without itself*
(images of single-image identities have no such register and are left out of that accuracy). The ROC of
"similarity to the own register" (positive) against "similarity to every other register" (negative) is printed
as TPR at FPR 1e-6 … 1e-1 and plotted to a file. `-B` writes a `.bin` of the hardest pairs for `evals.py`.

CLI: `python eval_folder.py -d folder -m model.keras [-b 64] [-S embs.npz] [-B pairs.bin] [-P roc.png]`.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import os

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from data import normalize, scan_folder, tf_imread
from evals import check_finite

FPR_POINTS = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1]


def l2_normalize_rows(array):
    """Rows of `array` scaled to unit L2 norm (zero rows stay zero)."""
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.where(norms == 0, 1, norms)


class Eval_folder:  # noqa: N801 (the original's public name)
    """Embeddings of every image of `data_path` and register-based evaluation.

    `model_interf` is a model file (opened with `GhostFaceNets.load_model`, fed `(x − 127.5) / 128` RGB images
    at the model's input size, 112x112 when unspecified) or any callable mapping such a batch to embeddings.
    Class order is the sorted folder names, as the original's Keras directory reader used. `save_embeddings`:
    an `.npz` (`embs`, `imm_classes`, `filenames`) written after embedding and reloaded instead when present.
    Attributes: `embs` (N, D) unit-norm, `imm_classes` (N,), `filenames` (N,).
    """

    def __init__(self, model_interf, data_path, batch_size=128, save_embeddings=None):
        if save_embeddings and os.path.isfile(save_embeddings):
            with np.load(save_embeddings, allow_pickle=False) as saved:
                self.embs, self.imm_classes = saved["embs"], saved["imm_classes"]
                self.filenames = saved["filenames"].astype(str)
            return
        if isinstance(model_interf, str | os.PathLike):
            from GhostFaceNets import load_model

            model_interf = load_model(model_interf)
        self.data_path = data_path
        names, classes, _ = scan_folder(data_path, class_order="sorted")
        self.filenames, self.imm_classes = np.array(names), np.asarray(classes, dtype=np.int64)
        self.embs = self.embed(model_interf, batch_size)
        if save_embeddings:
            np.savez(save_embeddings, embs=self.embs, imm_classes=self.imm_classes, filenames=self.filenames)

    def embed(self, model, batch_size):
        """Unit-norm embeddings (N, D) of all images, in batches with a progress bar."""
        input_shape = getattr(model, "input_shape", (None, None, None))
        image_size = tuple(input_shape[1:3]) if all(input_shape[1:3]) else (112, 112)
        dataset = tf.data.Dataset.from_tensor_slices(list(self.filenames))
        dataset = dataset.map(lambda path: normalize(tf_imread(path, image_size))).batch(batch_size)
        steps = int(np.ceil(len(self.filenames) / batch_size))
        embs = np.concatenate([np.asarray(model(images)) for images in tqdm(dataset, "Embedding", total=steps)])
        check_finite(embs, f"embeddings of the images in {self.data_path}")
        return l2_normalize_rows(embs.astype(np.float32))

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
        similarities = self.embs @ l2_normalize_rows(sums).T  # (N, classes)
        rows = np.arange(len(self.embs))
        if leave_one_out:
            own = sums[self.imm_classes] - self.embs
            has_others = np.bincount(self.imm_classes)[self.imm_classes] > 1
            similarities[rows, self.imm_classes] = np.sum(l2_normalize_rows(own) * self.embs, axis=1)
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
        `(pairs of file names, scores, issame)` in file order.
        """
        from bin_files import make_bin

        positives, negatives = self._hardest_pairs(pos_num, neg_num, min_pos, max_neg)
        pos_fold, neg_fold = len(positives) // nfold, len(negatives) // nfold
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
        registers = l2_normalize_rows(self.registers())
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


def tpr_at_fpr(score, label, fpr_points=FPR_POINTS):
    """TPR at each FPR point on the ROC of `score` (higher = more similar) against binary `label`."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    return {point: float(tpr[np.searchsorted(fpr, point, side="right") - 1]) for point in fpr_points}


def plot_tpr_far(score, label, new_figure=True, label_prefix="", save_path="eval_folder_roc.png"):
    """Print a TPR-at-FPR table and save the ROC (log FPR axis) to `save_path`; returns the table."""
    import matplotlib.pyplot as plt
    import pandas as pd
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    table = pd.DataFrame({f"{point:.0e}": [value] for point, value in tpr_at_fpr(score, label).items()},
                         index=[label_prefix or "tpr"])
    print(table.to_string())
    if new_figure:
        plt.figure()
    plt.plot(fpr, tpr, lw=1, label=f"{label_prefix} AUC = {auc(fpr, tpr):.4f}".strip())
    plt.xscale("log")
    plt.xlim(1e-6, 1)
    plt.xlabel("False Positive Rate")
    plt.ylabel("True Positive Rate")
    plt.grid(alpha=0.3)
    plt.legend(loc="lower right")
    plt.savefig(save_path)
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
    """CLI entry: print both top-1 accuracies and the TPR table, optionally write a `.bin`, save the ROC plot."""
    args = parse_arguments(argv)
    evaluator = Eval_folder(args.model_file, args.data_path, args.batch_size, args.save_embeddings)
    accuracy, score, label = evaluator.do_evaluation()
    loo_accuracy, _, _ = evaluator.do_evaluation(leave_one_out=True)
    print(f">>>> top1 accuracy: {accuracy:f}, leave-one-out top1 accuracy: {loo_accuracy:f}")
    if args.save_bins:
        evaluator.generate_eval_pair_bin(args.save_bins)
    plot_tpr_far(score, label, save_path=args.plot_file)
    return accuracy, loo_accuracy


if __name__ == "__main__":
    main()
