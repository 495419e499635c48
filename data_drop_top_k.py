"""Sub-center ArcFace dataset cleaning: drop the images far from their class's dominant sub-center.

A model trained with `NormDense(loss_top_k=K)` holds K sub-centers per class (kernel column `c*K + j` is sub-center
`j` of class `c`). Clean images gather around one of them, the *dominant* one (the sub-center that most images of
the class are closest to); noisy images sit near the others or far from all. This step keeps, for every class,
only the images within `deg_thresh` degrees of the dominant sub-center, drops classes left empty, renumbers the
remaining classes consecutively, and writes the result as an image-list `.npz` (`image_names`, `image_classes`)
that `data.prepare_dataset` / `Train.reset_dataset` read as a `data_path`.

CLI: `python data_drop_top_k.py -M full_model.keras -D dataset_folder [-d dest.npz] [-t 75] [-L 0]`.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import logging
import os

import keras
import numpy as np
import tensorflow as tf
from tqdm import tqdm

from atomic_io import save_npz_atomic
from embedding import embed_images, load_runner
from evals import check_finite
from folder_scan import pre_process_folder
from heads import NormDense  # importing it also registers it, so saved training models load
from image_decode import tf_imread
from logs import show_library_logs
from preprocess import l2_normalize

logger = logging.getLogger(__name__)


def split_training_model(model):
    """(embedding model, NormDense head) of a full training model whose last NormDense follows the embedding."""
    norm_dense_layers = [layer for layer in model.layers if isinstance(layer, NormDense)]
    if not norm_dense_layers:
        raise ValueError(
            f"model {model.name!r} has no NormDense layer: pass the full training model, not the basic one"
        )
    head = norm_dense_layers[-1]
    if head.uses_partial_fc:
        raise ValueError("data_drop_top_k does not support a partial-FC head (partial_fc_split > 1)")
    return keras.Model(model.inputs[0], head.input), head


def sub_centers(head):
    """Unit-norm sub-centers of a NormDense head as an array (classes, K, emb)."""
    kernel = keras.ops.convert_to_numpy(head.kernel_for_call()).astype(np.float64)
    kernel = kernel / np.linalg.norm(kernel, axis=0, keepdims=True)
    return kernel.T.reshape(head.units, head.loss_top_k, kernel.shape[0])


def own_class_cosines(embedding_model, centers, image_names, image_classes, batch_size=128):
    """Cosine of each image's embedding (`embedding.embed_images`, no flip) to each of its own class's K
    sub-centers, shape (N, K); the images are embedded batch by batch, never all held at once."""
    runner = load_runner(embedding_model)
    dataset = tf.data.Dataset.from_tensor_slices(list(image_names))
    dataset = dataset.map(lambda path: tf_imread(path, runner.image_size), num_parallel_calls=tf.data.AUTOTUNE)
    cosines = []
    batches = dataset.batch(batch_size)
    for start, images in zip(range(0, len(image_names), batch_size), tqdm(batches, "Embedding"), strict=False):
        embeddings = embed_images(runner, images, flip=False).astype(np.float64)
        check_finite(embeddings, f"embeddings of images {image_names[start]} …")
        embeddings = l2_normalize(embeddings)
        own_centers = centers[image_classes[start:start + len(embeddings)]]
        cosines.append(np.einsum("be,bke->bk", embeddings, own_centers))
    return np.concatenate(cosines) if cosines else np.zeros((0, centers.shape[1]))


def keep_near_dominant(cosines, image_classes, deg_thresh=75):
    """Which images to keep, and each class's dominant sub-center.

    `cosines` (N, K) are the images' cosines to their own class's sub-centers. The dominant sub-center of a class
    is the one most of its images have the highest cosine to (ties → the lower index); an image is kept when its
    cosine to the dominant sub-center is greater than cos(`deg_thresh`°). Returns `(keep (N,) bool,
    {class: dominant index})`.
    """
    nearest = np.argmax(cosines, axis=1)
    dominant = {}
    for class_id in np.unique(image_classes):
        dominant[int(class_id)] = int(np.argmax(np.bincount(nearest[image_classes == class_id])))
    dominant_of_image = np.array([dominant[int(class_id)] for class_id in image_classes], dtype=np.int64)
    dominant_cosine = cosines[np.arange(len(cosines)), dominant_of_image]
    return dominant_cosine > np.cos(np.deg2rad(deg_thresh)), dominant


def renumber_classes(image_classes):
    """Map class ids to 0..M-1 keeping their order (classes with no image left disappear)."""
    return np.unique(image_classes, return_inverse=True)[1].astype(np.int64)


def default_dest_file(data_path, top_k, deg_thresh):
    """`<dataset name>_topK{k}_deg{deg}.npz` in the current directory, as the original named it."""
    stem = os.path.basename(os.path.normpath(os.fspath(data_path)))
    stem = stem.removesuffix(".npz").removesuffix("_shuffle")
    return f"{stem}_topK{top_k}_deg{deg_thresh}.npz"


def data_drop_top_k(model, data_path, dest_file=None, deg_thresh=75, limit=0, batch_size=128, cache_dir=None,
                    seed=None):
    """Clean a dataset with a sub-center model and write the kept images as an image-list `.npz`.

    Args:
        model: the full training model (a Keras model or a `.keras`/`.h5` path) whose last NormDense layer has
            `loss_top_k > 1` and one column group per class of `data_path`.
        data_path: a class-per-folder dataset or an image-list `.npz`.
        dest_file: output path; default `<dataset name>_topK{k}_deg{deg_thresh}.npz` in the current directory.
        deg_thresh: largest angle (degrees) between an image and its class's dominant sub-center.
        limit: when > 0, only the first `limit` classes are processed and written (a quick trial).
        batch_size: images per embedding batch.
        cache_dir: where `data.pre_process_folder` keeps its scan cache.
        seed: seed of the shuffle of the written list.

    Returns the path of the written `.npz` (keys `image_names`, `image_classes`, classes renumbered 0..M-1,
    images shuffled), to pass on as the new `data_path`.
    """
    if isinstance(model, str | os.PathLike):
        model = keras.saving.load_model(model, compile=False)
    embedding_model, head = split_training_model(model)
    image_names, image_classes, _, num_classes, _ = pre_process_folder(data_path, cache_dir=cache_dir)
    if num_classes == 0:
        raise ValueError(f"{data_path}: no dataset found")
    if num_classes != head.units:
        raise ValueError(f"{data_path} has {num_classes} classes but the model's NormDense head has {head.units}")
    if limit > 0:
        picked = image_classes < limit
        image_names, image_classes = image_names[picked], image_classes[picked]
    order = np.argsort(image_classes, kind="stable")
    image_names, image_classes = image_names[order], image_classes[order]

    cosines = own_class_cosines(embedding_model, sub_centers(head), image_names, image_classes, batch_size)
    keep, _ = keep_near_dominant(cosines, image_classes, deg_thresh)
    kept_names, kept_classes = image_names[keep], renumber_classes(image_classes[keep])
    logger.info(">>>> kept %d of %d images and %d of %d classes", keep.sum(), keep.size,
                len(np.unique(kept_classes)), len(np.unique(image_classes)))

    shuffle = np.random.default_rng(seed).permutation(len(kept_names))
    dest_file = os.fspath(dest_file) if dest_file else default_dest_file(data_path, head.loss_top_k, deg_thresh)
    dest_file = dest_file if dest_file.endswith(".npz") else dest_file + ".npz"
    save_npz_atomic(dest_file, compressed=True, image_names=kept_names[shuffle], image_classes=kept_classes[shuffle])
    return dest_file


def parse_arguments(argv=None):
    """Command-line options of `python data_drop_top_k.py`."""
    parser = argparse.ArgumentParser(description="Sub-center ArcFace dataset cleaning.")
    parser.add_argument("-M", "--model_file", required=True, help="full training model (with its NormDense head)")
    parser.add_argument("-D", "--data_path", required=True, help="dataset folder or image-list .npz")
    parser.add_argument("-d", "--dest_file", default=None, help="output .npz (default <name>_topK{k}_deg{t}.npz)")
    parser.add_argument("-t", "--deg_thresh", type=int, default=75, help="largest angle to the dominant sub-center")
    parser.add_argument("-L", "--limit", type=int, default=0, help="only the first L classes (0: all)")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: clean the dataset and print the written path."""
    args = parse_arguments(argv)
    show_library_logs()
    dest = data_drop_top_k(args.model_file, args.data_path, args.dest_file, args.deg_thresh, args.limit)
    print(f">>>> cleaned dataset list: {dest}")
    return dest


if __name__ == "__main__":
    main()
