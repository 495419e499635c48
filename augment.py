"""All training augmentation, written with TensorFlow ops so it runs inside `tf.data`: RandAugment and AutoAugment
on uint8 HxWx3 images, the per-batch ops (brightness, contrast, saturation, crop, cutout mask), the training
augmenter `RandomProcessImage` that the dataset builders use, and mixup.

The op list, the level→argument mapping (`MAX_LEVEL = 10`) and the named AutoAugment policies follow the
original `augment.py` (itself the TF Model Garden version of the AutoAugment / RandAugment papers). Every op takes
and returns a uint8 image. Geometric ops (Rotate, ShearX/Y, TranslateX/Y) use nearest-neighbour sampling and
fill uncovered pixels with grey 128, as do Cutout patches.

Randomness is stateless: every random function takes a `seed` (a (2,) int tensor for the
`tf.random.stateless_*` ops) and gives the same draw for the same seed; with `seed=None` a fresh seed is drawn
from TensorFlow's global generator. The dataset readers derive one seed per batch and one per image
(`seeds.batch_seed`, `seeds.image_seeds`), and each op one per draw (`seeds.op_seed`), so a seeded pipeline yields
the same batches on every run, whatever the order in which its parallel calls run.

No Keras preprocessing layers are used: their random ops draw a magnitude from a range, whereas these ops apply a
fixed magnitude with a random sign, and a preprocessing layer must never end up inside a model (stack notes).
"""

import runtime_setup  # noqa: F401  (TensorFlow settings that must precede its import)

# isort: split
import math

import tensorflow as tf

from seeds import op_seed, seed_or_fresh

MAX_LEVEL = 10.0
FILL_VALUE = 128


# ----------------------------------------------------------------------------------------------------------------
# Image ops (uint8 in, uint8 out)


def blend(image1, image2, factor):
    """`image1 + factor·(image2 − image1)` as uint8; 0 gives image1, 1 image2, >1 extrapolates (clipped to 0..255)."""
    image1, image2 = tf.cast(image1, tf.float32), tf.cast(image2, tf.float32)
    blended = image1 + factor * (image2 - image1)
    return tf.cast(tf.clip_by_value(blended, 0.0, 255.0), tf.uint8)


def cutout(image, pad_size, replace=0, seed=None):
    """Fill a `2·pad_size` square (clipped at the borders) centred at a uniformly random pixel with `replace`
    (`seed`: (2,) int seed of the draw, None for a fresh one)."""
    height, width, seed = tf.shape(image)[0], tf.shape(image)[1], seed_or_fresh(seed)
    centre_y = tf.random.stateless_uniform([], op_seed(seed, 0), 0, height, dtype=tf.int32)
    centre_x = tf.random.stateless_uniform([], op_seed(seed, 1), 0, width, dtype=tf.int32)
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


def _random_sign(value, seed=None):
    """`value` or `−value` with equal probability (a scalar tensor; `seed` (2,) int or None)."""
    negative = tf.random.stateless_uniform([], seed_or_fresh(seed)) >= 0.5
    return tf.where(negative, -tf.cast(value, tf.float32), tf.cast(value, tf.float32))


def level_to_arg(name, level, cutout_const, translate_const, seed=None):
    """Arguments (a tuple, possibly holding random-sign tensors drawn with `seed`, (2,) int or None) of op `name`
    at magnitude `level` in [0, 10]."""
    fraction = level / MAX_LEVEL
    if name in ("AutoContrast", "Equalize", "Invert"):
        return ()
    if name == "Rotate":
        return (_random_sign(fraction * 30.0, seed),)
    if name in ("ShearX", "ShearY"):
        return (_random_sign(fraction * 0.3, seed),)
    if name in ("TranslateX", "TranslateY"):
        return (_random_sign(fraction * float(translate_const), seed),)
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


def apply_op(image, name, level, cutout_const, translate_const, replace=FILL_VALUE, seed=None):
    """Apply op `name` at magnitude `level` to a uint8 image (`seed`: (2,) int seed of its random draws, or None)."""
    seed = seed_or_fresh(seed)
    args = level_to_arg(name, level, cutout_const, translate_const, op_seed(seed, 0))
    if name in FILLING_OPS:
        args = (*args, replace)
    if name == "Cutout":
        args = (*args, op_seed(seed, 1))
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

    def distort(self, image, seed=None):
        """Apply `num_layers` randomly chosen ops (identity is one of the `len(available_ops) + 1` choices);
        `seed`: (2,) int seed of the draws, None for a fresh one."""
        input_dtype = image.dtype
        image = _to_uint8(image)
        seed = seed_or_fresh(seed)
        for layer in range(self.num_layers):
            choice = tf.random.stateless_uniform(
                [], op_seed(seed, 2 * layer), 0, len(self.available_ops) + 1, dtype=tf.int32
            )
            branches = [
                (
                    lambda name=name, img=image, layer=layer: apply_op(
                        img, name, self.magnitude, self.cutout_const, self.translate_const,
                        seed=op_seed(seed, 2 * layer + 1),
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

    def _apply_sub_policy(self, image, sub_policy, seed):
        """Apply the ops of one sub-policy, each with its own probability (draws from the (2,) `seed`)."""
        for step, (name, probability, level) in enumerate(sub_policy):
            image = tf.cond(
                tf.random.stateless_uniform([], op_seed(seed, 2 * step)) < probability,
                lambda image=image, name=name, level=level, step=step: apply_op(
                    image, name, level, self.cutout_const, self.translate_const, seed=op_seed(seed, 2 * step + 1)
                ),
                lambda image=image: image,
            )
        return image

    def distort(self, image, seed=None):
        """Apply one uniformly chosen sub-policy; returns the input dtype (`seed`: (2,) int, None for a fresh one)."""
        input_dtype = image.dtype
        image = _to_uint8(image)
        seed = seed_or_fresh(seed)
        choice_seed = op_seed(seed, len(self.policies) + 1000)  # apart from the sub-policies' salts
        choice = tf.random.stateless_uniform([], choice_seed, 0, len(self.policies), dtype=tf.int32)
        branches = [lambda sub=sub: self._apply_sub_policy(image, sub, seed) for sub in self.policies]
        return tf.cast(tf.switch_case(choice, branches), input_dtype)

    __call__ = distort


# ----------------------------------------------------------------------------------------------------------------
# Per-batch random ops (float32 (B, H, W, C), values 0..255)

RANDAUGMENT_OPS = ["AutoContrast", "Equalize", "Color", "Contrast", "Brightness", "Sharpness", "Cutout"]


def _per_sample(batch_size, low, high, seed, dtype=tf.float32):
    """One uniform draw in [low, high) per sample, shaped (B, 1, 1, 1) to broadcast over images (`seed`: (2,) int
    seed of the draws, None for a fresh one)."""
    return tf.random.stateless_uniform([batch_size, 1, 1, 1], seed_or_fresh(seed), low, high, dtype=dtype)


def random_cutout_mask(images, image_shape, probability=0.3, replace=128.0, seed=None):
    """Per image, with `probability`: keep the top `h ~ U[int(0.55·H), int(0.7·H))` rows, fill the rest with
    `replace` (a face mask over the bottom of the face). `images`: (B, H, W, C) batch or one (H, W, C) image;
    `seed`: (2,) int seed of the draws, None for a fresh one."""
    if images.shape.rank == 3:
        return random_cutout_mask(images[None], image_shape, probability, replace, seed)[0]
    batch_size, height, seed = tf.shape(images)[0], image_shape[0], seed_or_fresh(seed)
    keep_rows = _per_sample(batch_size, int(0.55 * height), int(0.7 * height), op_seed(seed, 0), tf.int32)
    rows = tf.reshape(tf.range(tf.shape(images)[1]), [1, -1, 1, 1])
    drawn = _per_sample(batch_size, 0.0, 1.0, op_seed(seed, 1)) < probability
    masked = tf.cast((rows >= keep_rows) & drawn, images.dtype)
    return images * (1 - masked) + tf.cast(replace, images.dtype) * masked


def random_flip_left_right(image, seed=None):
    """Mirror one HxWxC image with probability 1/2 (`seed`: (2,) int seed of the draw, None for a fresh one)."""
    flip = tf.random.stateless_uniform([], seed_or_fresh(seed)) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image)


def random_brightness(images, max_delta, seed=None):
    """Add one uniform value in [−max_delta, max_delta) per image (pixel units; `seed` (2,) int or None)."""
    return images + _per_sample(tf.shape(images)[0], -max_delta, max_delta, seed)


def random_contrast(images, lower, upper, seed=None):
    """Scale each image's deviation from its per-channel mean by a factor in [lower, upper) (tf.image rule;
    `seed` (2,) int or None)."""
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return (images - mean) * _per_sample(tf.shape(images)[0], lower, upper, seed) + mean


def adjust_saturation(images, factor):
    """`tf.image.adjust_saturation` without the HSV round trip: scale each pixel's HSV saturation `s` by `factor`
    (broadcast against `images` (..., H, W, 3)), clipped to [0, 1], keeping hue and value `v` (the channel maximum).
    With hue and value fixed every channel `c` moves along `v − c`: `c' = v − (v − c) · min(factor, 1 / s)`, where
    `1 / s = v / (v − min channel)`; pixels with `v <= 0` become grey `v`, as in the HSV formulas."""
    value = tf.reduce_max(images, axis=-1, keepdims=True)
    spread = value - tf.reduce_min(images, axis=-1, keepdims=True)
    scale = tf.where(value > 0, tf.minimum(factor, tf.math.divide_no_nan(value, spread)), 0.0)
    return value - (value - images) * scale


def random_saturation(images, lower, upper, seed=None):
    """Scale each image's HSV saturation by a factor in [lower, upper), clipped to [0, 1] (tf.image rule;
    `seed` (2,) int or None)."""
    return adjust_saturation(images, _per_sample(tf.shape(images)[0], lower, upper, seed))


def random_crop_resize(images, crop_shape, img_shape, seed=None):
    """Crop a random `crop_shape` window from each image and resize it (bilinear) back to `img_shape` (`seed`:
    (2,) int seed of the draws, None for a fresh one)."""
    batch_size, seed = tf.shape(images)[0], seed_or_fresh(seed)
    height, width = images.shape[1], images.shape[2]
    crop_height, crop_width = crop_shape[0], crop_shape[1]
    top = tf.random.stateless_uniform([batch_size], op_seed(seed, 0), 0, height - crop_height + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([batch_size], op_seed(seed, 1), 0, width - crop_width + 1, dtype=tf.int32)
    top, left = tf.cast(top, tf.float32), tf.cast(left, tf.float32)
    boxes = tf.stack(
        [
            top / (height - 1),
            left / (width - 1),
            (top + crop_height - 1) / (height - 1),
            (left + crop_width - 1) / (width - 1),
        ],
        axis=1,
    )
    return tf.image.crop_and_resize(images, boxes, tf.range(batch_size), img_shape)


# ----------------------------------------------------------------------------------------------------------------
# The training augmenter


class RandomProcessImage:
    """Training augmentation selected by `random_status` (images float32 0..255).

    - `-1`: none; `0`: random left-right flip; `1`: also brightness (max delta 12.75·s pixel values);
      `2`: also contrast and saturation in [1 − 0.1·s, 1 + 0.1·s]; `3`: also a random crop to `random_crop`,
      resized back to `img_shape`. Higher values below 100 strengthen the same ops. From 1 on, values are clipped
      to 0..255.
    - `>= 100`: random flip and RandAugment (2 layers, magnitude `5·s/100`, cutout 40, translate 100) over
      AutoContrast, Equalize, Color, Contrast, Brightness, Sharpness and Cutout.
    - `random_cutout_mask_area > 0`: with that probability the bottom of the image is filled with grey 128
      (`random_cutout_mask`), at every `random_status`, including −1.

    Every draw is independent per image. The pipeline runs flip and RandAugment per image (`process_image`, in
    the decode loop, one seed per image) and the rest on whole batches (`process_batch`, vectorised, one seed per
    batch); `process(image)` does both. Each method takes a `seed` ((2,) int, None for a fresh one): the same
    seed gives the same result.
    """

    def __init__(self, img_shape=(112, 112), random_status=2, random_crop=None, random_cutout_mask_area=0):
        self.img_shape = tuple(img_shape[:2])
        self.random_status = random_status
        self.random_crop = random_crop
        self.random_cutout_mask_area = random_cutout_mask_area
        self.randaug = None
        if random_status >= 100:
            self.randaug = RandAugment(
                num_layers=2, magnitude=5 * random_status / 100, cutout_const=40, translate_const=100
            )
            self.randaug.available_ops = list(RANDAUGMENT_OPS)

    def process_image(self, image, seed=None):
        """The per-image part: random flip (`random_status >= 0`) and RandAugment (`>= 100`); keeps the dtype."""
        seed = seed_or_fresh(seed)
        if self.random_status >= 0:
            image = random_flip_left_right(image, seed)  # the image's seed itself: one op less in the hot loop
        return image if self.randaug is None else self.randaug.distort(image, op_seed(seed, 1))

    @property
    def has_batch_part(self):
        """Whether `process_batch` changes anything: levels 1 to 99, or the cutout mask."""
        return 1 <= self.random_status < 100 or self.random_cutout_mask_area > 0

    def process_batch(self, images, seed=None):
        """The batch part on a float32 (B, H, W, 3) batch: brightness, contrast, saturation, crop, clip, mask."""
        level, seed = self.random_status, seed_or_fresh(seed)
        if 1 <= level < 100:
            images = random_brightness(images, 12.75 * level, op_seed(seed, 0))
        if 2 <= level < 100:
            lower, upper = max(0.0, 1 - 0.1 * level), 1 + 0.1 * level
            images = random_contrast(images, lower, upper, op_seed(seed, 1))
            images = random_saturation(images, lower, upper, op_seed(seed, 2))
        if 3 <= level < 100 and self.random_crop is not None:
            images = random_crop_resize(images, self.random_crop, self.img_shape, op_seed(seed, 3))
        if 1 <= level < 100:
            images = tf.clip_by_value(images, 0.0, 255.0)
        if self.random_cutout_mask_area > 0:
            images = random_cutout_mask(images, self.img_shape, self.random_cutout_mask_area, seed=op_seed(seed, 4))
        return images

    def process(self, image, seed=None):
        """Augment one HxWx3 image (values 0..255); returns float32."""
        seed = seed_or_fresh(seed)
        image = tf.cast(self.process_image(image, op_seed(seed, 0)), tf.float32)
        return self.process_batch(image[None], op_seed(seed, 1))[0]


# ----------------------------------------------------------------------------------------------------------------
# Mixup


def sample_beta_distribution(size, concentration_0=0.4, concentration_1=0.4, seed=None):
    """`size` draws of Beta(concentration_1, concentration_0), through two Gamma draws; float32 (size,) (`seed`:
    (2,) int seed of the draws, None for a fresh one)."""
    seed = seed_or_fresh(seed)
    gamma_1 = tf.random.stateless_gamma([size], op_seed(seed, 0), concentration_1)
    gamma_0 = tf.random.stateless_gamma([size], op_seed(seed, 1), concentration_0)
    return gamma_1 / (gamma_1 + gamma_0)


def mixup_weights(batch_size, alpha=0.4, seed=None):
    """Mixup's draw for a batch: weight λ ~ Beta(α, α) per sample, λ = max(λ, 1 − λ), λ > 0.9 counted as 1 (no
    mix), and a random partner per sample (`seed`: (2,) int, None for a fresh one). Returns `(weights float32
    (B,), partner indices int32 (B,))`."""
    seed = seed_or_fresh(seed)
    weight = sample_beta_distribution(batch_size, alpha, alpha, op_seed(seed, 0))
    weight = tf.maximum(weight, 1.0 - weight)
    weight = tf.where(weight > 0.9, tf.ones_like(weight), weight)
    return weight, tf.random.experimental.stateless_shuffle(tf.range(batch_size), op_seed(seed, 1))


def mix_with_partner(values, weight, partner):
    """`values · λ + values[partner] · (1 − λ)` per sample; `values` (B, ...), `weight` (B,) broadcast over the rest."""
    weight = tf.reshape(tf.cast(weight, values.dtype), [-1] + [1] * (values.shape.rank - 1))
    return values * weight + tf.gather(values, partner) * (1 - weight)


def mixup(image, label, alpha=0.4, seed=None):
    """Mix every sample of the batch with a random other one (`mixup_weights`, `seed` (2,) int or None). `image`
    (B,H,W,C) and one-hot `label` (B,classes) are mixed alike; the label comes back as float32."""
    weight, partner = mixup_weights(tf.shape(image)[0], alpha, seed)
    return mix_with_partner(image, weight, partner), mix_with_partner(tf.cast(label, tf.float32), weight, partner)
