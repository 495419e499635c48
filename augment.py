"""RandAugment and AutoAugment on uint8 HxWx3 images, written with TensorFlow ops so they run inside `tf.data`.

The op list, the level→argument mapping (`MAX_LEVEL = 10`) and the named AutoAugment policies follow the
original `augment.py` (itself the TF Model Garden version of the AutoAugment / RandAugment papers). Every op takes
and returns a uint8 image. Geometric ops (Rotate, ShearX/Y, TranslateX/Y) use nearest-neighbour sampling and
fill uncovered pixels with grey 128, as do Cutout patches.

No Keras preprocessing layers are used: their random ops draw a magnitude from a range, whereas these ops apply a
fixed magnitude with a random sign, and a preprocessing layer must never end up inside a model (stack notes).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import math

import tensorflow as tf

MAX_LEVEL = 10.0
FILL_VALUE = 128


# ----------------------------------------------------------------------------------------------------------------
# Image ops (uint8 in, uint8 out)


def blend(image1, image2, factor):
    """`image1 + factor·(image2 − image1)` as uint8; 0 gives image1, 1 image2, >1 extrapolates (clipped to 0..255)."""
    image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    blended = image1 + factor * (image2 - image1)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def cutout(image, pad_size, replace=0):
    """Fill a `2·pad_size` square (clipped at the borders) centred at a uniformly random pixel with `replace`."""
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    centre_y = tf.random.uniform([], 0, height, dtype=tf.int32)
    centre_x = tf.random.uniform([], 0, width, dtype=tf.int32)
    rows = tf.range(height)[:, None]
    columns = tf.range(width)[None, :]
    inside = (
        (rows >= centre_y - pad_size)
        & (rows < centre_y + pad_size)
        & (columns >= centre_x - pad_size)
        & (columns < centre_x + pad_size)
    )
    return tf.where(inside[..., None], tf.cast(replace, image.dtype), image)


def solarize(image, threshold=128):
    """Invert every pixel value at or above `threshold`."""
    return tf.where(image < threshold, image, 255 - image)


def solarize_add(image, addition=0, threshold=128):
    """Add `addition` (clipped to 0..255) to every pixel value below `threshold`."""
    added = tf.cast(tf.clip_by_value(tf.cast(image, tf.int32) + addition, 0, 255), tf.uint8)
    return tf.where(image < threshold, added, image)


def _grey(image):
    """Luma as a 3-channel uint8 image."""
    return tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(image))


def color(image, factor):
    """Saturation: blend the grey image towards the original by `factor` (1 = unchanged)."""
    return blend(_grey(image), image, factor)


def contrast(image, factor):
    """Contrast: blend a flat image at the mean grey level towards the original by `factor`."""
    mean = tf.reduce_mean(tf.cast(tf.image.rgb_to_grayscale(image), tf.float32))
    flat = tf.fill(tf.shape(image), tf.cast(tf.clip_by_value(tf.round(mean), 0, 255), tf.uint8))
    return blend(flat, image, factor)


def brightness(image, factor):
    """Brightness: blend black towards the original by `factor`."""
    return blend(tf.zeros_like(image), image, factor)


def posterize(image, bits):
    """Keep the `bits` most significant bits of every value (`bits` a Python int; 0 gives black)."""
    if bits <= 0:
        return tf.zeros_like(image)
    shift = 8 - bits
    return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)


def sharpness(image, factor):
    """Sharpness: blend a 3x3-smoothed copy (kernel [[1,1,1],[1,5,1],[1,1,1]]/13, border kept) towards the original."""
    as_float = tf.cast(image, tf.float32)[None]
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32) / 13.0
    kernel = tf.tile(kernel[:, :, None, None], [1, 1, 3, 1])
    smoothed = tf.nn.depthwise_conv2d(as_float, kernel, [1, 1, 1, 1], padding="VALID")
    smoothed = tf.clip_by_value(tf.round(smoothed), 0.0, 255.0)
    interior = tf.pad(tf.ones_like(smoothed), [[0, 0], [1, 1], [1, 1], [0, 0]])
    degenerate = tf.where(interior > 0, tf.pad(smoothed, [[0, 0], [1, 1], [1, 1], [0, 0]]), as_float)
    return blend(tf.cast(degenerate[0], tf.uint8), image, factor)


def _equalize_channel(channel):
    """Histogram equalisation of one uint8 channel (PIL `ImageOps.equalize` rule)."""
    histogram = tf.math.bincount(tf.cast(channel, tf.int32), minlength=256, maxlength=256)
    nonzero = tf.boolean_mask(histogram, histogram > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(histogram) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    equalized = tf.cast(tf.gather(lut, tf.cast(channel, tf.int32)), tf.uint8)
    return tf.where(step > 0, equalized, channel)


def equalize(image):
    """Per-channel histogram equalisation."""
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def autocontrast(image):
    """Stretch every channel linearly so its minimum maps to 0 and its maximum to 255 (flat channels unchanged)."""
    as_float = tf.cast(image, tf.float32)
    low = tf.reduce_min(as_float, axis=[0, 1])
    high = tf.reduce_max(as_float, axis=[0, 1])
    scale = tf.where(high > low, 255.0 / tf.maximum(high - low, 1.0), 1.0)
    offset = tf.where(high > low, -low * scale, 0.0)
    return tf.cast(tf.clip_by_value(as_float * scale + offset, 0.0, 255.0), tf.uint8)


def invert(image):
    """`255 − image`."""
    return 255 - image


def transform(image, matrix, replace=FILL_VALUE):
    """Projective transform with the 8-number matrix `[a0,a1,a2,b0,b1,b2,c0,c1]` mapping output to input pixels.

    Nearest-neighbour sampling; pixels that map outside the image get `replace`.
    """
    transformed = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(image, tf.float32)[None],
        transforms=tf.cast(tf.reshape(matrix, [1, 8]), tf.float32),
        output_shape=tf.shape(image)[:2],
        fill_value=tf.cast(replace, tf.float32),
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return tf.cast(transformed[0], tf.uint8)


def rotate(image, degrees, replace=FILL_VALUE):
    """Rotate counter-clockwise by `degrees` about the image centre."""
    radians = degrees * math.pi / 180.0
    height, width = tf.cast(tf.shape(image)[0], tf.float32), tf.cast(tf.shape(image)[1], tf.float32)
    cos, sin = tf.cos(radians), tf.sin(radians)
    offset_x = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
    offset_y = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
    return transform(image, tf.stack([cos, -sin, offset_x, sin, cos, offset_y, 0.0, 0.0]), replace)


def translate_x(image, pixels, replace=FILL_VALUE):
    """Shift the content `pixels` to the right (negative: left)."""
    return transform(image, tf.stack([1.0, 0.0, -tf.cast(pixels, tf.float32), 0.0, 1.0, 0.0, 0.0, 0.0]), replace)


def translate_y(image, pixels, replace=FILL_VALUE):
    """Shift the content `pixels` down (negative: up)."""
    return transform(image, tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, -tf.cast(pixels, tf.float32), 0.0, 0.0]), replace)


def shear_x(image, level, replace=FILL_VALUE):
    """Horizontal shear: input x = x + level·y."""
    return transform(image, tf.stack([1.0, tf.cast(level, tf.float32), 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]), replace)


def shear_y(image, level, replace=FILL_VALUE):
    """Vertical shear: input y = level·x + y."""
    return transform(image, tf.stack([1.0, 0.0, 0.0, tf.cast(level, tf.float32), 1.0, 0.0, 0.0, 0.0]), replace)


NAME_TO_FUNC = {
    "AutoContrast": autocontrast,
    "Equalize": equalize,
    "Invert": invert,
    "Rotate": rotate,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
    "ShearX": shear_x,
    "ShearY": shear_y,
    "TranslateX": translate_x,
    "TranslateY": translate_y,
    "Cutout": cutout,
}
FILLING_OPS = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Cutout"}


# ----------------------------------------------------------------------------------------------------------------
# Level -> argument


def _random_sign(value):
    """`value` or `−value` with equal probability (a scalar tensor)."""
    return tf.where(tf.random.uniform([]) < 0.5, tf.cast(value, tf.float32), -tf.cast(value, tf.float32))


def level_to_arg(name, level, cutout_const, translate_const):
    """Arguments (a tuple, possibly holding random-sign tensors) of op `name` at magnitude `level` in [0, 10]."""
    fraction = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (_random_sign(fraction * 30.0),)
    if name in ("ShearX", "ShearY"):
        return (_random_sign(fraction * 0.3),)
    if name in ("TranslateX", "TranslateY"):
        return (_random_sign(fraction * float(translate_const)),)
    if name in ("Color", "Contrast", "Brightness", "Sharpness"):
        return (fraction * 1.8 + 0.1,)
    if name == "Posterize":
        return (int(fraction * 4),)
    if name == "Solarize":
        return (int(fraction * 256),)
    if name == "SolarizeAdd":
        return (int(fraction * 110),)
    if name == "Cutout":
        return (int(fraction * cutout_const),)
    raise ValueError(f"unknown augmentation op {name!r}; known: {sorted(NAME_TO_FUNC)}")


def apply_op(image, name, level, cutout_const, translate_const, replace=FILL_VALUE):
    """Apply op `name` at magnitude `level` to a uint8 image."""
    args = level_to_arg(name, level, cutout_const, translate_const)
    if name in FILLING_OPS:
        args = (*args, replace)
    return NAME_TO_FUNC[name](image, *args)


def _to_uint8(image):
    """Clip to 0..255 and cast to uint8 (input of every op)."""
    if image.dtype == tf.uint8:
        return image
    return tf.cast(tf.clip_by_value(tf.cast(image, tf.float32), 0.0, 255.0), tf.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Policies


def policy_v0():
    """The AutoAugment paper's ImageNet policy used by the reference code: 25 sub-policies of (op, prob, level)."""
    return [
        [("Equalize", 0.8, 1), ("ShearY", 0.8, 4)],
        [("Color", 0.4, 9), ("Equalize", 0.6, 3)],
        [("Color", 0.4, 1), ("Rotate", 0.6, 8)],
        [("Solarize", 0.8, 3), ("Equalize", 0.4, 7)],
        [("Solarize", 0.4, 2), ("Solarize", 0.6, 2)],
        [("Color", 0.2, 0), ("Equalize", 0.8, 8)],
        [("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)],
        [("ShearX", 0.2, 9), ("Rotate", 0.6, 8)],
        [("Color", 0.6, 1), ("Equalize", 1.0, 2)],
        [("Invert", 0.4, 9), ("Rotate", 0.6, 0)],
        [("Equalize", 1.0, 9), ("ShearY", 0.6, 3)],
        [("Color", 0.4, 7), ("Equalize", 0.6, 0)],
        [("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)],
        [("Solarize", 0.6, 8), ("Color", 0.6, 9)],
        [("Solarize", 0.2, 4), ("Rotate", 0.8, 9)],
        [("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)],
        [("ShearX", 0.0, 0), ("Solarize", 0.8, 4)],
        [("ShearY", 0.8, 0), ("Color", 0.6, 4)],
        [("Color", 1.0, 0), ("Rotate", 0.6, 2)],
        [("Equalize", 0.8, 4), ("Equalize", 0.0, 8)],
        [("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)],
        [("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)],
        [("Posterize", 0.8, 2), ("Solarize", 0.6, 10)],
        [("Solarize", 0.6, 8), ("Equalize", 0.6, 1)],
        [("Color", 0.8, 6), ("Rotate", 0.4, 5)],
    ]


def policy_simple():
    """The 13 sub-policies of `policy_v0` that contain no geometric op."""
    geometric = {"Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY", "Invert"}
    return [sub for sub in policy_v0() if not any(name in geometric for name, _, _ in sub)]


def policy_test():
    """A single fixed sub-policy, for tests."""
    return [[("TranslateX", 1.0, 4), ("Equalize", 1.0, 10)]]


POLICIES = {"v0": policy_v0, "simple": policy_simple, "test": policy_test}


class RandAugment:
    """RandAugment: `num_layers` times, pick one of `available_ops` or identity uniformly and apply it at `magnitude`.

    `magnitude` is a level in [0, 10] (float allowed); `available_ops` may be replaced after construction.
    `distort(image)` takes any-dtype HxWx3 values in 0..255 and returns the same dtype.
    """

    def __init__(self, num_layers=2, magnitude=10.0, cutout_const=40.0, translate_const=100.0):
        self.num_layers = num_layers
        self.magnitude = float(magnitude)
        self.cutout_const = float(cutout_const)
        self.translate_const = float(translate_const)
        self.available_ops = list(NAME_TO_FUNC)

    def distort(self, image):
        """Apply `num_layers` randomly chosen ops (identity is one of the `len(available_ops) + 1` choices)."""
        input_dtype = image.dtype
        image = _to_uint8(image)
        for _ in range(self.num_layers):
            choice = tf.random.uniform([], 0, len(self.available_ops) + 1, dtype=tf.int32)
            branches = [
                (
                    lambda name=name, img=image: apply_op(
                        img, name, self.magnitude, self.cutout_const, self.translate_const
                    )
                )
                for name in self.available_ops
            ]
            branches.append(lambda img=image: img)
            image = tf.switch_case(choice, branches)
        return tf.cast(image, input_dtype)

    __call__ = distort


class AutoAugment:
    """AutoAugment: pick one sub-policy uniformly and apply each of its ops with its probability.

    `augmentation_name` is "v0", "simple" or "test"; or pass `policies` (a list of sub-policies of
    `(op name, probability, level)`).
    """

    def __init__(self, augmentation_name="v0", policies=None, cutout_const=100, translate_const=250):
        if policies is None:
            if augmentation_name not in POLICIES:
                raise ValueError(f"unknown AutoAugment policy {augmentation_name!r}; known: {sorted(POLICIES)}")
            policies = POLICIES[augmentation_name]()
        self.policies = policies
        self.cutout_const = float(cutout_const)
        self.translate_const = float(translate_const)

    def _apply_sub_policy(self, image, sub_policy):
        """Apply the ops of one sub-policy, each with its own probability."""
        for name, probability, level in sub_policy:
            image = tf.cond(
                tf.random.uniform([]) < probability,
                lambda image=image, name=name, level=level: apply_op(
                    image, name, level, self.cutout_const, self.translate_const
                ),
                lambda image=image: image,
            )
        return image

    def distort(self, image):
        """Apply one uniformly chosen sub-policy; returns the input dtype."""
        input_dtype = image.dtype
        image = _to_uint8(image)
        choice = tf.random.uniform([], 0, len(self.policies), dtype=tf.int32)
        branches = [lambda sub=sub: self._apply_sub_policy(image, sub) for sub in self.policies]
        return tf.cast(tf.switch_case(choice, branches), input_dtype)

    __call__ = distort
