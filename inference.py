"""Use a trained GhostFaceNet: embed aligned faces, compare them, align faces, and pick a threshold at a FAR.

Preprocessing contract (what every embedding here, in ``evals.py`` and in training is computed from):

1. Image: RGB, uint8 values 0..255, shape (112, 112, 3) (the model's input size), a face aligned with the
   5-point ArcFace template (`align`). Grayscale images are repeated to 3 channels, RGBA images lose their
   alpha channel, and an image of another size is resized bilinearly with a warning (an unaligned face gives
   poor embeddings: align it first).
2. Normalisation: `preprocess.normalize`, float32, layout NHWC (N, 112, 112, 3), done inside the model
   runners of `embedding` (Keras, ONNX, TFLite), which all take the uint8 batch. ONNX files exported with
   ``input_layout="NCHW"`` take (N, 3, 112, 112) instead; the ONNX runner transposes for them.
3. Embedding: ``model(x) + model(flip_left_right(x))`` when ``flip`` (the default, as the evaluation does), else
   ``model(x)`` (`embedding.embed_images`), then divided by its L2 norm (`preprocess.l2_normalize`):
   float32 (N, D) unit vectors (D = 512 for the published models).
4. Similarity: the cosine of two embeddings (their dot product), in [-1, 1]; two images show one person when the
   cosine is above a threshold chosen at a false-accept rate with `calibrate_threshold`.

Command line::

    python inference.py verify a.jpg b.jpg -m model.keras --threshold 0.3
    python inference.py verify a.jpg b.jpg -m model.keras --far 1e-3 --bin lfw.bin
    python inference.py embed faces_dir -m model.keras -o embs.npz
    python inference.py threshold -m model.keras --bin lfw.bin --far 1e-2 1e-3
"""

import argparse
import warnings
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

import evals
from atomic_io import save_npz_atomic

# The runners are re-exported: users find the whole inference API here.
from embedding import (  # noqa: F401
    DEFAULT_IMAGE_SIZE,
    KerasRunner,
    OnnxRunner,
    TFLiteRunner,
    embed_images,
    load_runner,
)
from face_align import ARCFACE_TEMPLATE, align_face, similarity_transform, template_for_size  # noqa: F401
from preprocess import l2_normalize, normalize

DEFAULT_FARS = (1e-1, 1e-2, 1e-3, 1e-4)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}


# ----------------------------------------------------------------------------------------------------------------
# Alignment (face_align.py, the implementation IJB_evals.py uses; re-exported here)


def check_landmarks(landmarks5):
    """``landmarks5`` as a (5, 2) float64 array (10 numbers are reshaped), or ValueError saying what was given."""
    landmarks = np.asarray(landmarks5, dtype=np.float64)
    if landmarks.shape != (5, 2) and landmarks.size == 10:
        landmarks = landmarks.reshape(5, 2)
    if landmarks.shape != (5, 2) or not np.isfinite(landmarks).all():
        raise ValueError(f"landmarks5 must be 5 finite (x, y) points (left eye, right eye, nose, left and right "
                         f"mouth corner), got an array of shape {np.shape(landmarks5)}")
    return landmarks


def align(image, landmarks5, size=112):
    """Crop of ``image`` warped so that its 5 landmarks land on the ArcFace template: uint8 (size, size, C).

    ``landmarks5``: (5, 2) pixel coordinates (x, y) in ``image``, in the template's order (left eye, right eye,
    nose tip, left mouth corner, right mouth corner, left/right as seen in the image). The warp is the
    least-squares similarity transform (`similarity_transform`, Umeyama), bilinear, black outside the
    image: `face_align.align_face`, the alignment the IJB evaluation uses.
    """
    return align_face(image, check_landmarks(landmarks5), size)


# ----------------------------------------------------------------------------------------------------------------
# Reading images


def decode_image_bytes(data, name="image"):
    """Encoded image bytes (JPEG, PNG, BMP, ...) → uint8 array, RGB(A) or grey; ValueError naming ``name``."""
    image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError(f"{name}: not a readable image file")
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def read_image(path):
    """Read an image file → uint8 array (RGB, RGBA or grey); FileNotFoundError / ValueError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    return decode_image_bytes(path.read_bytes(), str(path))


def to_rgb_uint8(image, name="image"):
    """An image array as uint8 RGB (H, W, 3): grey (H, W) or (H, W, 1) is repeated, RGBA loses its alpha.

    Raises TypeError for values that are not uint8 and ValueError for other shapes, naming ``name``.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"{name}: expected uint8 pixel values 0..255, got dtype {image.dtype} "
                        "(for a 0..1 float image use (image * 255).round().astype(np.uint8))")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"{name}: expected an (H, W), (H, W, 1), (H, W, 3) RGB or (H, W, 4) RGBA image, "
                         f"got shape {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def load_rgb(item, name):
    """One image given as a path, encoded bytes or an array → uint8 RGB (H, W, 3)."""
    if isinstance(item, str | Path):
        return to_rgb_uint8(read_image(item), str(item))
    if isinstance(item, bytes | bytearray):
        return to_rgb_uint8(decode_image_bytes(bytes(item), name), name)
    return to_rgb_uint8(item, name)


def as_image_list(images):
    """``images`` as a list: a 4-D array is a batch, a path, bytes or a 2-D / 3-D array is one image."""
    if isinstance(images, str | Path | bytes | bytearray):
        return [images]
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def resize_to(image, size, name, resized_names):
    """``image`` resized bilinearly to ``size`` (H, W) when it differs, noting ``name`` in ``resized_names``."""
    if image.shape[:2] == tuple(size):
        return image
    resized_names.append(f"{name} ({image.shape[0]}x{image.shape[1]})")
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def load_faces(images, size=DEFAULT_IMAGE_SIZE):
    """Images (paths, bytes or arrays; see `as_image_list`) → uint8 RGB batch (N, H, W, 3) of ``size``.

    Images of another size are resized bilinearly, with one warning naming the first of them.
    """
    items = as_image_list(images)
    names = [str(item) if isinstance(item, str | Path) else f"image {index}" for index, item in enumerate(items)]
    resized = []
    batch = [resize_to(load_rgb(item, name), size, name, resized) for item, name in zip(items, names, strict=True)]
    if resized:
        warnings.warn(f"{len(resized)} image(s) are not {size[0]}x{size[1]} and were resized bilinearly, e.g. "
                      f"{resized[0]}; embeddings are only meaningful for faces aligned with align()",
                      stacklevel=3)
    return np.stack(batch) if batch else np.zeros((0, *size, 3), np.uint8)


def preprocess(images, size=DEFAULT_IMAGE_SIZE):
    """Images → float32 (N, H, W, 3) model input: `load_faces` then `preprocess.normalize` (what the
    runners feed their model)."""
    return normalize(load_faces(images, size))


# ----------------------------------------------------------------------------------------------------------------
# Embedding and comparing


def compare(a, b):
    """Cosine similarity of embeddings ``a`` and ``b``: (D,) and (D,) → float; (N, D) and (N, D) → (N,) row-wise.

    The inputs are L2-normalised first, so raw model outputs may be given too.
    """
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare embeddings of shapes {a.shape} and {b.shape}")
    cosine = np.sum(l2_normalize(a) * l2_normalize(b), axis=-1)
    return float(cosine) if cosine.ndim == 0 else cosine


class FaceEmbedder:
    """Embeds aligned face images with a Keras model or a model file, following the module's contract.

    Args:
        model_or_path: a Keras embedding model, or a model file: every file `GhostFaceNets.load_model`
            opens (``.keras`` of Keras 3 or tf-keras, Keras 3 ``.h5``, the original's whole-model ``.h5``), or an
            ``.onnx`` / ``.tflite`` export. A weights-only file raises ValueError saying how to load it.
        flip: add the embedding of the horizontally flipped image before normalising (as the evaluation does).
        batch_size: images per model call.
        detector: optional callable ``detector(rgb_uint8_image) -> (boxes (K, 4) [x, y, w, h], landmarks
            (K, 5, 2), scores (K,))`` used by `embed_photo`, e.g. `YuNetDetector`.
        num_threads: CPU threads for ONNX Runtime / LiteRT (default: their own choice).
    """

    def __init__(self, model_or_path, flip=True, batch_size=64, detector=None, num_threads=None):
        self.runner = load_runner(model_or_path, num_threads)
        self.flip, self.batch_size, self.detector = flip, int(batch_size), detector
        self.image_size = tuple(self.runner.image_size)

    def raw_embeddings(self, batch):
        """Un-normalised embeddings (N, D) float32 of a uint8 RGB NHWC batch (flip added when ``flip``)."""
        return embed_images(self.runner, batch, self.flip)

    def embed(self, images, progress=False):
        """L2-normalised float32 embeddings (N, D) of aligned face images.

        ``images``: a list of paths, encoded bytes or uint8 arrays, an (N, H, W, C) uint8 array, or one image.
        See the module docstring for what is accepted and how images are converted.
        """
        items = as_image_list(images)
        chunks = []
        starts = range(0, len(items), self.batch_size)
        for start in tqdm(starts, desc="embedding", unit="batch", disable=not progress):
            batch = load_faces(items[start:start + self.batch_size], self.image_size)
            chunks.append(self.raw_embeddings(batch))
        if not chunks:
            raise ValueError("no images to embed")
        return l2_normalize(np.concatenate(chunks))

    def compare(self, image_a, image_b):
        """Cosine similarity (float) of the embeddings of two aligned face images."""
        embeddings = self.embed([image_a, image_b])
        return compare(embeddings[0], embeddings[1])

    def detect_and_align(self, image):
        """Faces found by ``detector`` in a photo, aligned: ``(faces uint8 (K, H, W, 3), boxes (K, 4), scores)``,
        largest box first."""
        if self.detector is None:
            raise ValueError("FaceEmbedder has no detector; pass detector=YuNetDetector(path) or align faces first")
        image = load_rgb(image, str(image) if isinstance(image, str | Path) else "image")
        boxes, landmarks, scores = (np.asarray(value, np.float64) for value in self.detector(image))
        order = np.argsort(-(boxes[:, 2] * boxes[:, 3])) if len(boxes) else np.zeros(0, int)
        size = self.image_size[0]
        faces = np.stack([align(image, landmarks[i], size) for i in order]) if len(order) else np.zeros(
            (0, size, size, 3), np.uint8)
        return faces, boxes[order].reshape(-1, 4), scores[order].reshape(-1)

    def embed_photo(self, image):
        """Detect, align and embed every face of a photo: ``(embeddings (K, D), boxes (K, 4), scores (K,))``,
        largest face first; K = 0 gives a (0, 0) embedding array."""
        faces, boxes, scores = self.detect_and_align(image)
        embeddings = self.embed(faces) if len(faces) else np.zeros((0, 0), np.float32)
        return embeddings, boxes, scores


# ----------------------------------------------------------------------------------------------------------------
# Face detection with OpenCV's YuNet


def parse_yunet_faces(faces):
    """Rows of ``cv2.FaceDetectorYN.detect`` (K, 15) → ``(boxes (K, 4), landmarks (K, 5, 2), scores (K,))``.

    A row is ``x, y, w, h``, then (x, y) of the right eye, left eye, nose tip, right and left mouth corner of the
    person (which are the image's left eye ... right mouth corner, the ArcFace template's order), then the score.
    """
    faces = np.zeros((0, 15), np.float32) if faces is None else np.asarray(faces, np.float32).reshape(-1, 15)
    return faces[:, :4], faces[:, 4:14].reshape(-1, 5, 2), faces[:, 14]


class YuNetDetector:
    """Face detector built on OpenCV's YuNet (``cv2.FaceDetectorYN``), a callable for `FaceEmbedder`.

    ``model_path``: the YuNet ONNX file (e.g. ``face_detection_yunet_2023mar.onnx`` from the OpenCV model zoo),
    which you download yourself: nothing is downloaded at run time.
    """

    def __init__(self, model_path, score_threshold=0.9, nms_threshold=0.3, top_k=5000):
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no YuNet ONNX file (get face_detection_yunet_2023mar.onnx from the "
                                    "OpenCV model zoo; nothing is downloaded at run time)")
        self.detector = cv2.FaceDetectorYN.create(str(path), "", (320, 320), score_threshold, nms_threshold, top_k)

    def __call__(self, image):
        """Detect faces in an RGB uint8 image → ``(boxes (K, 4) [x, y, w, h], landmarks (K, 5, 2), scores (K,))``."""
        self.detector.setInputSize((image.shape[1], image.shape[0]))
        _, faces = self.detector.detect(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        return parse_yunet_faces(faces)


# ----------------------------------------------------------------------------------------------------------------
# Thresholds at a false-accept rate


def pair_cosines(embeddings):
    """Cosine of each pair (rows 2k, 2k+1) of ``embeddings`` (2N, D) → (N,) float64."""
    embeddings = np.asarray(embeddings, dtype=np.float64)
    if embeddings.ndim != 2 or len(embeddings) % 2:
        raise ValueError(f"expected (2N, D) pair embeddings (pair k = rows 2k, 2k+1), got shape {embeddings.shape}")
    embeddings = l2_normalize(embeddings)
    return np.sum(embeddings[0::2] * embeddings[1::2], axis=1)


def negative_cosines(embeddings, issame):
    """Pair cosines (N,) and the different-person pairs' cosines sorted from high to low."""
    cosines, issame = pair_cosines(embeddings), np.asarray(issame, dtype=bool)
    if issame.shape != cosines.shape:
        raise ValueError(f"{cosines.size} pairs of embeddings but {issame.size} issame labels")
    if issame.all():
        raise ValueError("no different-person pairs (issame is all True): the FAR cannot be measured")
    return cosines, np.sort(cosines[~issame])[::-1]


def negative_far_curve(negatives):
    """Candidate thresholds and their FAR for a decreasing array of negative-pair cosines: each negative cosine,
    then -1.0; the FAR of a threshold is the fraction of negatives strictly above it (non-decreasing)."""
    thresholds = np.append(negatives, -1.0)
    ascending = negatives[::-1]
    above = ascending.size - np.searchsorted(ascending, thresholds, side="right")
    return thresholds, above / negatives.size


def calibrate_threshold(embeddings, issame, far):
    """The cosine threshold at which a chosen false-accept rate is reached on an evaluation set.

    ``embeddings``: (2N, D) embeddings of N pairs (rows 2k, 2k+1, as in a ``.bin``); ``issame``: N booleans;
    ``far``: target fraction of different-person pairs accepted (e.g. 1e-3). Pairs count as "same person" when
    their cosine is strictly above the threshold. Returns the smallest threshold, among the negative pairs'
    cosines, whose FAR is at most ``far`` (`evals.threshold_at_far` without interpolation): the
    ``floor(far * negatives) + 1``-th largest negative cosine (-1.0 when every negative pair may be accepted).
    With fewer than ``1 / far`` negative pairs the FAR cannot be resolved: the threshold is then the largest
    negative cosine (FAR 0) and a warning says so.
    """
    _, negatives = negative_cosines(embeddings, issame)
    if far > 0 and far * negatives.size + 1e-9 < 1:
        warnings.warn(f"FAR {far:g} needs at least {int(np.ceil(1 / far))} different-person pairs, the set has "
                      f"{negatives.size}; returning the largest negative cosine (FAR 0 on this set)", stacklevel=2)
    thresholds, fars = negative_far_curve(negatives)
    return float(evals.threshold_at_far(thresholds, fars, far, interpolate=False))


def verification_rates(cosines, issame, threshold):
    """(TAR, FAR) when pairs with cosine > ``threshold`` are accepted: accepted same-person / same-person pairs,
    accepted different-person / different-person pairs (NaN when a class is absent)."""
    cosines, issame = np.asarray(cosines), np.asarray(issame, dtype=bool)
    accept = cosines > threshold
    tar = np.count_nonzero(accept & issame) / np.count_nonzero(issame) if issame.any() else np.nan
    far = np.count_nonzero(accept & ~issame) / np.count_nonzero(~issame) if (~issame).any() else np.nan
    return float(tar), float(far)


def far_threshold_table(embeddings, issame, fars=DEFAULT_FARS):
    """pandas DataFrame, one row per target FAR: ``far_target``, ``threshold`` (cosine), the ``far`` and ``tar``
    reached with it on this set, and ``negatives`` (different-person pairs, which bound the FAR resolution)."""
    import pandas as pd

    cosines, negatives = negative_cosines(embeddings, issame)
    rows = []
    for far in fars:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            threshold = calibrate_threshold(embeddings, issame, far)
        tar, reached = verification_rates(cosines, issame, threshold)
        rows.append({"far_target": far, "threshold": threshold, "far": reached, "tar": tar,
                     "negatives": negatives.size})
    return pd.DataFrame(rows)


def bin_embeddings(embedder, bin_path, limit=0, progress=True):
    """Embeddings (2N, D) and ``issame`` (N,) of a ``.bin`` pair file with a `FaceEmbedder`."""
    from bin_files import load_bin

    bins, issame = load_bin(bin_path, limit=limit)
    return embedder.embed(bins, progress=progress), issame


def threshold_at_far_from_bin(embedder, bin_path, far, limit=0):
    """`calibrate_threshold` on the pairs of a ``.bin`` file embedded with ``embedder`` (a FaceEmbedder)."""
    embeddings, issame = bin_embeddings(embedder, bin_path, limit)
    return calibrate_threshold(embeddings, issame, far)


# ----------------------------------------------------------------------------------------------------------------
# Command line


def image_files(folder):
    """Image files under ``folder`` (recursive, sorted), by suffix; ValueError when there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such directory")
    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file())
    if not files:
        raise ValueError(f"{folder}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
    return files


def readable_images(files):
    """(images, kept paths, skipped paths): each file decoded to RGB, unreadable ones skipped with a warning."""
    images, kept, skipped = [], [], []
    for path in files:
        try:
            images.append(load_rgb(path, str(path)))
            kept.append(path)
        except (ValueError, TypeError) as error:
            warnings.warn(f"skipping {error}", stacklevel=2)
            skipped.append(path)
    return images, kept, skipped


def embed_folder(embedder, folder, output_path, chunk=1024):
    """Embed every image under ``folder`` into ``output_path`` (.npz with ``embeddings`` (N, D) float32, ``paths``
    relative to ``folder`` and ``skipped``, the unreadable files); returns the npz path."""
    files, output_path = image_files(folder), Path(output_path).with_suffix(".npz")
    embeddings, paths, skipped = [], [], []
    with tqdm(total=len(files), desc="embedding", unit="img") as progress:
        for start in range(0, len(files), chunk):
            images, kept, bad = readable_images(files[start:start + chunk])
            if images:
                embeddings.append(embedder.embed(images))
            paths += kept
            skipped += bad
            progress.update(len(kept) + len(bad))
    relative = [str(path.relative_to(folder)) for path in paths]
    save_npz_atomic(output_path, embeddings=np.concatenate(embeddings) if embeddings else np.zeros((0, 0), np.float32),
                    paths=np.array(relative, dtype=str), skipped=np.array([str(path) for path in skipped], dtype=str))
    return output_path


def face_for_verification(embedder, path):
    """The face of an image file to verify: the largest detected face when the embedder has a detector, else the
    (already aligned) image itself."""
    if embedder.detector is None:
        return path
    faces, _, _ = embedder.detect_and_align(path)
    if not len(faces):
        raise ValueError(f"{path}: no face detected")
    return faces[0]


def verify_threshold(args, embedder):
    """The threshold of the verify command: ``--threshold``, or computed at ``--far`` on ``--bin``; None if neither."""
    if args.threshold is not None:
        return args.threshold
    if args.far is None:
        return None
    if not args.bin:
        raise SystemExit("--far needs --bin, the .bin pair file on which the threshold is measured")
    return threshold_at_far_from_bin(embedder, args.bin, args.far)


def run_verify(args, embedder):
    """``verify``: print the cosine of two images and, with a threshold, whether they show one person."""
    threshold = verify_threshold(args, embedder)
    similarity = embedder.compare(face_for_verification(embedder, args.image_a),
                                  face_for_verification(embedder, args.image_b))
    if threshold is None:
        print(f"cosine similarity: {similarity:.6f} (give --threshold, or --far with --bin, to decide)")
        return {"similarity": similarity}
    same = similarity > threshold
    print(f"cosine similarity: {similarity:.6f}, threshold: {threshold:.6f} -> "
          f"{'same person' if same else 'different people'}")
    return {"similarity": similarity, "threshold": threshold, "same": bool(same)}


def run_threshold(args, embedder):
    """``threshold``: print the cosine threshold, FAR and TAR at each ``--far`` on ``--bin``."""
    embeddings, issame = bin_embeddings(embedder, args.bin)
    table = far_threshold_table(embeddings, issame, args.far or DEFAULT_FARS)
    print(table.to_string(index=False))
    return table


def parse_arguments(argv=None):
    """Command-line options of ``python inference.py``."""
    parser = argparse.ArgumentParser(description="Embed and verify faces with a trained GhostFaceNet.")
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-m", "--model", required=True, help="model file: .keras, .h5, .onnx or .tflite")
    common.add_argument("-b", "--batch_size", type=int, default=64, help="images per model call")
    common.add_argument("-F", "--no_flip", action="store_true", help="do not add flipped-image embeddings")
    verify = commands.add_parser("verify", parents=[common], help="compare the faces of two images")
    verify.add_argument("image_a")
    verify.add_argument("image_b")
    decision = verify.add_mutually_exclusive_group()
    decision.add_argument("--threshold", type=float, help="cosine above which the faces are the same person")
    decision.add_argument("--far", type=float, help="false-accept rate whose threshold is measured on --bin")
    verify.add_argument("--bin", help=".bin pair file used with --far")
    verify.add_argument("--detector", help="YuNet ONNX file: detect and align faces in the images first")
    embed = commands.add_parser("embed", parents=[common], help="embed every image of a directory")
    embed.add_argument("folder", help="directory of aligned face images (searched recursively)")
    embed.add_argument("-o", "--output", default="embeddings.npz", help="output .npz")
    threshold = commands.add_parser("threshold", parents=[common], help="cosine thresholds at FARs on a .bin")
    threshold.add_argument("--bin", required=True, help=".bin pair file")
    threshold.add_argument("--far", type=float, nargs="*", help=f"target FARs (default {DEFAULT_FARS})")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry point; returns the command's result (dict, npz path or DataFrame)."""
    args = parse_arguments(argv)
    detector = YuNetDetector(args.detector) if getattr(args, "detector", None) else None
    embedder = FaceEmbedder(args.model, flip=not args.no_flip, batch_size=args.batch_size, detector=detector)
    if args.command == "verify":
        return run_verify(args, embedder)
    if args.command == "embed":
        path = embed_folder(embedder, args.folder, args.output)
        print(f"embeddings written to {path}")
        return path
    return run_threshold(args, embedder)


if __name__ == "__main__":
    main()
