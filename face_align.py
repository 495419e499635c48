"""5-point face alignment to the ArcFace template (the crop every InsightFace / GhostFaceNets model expects).

The five landmarks are, in order: left eye, right eye, nose tip, left mouth corner, right mouth corner (image
coordinates, x then y, "left" as seen in the image). A similarity transform (rotation, uniform scale,
translation; no shear) is fitted by least squares (Umeyama's method, the one `skimage.transform.
SimilarityTransform.estimate` implements) from the landmarks to the template, and the image is warped with
bilinear interpolation and a black border.
"""

import cv2
import numpy as np

# Landmark positions of the 112x112 ArcFace crop, (x, y) in pixels.
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.729904, 92.2041]],
    dtype=np.float64,
)


def template_for_size(size=112):
    """The ArcFace template scaled for a `size` x `size` crop, (5, 2) pixels.

    Multiples of 112 scale the template; other sizes follow InsightFace's 128-based variant (the 112-wide
    template centred with an 8-pixel margin per 128 pixels).
    """
    if size % 112 == 0:
        return ARCFACE_TEMPLATE * (size / 112.0)
    ratio = size / 128.0
    return (ARCFACE_TEMPLATE + np.array([8.0, 0.0])) * ratio


def similarity_transform(source, target):
    """The 2x3 similarity matrix mapping `source` points onto `target` points in the least-squares sense.

    Both are (K, 2) arrays. Umeyama (1991): centre both point sets, take the SVD of their covariance, fix the
    reflection sign, and derive scale and translation.
    """
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centered, target_centered = source - source_mean, target - target_mean
    covariance = target_centered.T @ source_centered / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.ones(2)
    if np.linalg.det(covariance) < 0:
        sign[1] = -1.0
    rotation = u @ np.diag(sign) @ vt
    source_variance = source_centered.var(axis=0).sum()
    scale = (singular * sign).sum() / source_variance
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def align_face(image, landmarks5, size=112):
    """`image` (H, W[, C]) warped so that its 5 landmarks (5, 2) land on the ArcFace template → (size, size[, C]).

    Grey images (H, W) or (H, W, 1) are stacked to 3 channels. Channel order is kept as given (BGR stays BGR).
    """
    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        image = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1)
    landmarks5 = np.asarray(landmarks5, dtype=np.float64).reshape(5, 2)
    matrix = similarity_transform(landmarks5, template_for_size(size))
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0.0)
