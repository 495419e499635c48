"""IJB-B / IJB-C face verification (1:1) and identification (1:N), the standard InsightFace protocol.

Data layout under `data_path` (`S` = `IJBB` or `IJBC`, `s` = `ijbb` or `ijbc`), as distributed by InsightFace:

- `S/meta/s_face_tid_mid.txt`: `image_name template_id media_id` per image;
- `S/meta/s_template_pair_label.txt`: `template_1 template_2 label` per 1:1 pair;
- `S/meta/s_name_5pts_score.txt`: `image_name x1 y1 ... x5 y5 detector_score` per image;
- `S/loose_crop/<image_name>`: the images;
- 1:N only: `ijbb_1N_gallery_S1.csv`, `ijbb_1N_gallery_S2.csv`, `ijbb_1N_probe_mixed.csv` (IJB-B) or
  `ijbc_1N_gallery_G1.csv`, `ijbc_1N_gallery_G2.csv`, `ijbc_1N_probe_mixed.csv` (IJB-C) in `S/meta/`
  (header row, column 0 template id, column 1 subject id).

Pipeline: every image is aligned to the ArcFace 112x112 template from its 5 landmarks and embedded, together
with its horizontal flip. Per scenario `N{n}D{d}F{f}`: F adds the flip embedding, N L2-normalises each image,
D multiplies it by its detector score. A template's feature is the sum over its medias of the mean of that
media's images, L2-normalised; a pair's score is the cosine of its two template features (float64). TAR at FAR
comes from scikit-learn's `roc_curve` (so ties are handled as it does), reading at each FAR the point of the
curve whose FPR is closest, the highest TPR among equal FPRs. The default scenario is N0D1F1.

Speed: templates are aggregated with one sparse (templates x images) weight matrix applied in image chunks, and
pairs are scored with blocked matrix products (rows: first templates, columns: the second templates they meet),
so IJB-C (469 k images, 23 k templates, 15.7 M pairs) takes seconds per scenario (see bench/ijb_scale.py).

Caches (`<subset>_<hash>_meta.npz`, `<subset>_<hash>_gallery_probe.npz`, hash of the absolute data path) are
written to `cache_dir` (default `IJB_cache/` in the working directory), never into the data folder, and rebuilt
when a meta file changed or with `force_reload`.

Bad input: a meta file that is empty, cut mid-line or holds a non-number (or a pair label other than 0 / 1)
raises ValueError naming the file and the line; before any image is embedded, every image file is checked to
exist and to end as a complete JPEG / PNG (`check_image_files`), and the first missing or truncated files are
listed in the error.

CLI: `python IJB_evals.py -m model.keras -d /datasets/ijb -s IJBC [-B] [-N] [-E] [-L] [-R result.npz]`, or
`-P results*.npz` to only plot saved results. See `parse_arguments`.
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import argparse
import glob
import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import product

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from scipy import sparse
from tqdm import tqdm

from atomic_io import save_figure_atomic, save_npz_atomic
from embedding import MxnetRunner, OnnxRunner, TorchRunner, embed_images, flip_left_right, load_runner
from evals import NonFiniteEmbeddingsError, check_finite
from face_align import align_face
from image_decode import COMPLETENESS_HEAD_BYTES, COMPLETENESS_TAIL_BYTES, looks_like_complete_image
from logs import show_library_logs
from preprocess import l2_normalize

logger = logging.getLogger(__name__)

SUBSETS = ("IJBB", "IJBC")
FAR_POINTS = [10**-power for power in range(6, 0, -1)]  # 1e-6 ... 1e-1, the columns of the TAR table
DEFAULT_CACHE_DIR = "IJB_cache"
CACHE_FORMAT = "validated-meta-2"  # part of every cache signature: a new value rebuilds the caches
SCORE_BLOCK_BYTES = 256 * 2**20  # memory of one block of the pair-score matrix product
IMAGE_CHUNK = 4096  # images per step of the template aggregation and of the image file check
# Bytes of each image file's start and end `check_image_files` reads: what `looks_like_complete_image` looks at.
IMAGE_HEAD_BYTES, IMAGE_TAIL_BYTES = COMPLETENESS_HEAD_BYTES, COMPLETENESS_TAIL_BYTES


# ----------------------------------------------------------------------------------------------------------------
# Meta files and caches


def meta_file_paths(data_path, subset):
    """Paths of the 1:1 meta files and the image folder → dict with keys `media`, `pairs`, `landmarks`, `images`."""
    subset = check_subset(subset)
    meta_dir = os.path.join(data_path, subset, "meta")
    lower = subset.lower()
    return {
        "media": os.path.join(meta_dir, f"{lower}_face_tid_mid.txt"),
        "pairs": os.path.join(meta_dir, f"{lower}_template_pair_label.txt"),
        "landmarks": os.path.join(meta_dir, f"{lower}_name_5pts_score.txt"),
        "images": os.path.join(data_path, subset, "loose_crop"),
    }


def gallery_probe_file_paths(data_path, subset):
    """Paths of the 1:N csv files → dict with keys `gallery_1`, `gallery_2`, `probe`."""
    subset = check_subset(subset)
    meta_dir = os.path.join(data_path, subset, "meta")
    galleries = ("S1", "S2") if subset == "IJBB" else ("G1", "G2")
    lower = subset.lower()
    return {
        "gallery_1": os.path.join(meta_dir, f"{lower}_1N_gallery_{galleries[0]}.csv"),
        "gallery_2": os.path.join(meta_dir, f"{lower}_1N_gallery_{galleries[1]}.csv"),
        "probe": os.path.join(meta_dir, f"{lower}_1N_probe_mixed.csv"),
    }


def check_subset(subset):
    """`subset` upper-cased; raises ValueError unless it is IJBB or IJBC."""
    if str(subset).upper() not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}")
    return str(subset).upper()


def require_files(paths):
    """Raise FileNotFoundError naming every missing file of `paths` (an iterable of paths)."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError("missing IJB meta file(s): " + ", ".join(missing))


def read_table(path, sep=" ", skiprows=0, dtype=None):
    """A delimited meta file as a DataFrame without header (pandas' fast reader; blank lines are skipped).

    Raises ValueError naming the file when it holds no row, or when a line has more fields than the first ones.
    """
    try:
        frame = pd.read_csv(path, sep=sep, skiprows=skiprows, header=None, dtype=dtype)
    except pd.errors.EmptyDataError:
        frame = pd.DataFrame()
    except pd.errors.ParserError as error:
        raise ValueError(f"{path}: cannot be parsed as a meta file ({error})") from None
    if frame.empty:
        raise ValueError(f"{path}: empty file, no rows" + (f" after {skiprows} header line(s)" if skiprows else ""))
    return frame


def line_of_row(path, row, skiprows=0):
    """`(line number (1-based), fields)` of data row `row` of a meta file: the `row`-th non-blank line after the
    `skiprows` first lines, as `read_table` counts them."""
    with open(path, encoding="utf-8", errors="replace") as file:
        data_lines = ((number, line) for number, line in enumerate(file, 1) if number > skiprows and line.strip())
        for index, (number, line) in enumerate(data_lines):
            if index == row:
                return number, line.strip()
    return skiprows + row + 1, ""


def raise_on_bad_rows(path, bad, expected, sep=" ", skiprows=0):
    """ValueError naming the file, the line and the fields of the first row where `bad` (rows,) is true, and how
    many such rows there are; nothing when no row is bad."""
    bad = np.asarray(bad)
    if not bad.any():
        return
    number, line = line_of_row(path, int(np.argmax(bad)), skiprows)
    more = np.count_nonzero(bad) - 1
    raise ValueError(f"{path}, line {number}: expected {expected}, found {line.split(sep)[:16]}"
                     + (f" ({more} more such lines)" if more else "") + "; is the file cut or damaged?")


def numbers_in(frame, columns):
    """The given columns of `frame` as float64 (rows, columns), NaN where a field is missing or not a number."""
    return frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)


def read_int_columns(path, columns, sep=" ", skiprows=0):
    """The given columns of a delimited meta file as int64 arrays (a tuple, one per column).

    Raises ValueError naming the file when it is empty or has too few columns, and naming the file and line of
    the first row whose field is missing (a file cut mid-line) or not an integer.
    """
    frame = read_table(path, sep, skiprows)
    if frame.shape[1] <= max(columns):
        raise ValueError(f"{path}: expected at least {max(columns) + 1} columns, found {frame.shape[1]}")
    if not all(pd.api.types.is_integer_dtype(frame[column].dtype) for column in columns):
        values = numbers_in(frame, columns)
        raise_on_bad_rows(path, ~np.isfinite(values).all(axis=1) | (values != np.round(values)).any(axis=1),
                          f"{max(columns) + 1} integer fields", sep, skiprows)
    return tuple(frame[column].to_numpy().astype(np.int64) for column in columns)


def read_pairs(path):
    """`(p1, p2, label)` int64 arrays of a `*_template_pair_label.txt`; ValueError naming the file and line of a
    cut or non-numeric row, or of a label other than 0 and 1."""
    p1, p2, label = read_int_columns(path, [0, 1, 2])
    raise_on_bad_rows(path, (label != 0) & (label != 1), "a pair label 0 or 1 in field 3")
    return p1, p2, label


def read_landmarks(path, image_dir):
    """(image paths (N,), landmarks (N, 5, 2) float32, detector scores (N,) float32) of a `*_5pts_score.txt`;
    ValueError naming the file and line of a row with a missing (a file cut mid-line) or non-finite number."""
    frame = read_table(path, dtype={0: str})
    if frame.shape[1] != 12:
        raise ValueError(f"{path}: expected 12 columns (name, 10 landmark coordinates, score), "
                         f"found {frame.shape[1]}")
    values = numbers_in(frame, list(range(1, 12)))
    raise_on_bad_rows(path, ~np.isfinite(values).all(axis=1), "an image name and 11 numbers")
    img_names = np.array([os.path.join(image_dir, name) for name in frame[0]])
    return img_names, values[:, :10].astype(np.float32).reshape(-1, 5, 2), values[:, 10].astype(np.float32)


def files_signature(paths):
    """A string that changes when any of `paths` changes (size and modification time) or when the way meta files
    are read changes (`CACHE_FORMAT`: caches written before the meta files were validated are rebuilt)."""
    return ";".join([CACHE_FORMAT] + [f"{path}:{os.path.getsize(path)}:{os.path.getmtime(path)}" for path in paths])


def cache_file(cache_dir, data_path, subset, kind):
    """`<cache_dir>/<subset>_<hash of the absolute data path>_<kind>.npz`."""
    digest = hashlib.sha1(os.path.abspath(os.fspath(data_path)).encode()).hexdigest()[:10]
    return os.path.join(cache_dir, f"{subset}_{digest}_{kind}.npz")


def cached_arrays(path, signature, build, force_reload=False):
    """The arrays dict stored at `path` when its signature matches, else `build()`'s dict, written there first."""
    if not force_reload and os.path.isfile(path):
        with np.load(path, allow_pickle=False) as stored:
            if str(stored["signature"]) == signature:
                return {key: stored[key] for key in stored.files if key != "signature"}
    arrays = build()
    save_npz_atomic(path, signature=signature, **arrays)
    return arrays


def extract_IJB_data_11(data_path, subset, cache_dir=DEFAULT_CACHE_DIR, force_reload=False):
    """The 1:1 meta data as a dict: `templates, medias` (N,), `p1, p2, label` (pairs,), `img_names` (N,),
    `landmarks` (N, 5, 2), `face_scores` (N,). Cached in `cache_dir`."""
    paths = meta_file_paths(data_path, subset)
    sources = [paths["media"], paths["pairs"], paths["landmarks"]]
    require_files(sources)

    def build():
        templates, medias = read_int_columns(paths["media"], [1, 2])
        p1, p2, label = read_pairs(paths["pairs"])
        img_names, landmarks, face_scores = read_landmarks(paths["landmarks"], paths["images"])
        if len(img_names) != len(templates):
            raise ValueError(f"{paths['landmarks']} lists {len(img_names)} images but {paths['media']} lists "
                             f"{len(templates)}")
        return {"templates": templates, "medias": medias, "p1": p1, "p2": p2, "label": label,
                "img_names": img_names, "landmarks": landmarks, "face_scores": face_scores}

    path = cache_file(cache_dir, data_path, check_subset(subset), "meta")
    return cached_arrays(path, files_signature(sources), build, force_reload)


def extract_gallery_prob_data(data_path, subset, cache_dir=DEFAULT_CACHE_DIR, force_reload=False):
    """The 1:N meta data: `(s1_templates, s1_subject_ids, s2_templates, s2_subject_ids, probe_mixed_templates,
    probe_mixed_subject_ids)`, int64 arrays. Cached in `cache_dir`."""
    paths = gallery_probe_file_paths(data_path, subset)
    sources = [paths["gallery_1"], paths["gallery_2"], paths["probe"]]
    require_files(sources)
    keys = ["s1_templates", "s1_subject_ids", "s2_templates", "s2_subject_ids", "probe_mixed_templates",
            "probe_mixed_subject_ids"]

    def build():
        columns = [read_int_columns(path, [0, 1], sep=",", skiprows=1) for path in sources]
        return dict(zip(keys, [array for pair in columns for array in pair], strict=True))

    path = cache_file(cache_dir, data_path, check_subset(subset), "gallery_probe")
    arrays = cached_arrays(path, files_signature(sources), build, force_reload)
    return tuple(arrays[key] for key in keys)


# ----------------------------------------------------------------------------------------------------------------
# Models and embeddings


# The original's names of the model wrappers: the runners of `embedding` (input uint8 RGB, normalised inside).
ONNX_model_interf = OnnxRunner
Torch_model_interf = TorchRunner
Mxnet_model_interf = MxnetRunner


def keras_model_interf(model_file):
    """The original's name: the `embedding.KerasRunner` of a Keras `.h5` / `.keras` file or in-memory model."""
    return load_runner(model_file)


def model_interface(model_file):
    """A callable uint8 RGB NHWC batch → embeddings: any callable that is not a Keras model is used as it is,
    anything else goes through `embedding.load_runner` (a Keras model, or a model path by its extension:
    `.h5`/`.keras` Keras, `.onnx` ONNX, `.tflite` TFLite, `.pt`/`.pth` TorchScript, `prefix,epoch` MXNet)."""
    if callable(model_file) and not isinstance(model_file, keras.Model):
        return model_file
    return load_runner(model_file)


def image_file_ends(path):
    """The first `IMAGE_HEAD_BYTES` and last `IMAGE_TAIL_BYTES` bytes of the file at `path` joined (the whole file
    when it is shorter), or None when it cannot be opened. `image_decode.looks_like_complete_image` reads only
    the signature at the start and the end marker within the last 32 bytes, so its verdict on these bytes is its
    verdict on the whole file."""
    try:
        with open(path, "rb") as file:
            head = file.read(IMAGE_HEAD_BYTES)
            size = file.seek(0, os.SEEK_END)
            file.seek(max(size - IMAGE_TAIL_BYTES, len(head)))
            return head + file.read()
    except OSError:
        return None


def listed(names, limit=10):
    """The first `limit` of `names` joined by commas, with ", ..." when there are more."""
    return ", ".join(str(name) for name in names[:limit]) + (", ..." if len(names) > limit else "")


def check_image_files(img_names, chunk=IMAGE_CHUNK):
    """Check every image file before any embedding, so that no embedding work is lost on a bad file.

    Reads the start and end of each file (`image_file_ends`; threads were slower) and checks them with
    `image_decode.looks_like_complete_image` (a known image signature, and for JPEG / PNG the end marker: a file
    cut short fails), `chunk` files at a time: about 60 µs per file, half a minute for IJB-C's 469 k images.
    Raises FileNotFoundError listing the first missing (or unreadable) files and their count, else ValueError
    listing the first truncated or non-image files and their count.
    """
    missing, incomplete = [], []
    for start in tqdm(range(0, len(img_names), chunk), "Checking images", disable=len(img_names) <= chunk):
        names = img_names[start:start + chunk]
        ends = [image_file_ends(name) for name in names]
        missing += [name for name, data in zip(names, ends, strict=True) if data is None]
        present = [(name, data) for name, data in zip(names, ends, strict=True) if data is not None]
        if present:
            complete = looks_like_complete_image(tf.constant([data for _, data in present])).numpy()
            incomplete += [name for (name, _), ok in zip(present, complete, strict=True) if not ok]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(img_names)} IJB images are missing or unreadable; nothing "
                                f"was embedded: {listed(missing)}")
    if incomplete:
        raise ValueError(f"{len(incomplete)} of {len(img_names)} IJB images are truncated or not images (no image "
                         f"signature, or no end marker); nothing was embedded: {listed(incomplete)}")


def read_aligned_rgb(img_name, landmark):
    """The image file aligned to the 112x112 ArcFace template from its 5 landmarks, uint8 RGB (112, 112, 3)."""
    import cv2

    image = cv2.imread(img_name)
    if image is None:
        raise FileNotFoundError(f"{img_name}: cannot read the image (missing or not an image)")
    return align_face(image, landmark)[:, :, ::-1]


def get_embeddings(model_interf, img_names, landmarks, batch_size=64, flip=True, workers=4):
    """Embeddings of the aligned images and of their horizontal flips → `(embs, embs_f)`, float32 (N, D) each
    (`embs_f` is empty (0,) without `flip`), kept apart for the F0 / F1 scenarios. `model_interf`: anything
    `embedding.load_runner` accepts (a callable gets the uint8 RGB batch). Images are read and aligned by
    `workers` threads. Every file is checked first (`check_image_files`): a missing, truncated or non-image file
    raises before any image is embedded, naming it."""
    check_image_files(img_names)
    runner = load_runner(model_interf)
    embs, embs_f = [], []
    steps = int(np.ceil(len(img_names) / batch_size))
    with ThreadPoolExecutor(workers) as pool:
        for start in tqdm(range(0, len(img_names), batch_size), "Embedding", total=steps):
            stop = start + batch_size
            images = np.stack(list(pool.map(read_aligned_rgb, img_names[start:stop], landmarks[start:stop])))
            embs.append(embed_images(runner, images, flip=False))
            if flip:
                embs_f.append(embed_images(runner, flip_left_right(images), flip=False))
    return np.concatenate(embs), (np.concatenate(embs_f) if flip else np.array([], dtype=np.float32))


# ----------------------------------------------------------------------------------------------------------------
# Template features and pair scores


def process_embeddings(embs, embs_f=(), use_flip_test=True, use_norm_score=False, use_detector_score=True,
                       face_scores=None):
    """Per-image features of one scenario, float64 (N, D): F adds `embs_f`, N L2-normalises, D multiplies by
    the detector score. (`TemplateAggregation.features` does the same chunk by chunk, without this copy.)"""
    features = np.asarray(embs, dtype=np.float64)
    if use_flip_test and len(embs_f):
        features = features + embs_f
    if use_norm_score:
        features = l2_normalize(features)  # float64
    if use_detector_score and face_scores is not None:
        features = features * np.asarray(face_scores, dtype=np.float64)[:, None]
    return features


class TemplateAggregation:
    """Template features as a sparse weighted sum: template = Σ_media mean(images of the media).

    `templates`, `medias`: (N,) ids per image. Image i gets weight 1 / (images of its template and media), so
    the weighted sum of a template's images is the sum of its per-media means. Images are visited in template
    order, so each chunk of images touches one contiguous range of templates. Attributes: `unique_templates`
    (sorted ids), `order` (N,) image order, `template_index` (N,) template row of each image in that order,
    `media_weights` (N,) in that order.
    """

    def __init__(self, templates, medias):
        templates, medias = np.asarray(templates, dtype=np.int64), np.asarray(medias, dtype=np.int64)
        self.unique_templates, template_index = np.unique(templates, return_inverse=True)
        _, media_index = np.unique(medias, return_inverse=True)
        group_key = template_index * (media_index.max() + 1) + media_index
        _, group_index, group_sizes = np.unique(group_key, return_inverse=True, return_counts=True)
        self.order = np.argsort(template_index, kind="stable")
        self.template_index = template_index[self.order]
        self.media_weights = (1.0 / group_sizes[group_index])[self.order]

    def features(self, embs, embs_f=None, face_scores=None, scenario_flags=((False, True, True),),
                 chunk=IMAGE_CHUNK):
        """L2-normalised template features of several scenarios in one pass over the images.

        `scenario_flags`: `(use_norm_score, use_detector_score, use_flip_test)` tuples. Per image and scenario:
        `embs` (+ `embs_f` with flip, when given), L2-normalised with N, times `face_scores` with D (when given),
        all in float64. Returns a list, one float64 (templates, D) array per scenario, rows in the order of
        `unique_templates`. Normalisation and detector scores only scale the images' entries of each chunk's
        sparse (templates x images) weight matrix, so every image is read and converted once for all scenarios.
        """
        sums = [np.zeros((len(self.unique_templates), embs.shape[1])) for _ in scenario_flags]
        use_flip = embs_f is not None and len(embs_f) > 0 and any(flags[2] for flags in scenario_flags)
        if face_scores is not None:
            face_scores = np.asarray(face_scores, dtype=np.float64)
        for start in range(0, embs.shape[0], chunk):
            images = self.order[start:start + chunk]
            sources = {False: np.asarray(embs[images], dtype=np.float64)}
            if use_flip:
                sources[True] = sources[False] + embs_f[images]
            inverse_norms = {}
            rows = self.template_index[start:start + chunk]
            first, last = rows[0], rows[-1] + 1
            for scenario_sums, (use_norm, use_detector, flip) in zip(sums, scenario_flags, strict=True):
                block = sources[flip and use_flip]
                scales = self.media_weights[start:start + chunk]
                if use_norm:
                    if (flip and use_flip) not in inverse_norms:
                        inverse_norms[flip and use_flip] = inverse_row_norms(block)
                    scales = scales * inverse_norms[flip and use_flip]
                if use_detector and face_scores is not None:
                    scales = scales * face_scores[images]
                weights = sparse.csc_matrix((scales, rows - first, np.arange(len(images) + 1)),
                                            shape=(last - first, len(images)))
                scenario_sums[first:last] += weights @ block
        for scenario_sums in sums:
            scenario_sums *= inverse_row_norms(scenario_sums)[:, None]
        return sums


def inverse_row_norms(block):
    """1 / L2 norm of each row of `block` (1 for rows of norm 0, which stay zero), shape (rows,)."""
    norms = np.sqrt(np.einsum("ij,ij->i", block, block))
    norms[norms == 0] = 1.0
    return 1.0 / norms


def image2template_feature(img_feats=None, templates=None, medias=None, choose_templates=None, choose_ids=None):
    """The original's API: `(template_norm_feats, unique_templates, unique_subject_ids)`.

    1:1 (`choose_templates` None): features of every template in `templates`, subject ids None. 1:N: features of
    the unique `choose_templates` with the subject id of each one's first occurrence in `choose_ids`.
    """
    aggregation = TemplateAggregation(templates, medias)
    (features,) = aggregation.features(img_feats, scenario_flags=[(False, False, False)])
    if choose_templates is None:
        return features, aggregation.unique_templates, None
    return select_templates(features, aggregation.unique_templates, choose_templates, choose_ids)


def select_templates(features, unique_templates, choose_templates, choose_ids):
    """Rows of `features` for the unique `choose_templates` → `(features, templates, subject ids)`; a chosen
    template without images gets a zero feature (as in the original)."""
    chosen, first = np.unique(np.asarray(choose_templates, dtype=np.int64), return_index=True)
    positions = np.searchsorted(unique_templates, chosen).clip(0, len(unique_templates) - 1)
    present = unique_templates[positions] == chosen
    selected = np.zeros((len(chosen), features.shape[1]))
    selected[present] = features[positions[present]]
    if not present.all():
        logger.warning(">>>> %d of %d 1:N templates have no image; zero features", np.count_nonzero(~present),
                       len(chosen))
    return selected, chosen, np.asarray(choose_ids)[first]


def template_positions(unique_templates, template_ids, what):
    """Row of each id of `template_ids` in the sorted `unique_templates`; ValueError naming `what` if absent."""
    positions = np.searchsorted(unique_templates, template_ids).clip(0, len(unique_templates) - 1)
    unknown = unique_templates[positions] != template_ids
    if unknown.any():
        raise ValueError(f"{what}: {np.count_nonzero(unknown)} template ids have no image, e.g. "
                         f"{np.unique(template_ids[unknown])[:5].tolist()}")
    return positions


class PairScorer:
    """Cosine scores of template pairs `(p1[k], p2[k])` by blocked matrix products.

    The first templates are cut into blocks; each block is multiplied with all the second templates its pairs
    meet (`block_bytes` bounds that product) and the pairs' entries are picked out. The plan (built with
    counting, no sorting) depends only on the pairs, so one scorer serves every scenario.
    """

    def __init__(self, unique_templates, p1, p2, block_bytes=SCORE_BLOCK_BYTES):
        first = template_positions(unique_templates, np.asarray(p1, dtype=np.int64), "pair list, column 1")
        second = template_positions(unique_templates, np.asarray(p2, dtype=np.int64), "pair list, column 2")
        num_templates = len(unique_templates)
        self.num_pairs = len(first)
        rows = np.flatnonzero(np.bincount(first, minlength=num_templates))
        num_columns = np.count_nonzero(np.bincount(second, minlength=num_templates))
        rows_per_block = max(1, block_bytes // (8 * max(1, num_columns)))
        block_of_row = np.zeros(num_templates, dtype=np.int64)
        block_of_row[rows] = np.arange(len(rows)) // rows_per_block
        local_index = np.zeros(num_templates, dtype=np.int64)
        pair_block = block_of_row[first]
        self.blocks = []
        for block in range(int(np.ceil(len(rows) / rows_per_block))):
            block_rows = rows[block * rows_per_block:(block + 1) * rows_per_block]
            pair_ids = np.flatnonzero(pair_block == block)
            block_columns = np.flatnonzero(np.bincount(second[pair_ids], minlength=num_templates))
            local_index[block_columns] = np.arange(len(block_columns))
            flat = local_index[second[pair_ids]]
            local_index[block_rows] = np.arange(len(block_rows))
            flat += local_index[first[pair_ids]] * len(block_columns)
            self.blocks.append((block_rows, block_columns, pair_ids, flat))

    def scores(self, template_norm_feats):
        """Scores (pairs,) float64: dot products of the pairs' rows of `template_norm_feats` (unit rows)."""
        scores = np.empty(self.num_pairs)
        for block_rows, block_columns, pair_ids, flat in self.blocks:
            products = template_norm_feats[block_rows] @ template_norm_feats[block_columns].T
            scores[pair_ids] = products.ravel()[flat]
        return scores


def verification_11(template_norm_feats=None, unique_templates=None, p1=None, p2=None):
    """The original's API: cosine score (float64) of each template pair `(p1[k], p2[k])`."""
    return PairScorer(unique_templates, p1, p2).scores(np.asarray(template_norm_feats, dtype=np.float64))


def scenario_name(use_norm_score, use_detector_score, use_flip_test):
    """`N{n}D{d}F{f}`, e.g. N0D1F1 for the default scenario."""
    return f"N{use_norm_score:d}D{use_detector_score:d}F{use_flip_test:d}"


def scenarios():
    """The 8 `(use_norm_score, use_detector_score, use_flip_test)` combinations in the original's order
    (N1D1F1, N1D1F0, N1D0F1, ..., N0D0F0)."""
    return list(product([True, False], repeat=3))


# ----------------------------------------------------------------------------------------------------------------
# 1:N


def evaluation_1N(query_feats, gallery_feats, query_ids, reg_ids, fars=(0.01, 0.1), chunk=4096):
    """Open-set identification of query templates against a gallery.

    Returns `(top_1_count, top_5_count, top_10_count, tpirs, cmc_scores)`. Rank-k counts are over mated queries
    (subject in the gallery; rank = gallery entries scoring strictly above the mate). TPIR at each FAR: the
    fraction of mated queries whose mate is rank 1 (above every other subject) and scores above the threshold
    `sorted_desc(best score of each non-mated query)[max(int(n_nonmated * far) − 1, 0)]`. `cmc_scores`: per mated
    query `(scores to other subjects, [mate score])`, then per non-mated query `(scores, None)`.
    """
    query_ids, reg_ids = np.asarray(query_ids), np.asarray(reg_ids)
    similarity = np.concatenate([query_feats[start:start + chunk] @ gallery_feats.T
                                 for start in range(0, len(query_feats), chunk)])
    same_subject = query_ids[:, None] == reg_ids[None, :]
    mated = same_subject.any(axis=1)
    mate_column = np.argmax(same_subject, axis=1)
    pos_sims = similarity[mated, mate_column[mated]]
    ranks = np.count_nonzero(similarity[mated] > pos_sims[:, None], axis=1)
    best_other = np.where(same_subject[mated], -np.inf, similarity[mated]).max(axis=1, initial=-np.inf)
    non_gallery_best = np.sort(similarity[~mated].max(axis=1, initial=-np.inf))[::-1]
    correct = np.sort(pos_sims[pos_sims > best_other])
    tpirs = []
    for far in fars:
        threshold = non_gallery_best[max(int(len(non_gallery_best) * far) - 1, 0)] if len(non_gallery_best) else -np.inf
        tpirs.append((len(correct) - np.searchsorted(correct, threshold, side="right")) / max(len(pos_sims), 1))
    mated_rows = similarity[mated]
    cmc_scores = [(row[~same], np.array([pos])) for row, same, pos in zip(mated_rows, same_subject[mated], pos_sims,
                                                                          strict=True)]
    cmc_scores += [(row, None) for row in similarity[~mated]]
    top_counts = [int(np.count_nonzero(ranks < k)) for k in (1, 5, 10)]
    return (*top_counts, tpirs, cmc_scores)


def far_points_1N(npoints=100):
    """The 1:N FAR grid: `10 ** arange(-4, 0, 4 / npoints)` plus 1 (npoints + 1 values)."""
    return [10**power for power in np.arange(-4, 0, 4 / npoints)] + [1]


# ----------------------------------------------------------------------------------------------------------------
# The test object


class IJB_test:  # noqa: N801 (the original's public name)
    """Embeddings and meta data of IJB-B / IJB-C, and the 1:1 / 1:N evaluations.

    Args:
        model_file: a Keras model, a Keras `.h5` / `.keras` path, an ONNX or TFLite file, a TorchScript
            `.pt`/`.pth` or `"mxnet_prefix,epoch"` (those two only when torch / mxnet are installed), all run by
            `embedding.load_runner`, or any callable uint8 RGB (B, 112, 112, 3) → embeddings. Ignored when
            `restore_embs` is given.
        data_path: folder holding `IJBB/` and / or `IJBC/`.
        subset: `"IJBB"` or `"IJBC"`.
        batch_size: images per model call.
        force_reload: rebuild the meta caches.
        restore_embs: an `.npz` with `embs` (N, D) and `embs_f` (N, D, or empty) to use instead of a model.
        cache_dir: where the meta caches go.

    Attributes: `embs, embs_f, templates, medias, p1, p2, label, face_scores, img_names, landmarks`.
    Raises FileNotFoundError naming a missing meta file or listing missing images, ValueError naming a damaged
    meta file and its line or listing truncated images (both before any embedding), NonFiniteEmbeddingsError on
    NaN / inf embeddings.
    """

    def __init__(self, model_file, data_path, subset, batch_size=64, force_reload=False, restore_embs=None,
                 cache_dir=DEFAULT_CACHE_DIR):
        self.data_path, self.subset = data_path, check_subset(subset)
        self.force_reload, self.cache_dir = force_reload, cache_dir
        meta = extract_IJB_data_11(data_path, self.subset, cache_dir, force_reload)
        for key, value in meta.items():
            setattr(self, key, value)
        if restore_embs is not None:
            self.embs, self.embs_f = self.restore(restore_embs)
        elif model_file is not None:
            interf = model_interface(model_file)
            self.embs, self.embs_f = get_embeddings(interf, self.img_names, self.landmarks, batch_size=batch_size)
        else:
            raise ValueError("IJB_test needs a model_file or a restore_embs .npz")
        source = restore_embs if restore_embs is not None else model_file
        try:
            check_finite(self.embs, f"embeddings of {source}")
            check_finite(self.embs_f, f"flip embeddings of {source}")
        except NonFiniteEmbeddingsError as error:
            raise NonFiniteEmbeddingsError(f"{error}; no IJB evaluation possible") from None
        self._aggregation, self._scorer = None, None

    def restore(self, path):
        """`(embs, embs_f)` read from an npz, checked against the number of images."""
        with np.load(path, allow_pickle=False) as stored:
            if "embs" not in stored.files:
                raise ValueError(f"{path}: no 'embs' array to restore (keys: {stored.files})")
            embs = stored["embs"]
            embs_f = stored["embs_f"] if "embs_f" in stored.files else np.array([], dtype=embs.dtype)
        if embs.ndim != 2 or len(embs) != len(self.templates) or (embs_f.size and embs_f.shape != embs.shape):
            raise ValueError(f"{path}: embs {embs.shape} / embs_f {embs_f.shape} do not match the "
                             f"{len(self.templates)} images of {self.subset}")
        return embs, embs_f

    @property
    def aggregation(self):
        """The `TemplateAggregation` of all images (built once)."""
        if self._aggregation is None:
            self._aggregation = TemplateAggregation(self.templates, self.medias)
        return self._aggregation

    @property
    def scorer(self):
        """The `PairScorer` of the 1:1 pairs (built once)."""
        if self._scorer is None:
            self._scorer = PairScorer(self.aggregation.unique_templates, self.p1, self.p2)
        return self._scorer

    def template_features(self, scenario_flags=((False, True, True),)):
        """Normalised template features (templates, D) of each `(use_norm_score, use_detector_score,
        use_flip_test)` in `scenario_flags` (a list), rows in the order of `aggregation.unique_templates`."""
        return self.aggregation.features(self.embs, self.embs_f, self.face_scores, scenario_flags)

    def run_model_test_single(self, use_flip_test=True, use_norm_score=False, use_detector_score=True):
        """Scores (pairs,) float64 of one scenario (default N0D1F1)."""
        (features,) = self.template_features([(use_norm_score, use_detector_score, use_flip_test)])
        return self.scorer.scores(features)

    def run_model_test_bunch(self):
        """All 8 scenarios → `(scores, names)`, names `N{n}D{d}F{f}` in the original's order."""
        flags = scenarios()
        features = self.template_features(flags)
        scores = [self.scorer.scores(features.pop(0)) for _ in flags]  # each feature set freed once scored
        return scores, [scenario_name(*flag) for flag in flags]

    def run_model_test_1N(self, npoints=100):
        """Open-set identification, probes against gallery 1 and gallery 2 (features N0D1F1).

        Logs the rank-1/5/10 rates and a table of TPIR at FAR 1e-4 … 1; returns `(fars, mean_tpirs, g1_cmc,
        g2_cmc)` with `fars` the `far_points_1N(npoints)` grid and `mean_tpirs` the two galleries' average.
        """
        fars = far_points_1N(npoints)
        g1_templates, g1_ids, g2_templates, g2_ids, probe_templates, probe_ids = extract_gallery_prob_data(
            self.data_path, self.subset, self.cache_dir, self.force_reload)
        (features,) = self.template_features()
        unique_templates = self.aggregation.unique_templates
        probe_feats, _, probe_subjects = select_templates(features, unique_templates, probe_templates, probe_ids)
        results = []
        for gallery_templates, gallery_ids in ((g1_templates, g1_ids), (g2_templates, g2_ids)):
            gallery_feats, _, gallery_subjects = select_templates(features, unique_templates, gallery_templates,
                                                                  gallery_ids)
            results.append(evaluation_1N(probe_feats, gallery_feats, probe_subjects, gallery_subjects, fars))
        (g1_top1, g1_top5, g1_top10, g1_tpir, g1_cmc), (g2_top1, g2_top5, g2_top10, g2_tpir, g2_cmc) = results
        num_probes = len(probe_feats)
        logger.info(f"[Mean] top1: {(g1_top1 + g2_top1) / num_probes:f}, top5: {(g1_top5 + g2_top5) / num_probes:f}, "
                    f"top10: {(g1_top10 + g2_top10) / num_probes:f}")
        mean_tpirs = (np.array(g1_tpir) + np.array(g2_tpir)) / 2
        table = pd.DataFrame({"far": fars, "g1_tpir": g1_tpir, "g2_tpir": g2_tpir, "mean_tpir": mean_tpirs})
        logger.info("\n%s", markdown_table(table.iloc[np.arange(len(fars))[::max(npoints // 4, 1)]]))
        return fars, mean_tpirs, g1_cmc, g2_cmc


# ----------------------------------------------------------------------------------------------------------------
# Tables and plots


def markdown_table(frame, float_format="{:.6f}"):
    """A pandas DataFrame as a GitHub markdown table (index first), floats with `float_format`."""

    def cell(value):
        return float_format.format(value) if isinstance(value, float | np.floating) else str(value)

    header = ["", *[cell(column) if isinstance(column, float) else str(column) for column in frame.columns]]
    rows = [[str(index), *[cell(value) for value in row]] for index, row in zip(frame.index, frame.values,
                                                                                strict=True)]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def load_score_sets(scores, names=None, label=None):
    """`(dict name → scores, label)` from arrays, result `.npz` files (`scores`, `names`, optional `label`),
    `.npy` score files or a pair-label `.txt` (its column 2 becomes the label)."""
    score_dict = {}
    for index, score in enumerate(scores):
        name = None if names is None else names[index]
        if isinstance(score, str) and score.endswith(".npz"):
            with np.load(score, allow_pickle=False) as stored:
                if label is None and "label" in stored.files:
                    label = stored["label"]
                score_dict.update(zip(stored["names"].astype(str), stored["scores"], strict=True))
        elif isinstance(score, str) and score.endswith(".npy"):
            score_dict[name or os.path.splitext(os.path.basename(score))[0]] = np.load(score)
        elif isinstance(score, str) and score.endswith(".txt"):
            label = pd.read_csv(score, sep=" ", header=None).values[:, 2]
        else:
            score_dict[name if name is not None else str(index)] = score
    return score_dict, label


def tpr_at_far_points(label, score, far_points=FAR_POINTS):
    """`(fpr, tpr, auc, tprs)`: scikit-learn's ROC of `score` against `label`, its AUC, and at each FAR point the
    TPR of the ROC point whose FPR is closest (the highest TPR among equal FPRs)."""
    from sklearn.metrics import auc, roc_curve

    fpr, tpr, _ = roc_curve(label, score)
    flipped_fpr, flipped_tpr = fpr[::-1], tpr[::-1]
    tprs = [float(flipped_tpr[np.argmin(np.abs(flipped_fpr - point))]) for point in far_points]
    return fpr, tpr, float(auc(fpr, tpr)), tprs


def plot_roc_and_calculate_tpr(scores, names=None, label=None, save_path=None):
    """TAR at FAR 1e-6 … 1e-1 and AUC of each score set, logged as a markdown table, and their ROC curves.

    `scores`: a list of score arrays or file names (see `load_score_sets`); `names`: one per item; `label`: the
    pair labels (taken from an npz or `.txt` in `scores` when None). Returns `(DataFrame indexed by name with
    float FAR columns and "AUC", matplotlib figure)`, the figure also saved to `save_path` when given; `(None,
    None)` without labels. Raises ValueError on non-finite scores and on labels without both kinds of pairs.
    """
    import matplotlib.pyplot as plt

    score_dict, label = load_score_sets(scores, names, label)
    if label is None:
        logger.error("Error: Label data is not provided")
        return None, None
    kinds = np.unique(np.asarray(label))
    if kinds.size != 2:
        raise ValueError(f"the pair labels hold only the value(s) {kinds.tolist()}: a ROC needs both positive (1) "
                         "and negative (0) pairs")
    rows, curves = {}, {}
    for name, score in score_dict.items():
        score = np.asarray(score, dtype=np.float64)
        if not np.isfinite(score).all():
            raise ValueError(f"scores {name!r} contain NaN or inf; the embeddings were probably broken")
        fpr, tpr, roc_auc, tprs = tpr_at_far_points(label, score)
        rows[name], curves[name] = [*tprs, roc_auc], (fpr, tpr, roc_auc)
    table = pd.DataFrame.from_dict(rows, orient="index", columns=[*FAR_POINTS, "AUC"])
    table.columns.name = "Methods"
    logger.info("\n%s", markdown_table(table))

    figure = plt.figure()
    for name, (fpr, tpr, roc_auc) in curves.items():
        plt.plot(fpr, tpr, lw=1, label=f"[{name} (AUC = {roc_auc * 100:0.4f}%)]")
    last_name = list(curves)[-1] if curves else ""
    plt.title("ROC on IJB" + last_name.split("IJB")[-1][:1] if "IJB" in last_name else "ROC on IJB")
    plt.xlim([1e-6, 0.1])
    plt.xscale("log")
    plt.xticks(FAR_POINTS)
    plt.xlabel("False Positive Rate")
    plt.ylim([0.3, 1.0])
    plt.yticks(np.linspace(0.3, 1.0, 8, endpoint=True))
    plt.ylabel("True Positive Rate")
    plt.grid(linestyle="--", linewidth=1)
    plt.legend(loc="lower right", fontsize="x-small")
    plt.tight_layout()
    if save_path:
        save_figure_atomic(figure, save_path)
    return table, figure


def plot_dir_far_cmc_scores(scores, names=None, save_path=None):
    """DIR (TPIR) against FAR on a log axis for 1:N results; `scores` items are `(fars, tpirs)` pairs or result
    `.npz` files (first entry of `scores` / `names`). Returns the figure (saved to `save_path` when given)."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import auc

    figure = plt.figure()
    for index, score in enumerate(scores):
        name = None if names is None else names[index]
        if isinstance(score, str) and score.endswith(".npz"):
            with np.load(score, allow_pickle=False) as stored:
                score, name = stored["scores"][0], str(stored["names"][0])
        fars, tpirs = np.asarray(score[0], dtype=np.float64), np.asarray(score[1], dtype=np.float64)
        name = name if name is not None else str(index)
        plt.plot(fars, tpirs, lw=1, label=f"[{name} (AUC = {auc(fars, tpirs) * 100:0.4f}%)]")
    plt.xlabel("False Alarm Rate")
    plt.xlim([0.0001, 1])
    plt.xscale("log")
    plt.ylabel("Detection & Identification Rate (%)")
    plt.ylim([0, 1])
    plt.grid(linestyle="--", linewidth=1)
    plt.legend(fontsize="x-small")
    plt.tight_layout()
    if save_path:
        save_figure_atomic(figure, save_path)
    return figure


# ----------------------------------------------------------------------------------------------------------------
# CLI


def parse_arguments(argv=None):
    """Command-line options of `python IJB_evals.py` (the original's flags)."""
    parser = argparse.ArgumentParser(description="IJB-B / IJB-C 1:1 verification and 1:N identification.")
    parser.add_argument("-m", "--model_file", default=None,
                        help="model: .h5/.keras, .onnx, .tflite, .pt/.pth (torch) or 'mxnet_prefix,epoch' (mxnet)")
    parser.add_argument("-d", "--data_path", default="./", help="folder containing IJBB/ and IJBC/")
    parser.add_argument("-s", "--subset", default="IJBB", help="IJBB or IJBC")
    parser.add_argument("-b", "--batch_size", type=int, default=128, help="embedding batch size")
    parser.add_argument("-R", "--save_result", default="IJB_result/{model_name}_{subset}_{kind}.npz",
                        help="result .npz; without -m, the embeddings are restored from it")
    parser.add_argument("-L", "--save_label", action="store_true", help="also store the 1:1 pair labels")
    parser.add_argument("-E", "--save_embeddings", action="store_true", help="also store embs and embs_f")
    parser.add_argument("-B", "--is_bunch", action="store_true", help="all 8 N/D/F scenarios")
    parser.add_argument("-N", "--is_one_2_N", action="store_true", help="1:N identification instead of 1:1")
    parser.add_argument("-F", "--force_reload", action="store_true", help="rebuild the meta caches")
    parser.add_argument("-P", "--plot_only", nargs="*", default=None,
                        help="result files (globs allowed) to plot only; 1:N plot with -N")
    parser.add_argument("-C", "--cache_dir", default=DEFAULT_CACHE_DIR, help="where the meta caches are written")
    return parser.parse_args(argv)


def model_name_of(model_file):
    """Name used in result files: the file stem, or the parent folder for an MXNet `prefix,epoch`."""
    model_file = os.fspath(model_file)
    if "," in model_file and not os.path.splitext(model_file)[1]:
        return os.path.basename(os.path.dirname(model_file.split(",")[0]))
    return os.path.splitext(os.path.basename(model_file))[0]


def plot_only(args):
    """`-P`: plot saved result files (1:1 ROC table, or the 1:N DIR-FAR curves with `-N`)."""
    files = sorted({path for pattern in args.plot_only for path in (glob.glob(pattern) or [pattern])})
    if args.is_one_2_N:
        return plot_dir_far_cmc_scores(files, save_path="IJB_1N_dir_far.png")
    return plot_roc_and_calculate_tpr(files, save_path="IJB_11_roc.png")


def evaluate_scores(tt, args, name):
    """`(scores, names)` of the CLI's evaluation: the 1:N DIR curve (`-N`), all 8 scenarios (`-B`) or N0D1F1."""
    if args.is_one_2_N:
        fars, tpirs, _, _ = tt.run_model_test_1N()
        return [np.stack([fars, tpirs])], [name]
    if args.is_bunch:
        scores, names = tt.run_model_test_bunch()
        return scores, [f"{name}_{scenario}" for scenario in names]
    return [tt.run_model_test_single()], [name]


def result_arrays(tt, args, scores, names):
    """The arrays of the result `.npz`: `scores`, `names`, plus `embs`/`embs_f` with `-E` and `label` with `-L`."""
    items = {"scores": np.stack(scores), "names": np.array(names)}
    if args.save_embeddings:
        items.update(embs=tt.embs, embs_f=tt.embs_f)
    if args.save_label:
        items["label"] = tt.label
    return items


def open_test(args, save_result):
    """The `IJB_test` of the CLI's options (embeddings restored from `save_result` without `-m`); SystemExit with
    the message on a missing file, a damaged meta file or image, or non-finite embeddings."""
    try:
        return IJB_test(args.model_file, args.data_path, args.subset, args.batch_size, args.force_reload,
                        restore_embs=None if args.model_file else save_result, cache_dir=args.cache_dir)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"IJB_evals: {error}") from None


def main(argv=None):
    """CLI entry: evaluate, write the result npz, print the table and save the plot next to the result."""
    args = parse_arguments(argv)
    show_library_logs()
    if args.plot_only:
        return plot_only(args)
    if args.model_file is None and "{model_name}" in args.save_result:
        print("Specify a model file with -m, or a saved result with embeddings with -R (see -h)")
        return None
    name = model_name_of(args.model_file) if args.model_file else os.path.splitext(
        os.path.basename(args.save_result))[0]
    save_result = args.save_result.format(model_name=name, subset=args.subset, kind="1N" if args.is_one_2_N else "11")
    tt = open_test(args, save_result)
    if args.save_embeddings:  # saved right away, so a crash later keeps them
        save_npz_atomic(save_result, embs=tt.embs, embs_f=tt.embs_f)
    scores, names = evaluate_scores(tt, args, name)
    if args.model_file is not None or args.save_embeddings:
        save_npz_atomic(save_result, **result_arrays(tt, args, scores, names))
        print(f">>>> Saved result: {save_result}")
    plot_path = os.path.splitext(save_result)[0] + ".png"
    if args.is_one_2_N:
        return plot_dir_far_cmc_scores(scores, names=names, save_path=plot_path)
    return plot_roc_and_calculate_tpr(scores, names=names, label=tt.label, save_path=plot_path)


if __name__ == "__main__":
    main()
