"""MegaFace challenge 1 features: one feature file per FaceScrub probe and MegaFace distractor image.

The MegaFace devkit (`run_experiment.py`) reads, for every image `<root>/<rel path>` of its lists, a file
`<features>/facescrub/<person>/<img>_<algo>.bin` or `<features>/megaface/<a1>/<a2>/<img>_<algo>.bin` holding one
OpenCV-style matrix: a 16-byte header of four little-endian int32 `(rows=D, cols=1, elem_size=4, type=5
(CV_32F))` followed by D little-endian float32 values.

Images (already aligned faces) are read with OpenCV, resized to the model input when needed, and embedded as RGB
through `embedding.embed_images` (normalised with `preprocess.normalize`, the training normalisation; the original
used `(x/255 − 0.5)/0.5`), then L2-normalised.
The optional noise-removal step (`--facescrub-noises`, `--megaface-noises`, the lists published with the
devkit) writes a cleaned copy: every feature gets one extra dimension, 0 for clean images; a noisy FaceScrub
image is replaced by its person's clean-feature sum plus U(±0.001) noise, normalised; a noisy distractor gets
100 in the extra dimension, so it never ranks first.

CLI: `python gen_megaface.py --model model.keras --facescrub-lst facescrub_lst --facescrub-root images/
--megaface-lst megaface_lst --megaface-root images/ --output feature_out [--facescrub-noises f.txt
--megaface-noises m.txt --output-clean feature_out_clean]`.
"""

import argparse
import logging
import os
import struct

import numpy as np
from tqdm import tqdm

from atomic_io import write_bytes_atomic
from embedding import embed_images, load_runner
from preprocess import l2_normalize

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<4i")
CV_32F = 5
PATH_DEPTH = {"facescrub": 2, "megaface": 3}  # path components kept: person/img, a1/a2/img
NOISY_DISTRACTOR_VALUE = 100.0


def write_feature(path, feature):
    """Write a 1-D feature as a devkit `.bin` (header `(D, 1, 4, 5)` + D float32) atomically, creating parent
    folders."""
    feature = np.asarray(feature, dtype="<f4").ravel()
    write_bytes_atomic(path, HEADER.pack(feature.size, 1, 4, CV_32F) + feature.tobytes())


def read_feature(path):
    """Read a devkit `.bin` → float32 (D,); ValueError naming the file when the header or size is wrong."""
    with open(path, "rb") as file:
        data = file.read()
    if len(data) < HEADER.size:
        raise ValueError(f"{path}: {len(data)} bytes, shorter than the 16-byte feature header")
    rows, cols, elem_size, cv_type = HEADER.unpack_from(data)
    if cols != 1 or elem_size != 4 or cv_type != CV_32F or len(data) != HEADER.size + 4 * rows:
        raise ValueError(f"{path}: header (rows={rows}, cols={cols}, elem_size={elem_size}, type={cv_type}) and "
                         f"{len(data)} bytes are not a float32 column vector")
    return np.frombuffer(data, dtype="<f4", offset=HEADER.size).astype(np.float32)


def read_image_list(list_file):
    """Non-empty lines of a devkit image list (relative image paths)."""
    with open(list_file) as file:
        return [line.strip() for line in file if line.strip()]


def feature_path(output_dir, dataset, image_path, algo):
    """Where the devkit looks for the feature of `image_path` (`dataset`: "facescrub" or "megaface")."""
    kept = image_path.replace("\\", "/").split("/")[-PATH_DEPTH[dataset]:]
    return os.path.join(output_dir, dataset, *kept[:-1], f"{kept[-1]}_{algo}.bin")


def load_face(path, image_size=(112, 112)):
    """The image as uint8 RGB (H, W, 3) at `image_size` → `(image, resized?)`; FileNotFoundError if unreadable."""
    import cv2

    image = cv2.imread(path)
    if image is None:
        raise FileNotFoundError(f"{path}: cannot read the image (missing or not an image)")
    resized = image.shape[:2] != tuple(image_size)
    if resized:
        image = cv2.resize(image, (image_size[1], image_size[0]), interpolation=cv2.INTER_LINEAR)
    return image[:, :, ::-1], resized


def generate_features(model_interf, list_file, image_root, output_dir, dataset, algo="insightface", batch_size=8,
                      image_size=(112, 112), flip=False):
    """Embed every image of `list_file` (paths relative to `image_root`) and write its L2-normalised feature file.

    `model_interf`: anything `embedding.load_runner` accepts (a Keras model, a model file, a runner, or a callable
    uint8 RGB (B, H, W, 3) → embeddings); `flip`: add the mirrored images' embeddings (the original did not).
    Returns the number of files written; logs a warning saying how many images had to be resized.
    """
    runner = load_runner(model_interf)
    image_paths = read_image_list(list_file)
    resized_count = 0
    for start in tqdm(range(0, len(image_paths), batch_size), f"Features {dataset}"):
        names = image_paths[start:start + batch_size]
        loaded = [load_face(os.path.join(image_root, name), image_size) for name in names]
        resized_count += sum(resized for _, resized in loaded)
        embeddings = embed_images(runner, np.stack([image for image, _ in loaded]), flip).astype(np.float64)
        if not np.isfinite(embeddings).all():
            raise ValueError(f"non-finite embeddings for images {names[0]} … {names[-1]}: the model is broken")
        for name, feature in zip(names, l2_normalize(embeddings), strict=True):
            write_feature(feature_path(output_dir, dataset, name, algo), feature)
    if resized_count:
        logger.warning(">>>> %s: %d of %d images were resized to %s", dataset, resized_count, len(image_paths),
                       image_size)
    return len(image_paths)


def read_noise_list(path, dataset):
    """Image keys of a devkit noise list: FaceScrub file names, or MegaFace `a1/a2/img` (after a tab if any)."""
    if path is None:
        return set()
    keys = set()
    with open(path) as file:
        for line in file:
            line = line.strip()
            if line and not line.startswith("#"):
                keys.add(line.split("\t")[-1] if dataset == "megaface" else line)
    return keys


def remove_noises(feature_dir_in, feature_dir_out, facescrub_lst, megaface_lst=None, algo="insightface",
                  facescrub_noises=None, megaface_noises=None, seed=0):
    """Write the cleaned copy of the features (one extra dimension, see the module docstring).

    Noise lists are optional (None: nothing is noisy, every feature only gets the extra 0). Returns
    `(noisy FaceScrub images replaced, noisy distractors marked)`.
    """
    rng = np.random.default_rng(seed)
    facescrub_noisy = read_noise_list(facescrub_noises, "facescrub")
    centers, noisy = {}, []
    for name in read_image_list(facescrub_lst):
        person, image = name.replace("\\", "/").split("/")[-2:]
        if image in facescrub_noisy:
            noisy.append(name)
            continue
        feature = np.append(read_feature(feature_path(feature_dir_in, "facescrub", name, algo)), 0.0)
        write_feature(feature_path(feature_dir_out, "facescrub", name, algo), feature)
        centers[person] = centers.get(person, 0.0) + feature.astype(np.float64)
    for name in noisy:
        person = name.replace("\\", "/").split("/")[-2]
        if person not in centers:
            raise ValueError(f"{facescrub_noises}: every image of {person!r} is listed as noise; no center")
        feature = centers[person].copy()
        feature[:-1] += rng.uniform(-0.001, 0.001, feature.size - 1)
        write_feature(feature_path(feature_dir_out, "facescrub", name, algo), l2_normalize(feature))
    marked = 0
    if megaface_lst is not None:
        megaface_noisy = read_noise_list(megaface_noises, "megaface")
        for name in read_image_list(megaface_lst):
            key = "/".join(name.replace("\\", "/").split("/")[-3:])
            is_noise = key in megaface_noisy
            feature = read_feature(feature_path(feature_dir_in, "megaface", name, algo))
            feature = np.append(feature, NOISY_DISTRACTOR_VALUE if is_noise else 0.0)
            write_feature(feature_path(feature_dir_out, "megaface", name, algo), feature)
            marked += is_noise
    return len(noisy), marked


def parse_arguments(argv=None):
    """Command-line options of `python gen_megaface.py` (the original's, plus the noise-removal step)."""
    parser = argparse.ArgumentParser(description="Write MegaFace devkit feature files.")
    parser.add_argument("--batch_size", type=int, default=8, help="images per model call")
    parser.add_argument("--image_size", default="3,112,112", help="C,H,W of the model input; images are resized")
    parser.add_argument("--algo", default="insightface", help="suffix of the feature files")
    parser.add_argument("--facescrub-lst", default="./data/facescrub_lst", help="FaceScrub image list")
    parser.add_argument("--megaface-lst", default="./data/megaface_lst", help="MegaFace distractor list")
    parser.add_argument("--facescrub-root", default="./data/facescrub_images", help="FaceScrub image folder")
    parser.add_argument("--megaface-root", default="./data/megaface_images", help="MegaFace image folder")
    parser.add_argument("--output", default="./feature_out", help="feature output folder")
    parser.add_argument("--model", default="GhostFaceNets/GhostFaceNet_W1.3_S1_ArcFace.h5",
                        help="model: .h5/.keras, .onnx, .tflite, .pt/.pth or 'mxnet_prefix,epoch'")
    parser.add_argument("--nomf", action="store_true", help="skip the MegaFace distractors")
    parser.add_argument("--facescrub-noises", default=None, help="FaceScrub noise list (enables cleaning)")
    parser.add_argument("--megaface-noises", default=None, help="MegaFace noise list (enables cleaning)")
    parser.add_argument("--output-clean", default="./feature_out_clean", help="cleaned feature folder")
    return parser.parse_args(argv)


def main(argv=None):
    """CLI entry: write the FaceScrub (and MegaFace) features, then the cleaned copy when a noise list is given."""
    args = parse_arguments(argv)
    image_size = tuple(int(value) for value in args.image_size.split(",")[1:3])
    interf = load_runner(args.model)
    generate_features(interf, args.facescrub_lst, args.facescrub_root, args.output, "facescrub", args.algo,
                      args.batch_size, image_size)
    if not args.nomf:
        generate_features(interf, args.megaface_lst, args.megaface_root, args.output, "megaface", args.algo,
                          args.batch_size, image_size)
    if args.facescrub_noises or args.megaface_noises:
        replaced, marked = remove_noises(args.output, args.output_clean, args.facescrub_lst,
                                         None if args.nomf else args.megaface_lst, args.algo,
                                         args.facescrub_noises, args.megaface_noises)
        print(f">>>> cleaned features in {args.output_clean}: {replaced} FaceScrub images replaced, "
              f"{marked} distractors marked")


if __name__ == "__main__":
    main()
