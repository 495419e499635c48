"""Synthetic face identities: deterministic, separable by design, rendered as aligned 112x112 RGB crops.

An identity is a fixed parameter vector (head shape, eyes, brows, nose, mouth, skin, hair, beard, jaw, skin
blotches and moles) sampled once from `default_rng([seed, identity, 0])`. Its features are painted once into a
canonical surface texture (u = longitude, v = latitude on the head ellipsoid), with two eye states and three
mouth states. Image k of the identity uses `default_rng([seed, identity, 1 + k])` for the nuisances: pose, light,
expression, background, photometric changes, occlusions (glasses, surgical mask, foreign blob) and camera
effects (blur, down-up-sampling, noise, JPEG quality), all scaled by one knob `nuisance` in [0, 1]. Rendering
ray-casts the ellipsoid per pixel, looks the texture up with `cv2.remap` and shades it with a Lambertian light.

Identity information lives only in the parameters: with `nuisance=0` two images of one identity are identical,
and at `nuisance=0.5` raw pixels separate identities only weakly (see `pixel_verification_accuracy`), so a
model has to learn the features.
"""

import os
from concurrent.futures import ProcessPoolExecutor

import cv2
import numpy as np
from tqdm import tqdm

from atomic_io import write_bytes_atomic, write_text_atomic

IMAGE_SIZE = 112
FACE_ZOOM = 1.2  # how much the head fills the frame (aligned crops show the face, not the whole head)
GENERATOR_VERSION = 1

# Canonical texture: u (longitude, radians, 0 = face centre) and v (latitude, radians, negative = up).
TEXTURE_HEIGHT, TEXTURE_WIDTH = 160, 256
U_MAX, V_MAX = 2.2, 1.45
SOFTNESS = 0.008  # edge width of the painted masks, in radians

# Continuous identity parameters: name -> (low, high). An identity stores them as uniform [0, 1] draws.
IDENTITY_RANGES = {
    "head_a": (0.68, 0.80),
    "head_b": (0.90, 1.02),
    "head_c": (0.65, 0.80),
    "jaw": (0.0, 1.0),
    "chin_v": (0.95, 1.15),
    "eye_sep": (0.34, 0.46),
    "eye_v": (-0.24, -0.10),
    "eye_w": (0.09, 0.14),
    "eye_h": (0.035, 0.06),
    "eye_tilt": (-0.15, 0.15),
    "iris_r": (0.45, 0.75),
    "iris_color": (0.0, 1.0),
    "brow_len": (0.10, 0.17),
    "brow_thick": (0.012, 0.03),
    "brow_arch": (0.0, 2.5),
    "brow_tilt": (-0.2, 0.2),
    "brow_gap": (0.06, 0.13),
    "nose_len": (0.25, 0.40),
    "nose_w": (0.06, 0.11),
    "nostril": (0.015, 0.03),
    "bridge": (0.0, 1.0),
    "mouth_v": (0.45, 0.62),
    "mouth_w": (0.14, 0.24),
    "lip_up": (0.015, 0.035),
    "lip_low": (0.02, 0.045),
    "mouth_curve": (-1.5, 1.5),
    "lip_color": (0.0, 1.0),
    "skin_tone": (0.0, 1.0),
    "skin_red": (0.0, 1.0),
    "hair_color": (0.0, 1.0),
    "hairline": (-0.80, -0.50),
    "hair_curve": (0.0, 1.0),
    "side_cover": (0.0, 1.0),
    "beard_density": (0.3, 1.0),
}
IDENTITY_DIMENSIONS = len(IDENTITY_RANGES)
MIN_IDENTITY_DISTANCE = 0.35  # minimum Euclidean distance between two identities' normalised parameter vectors

SKIN_PALETTE = np.array(
    [
        [0.98, 0.85, 0.75],
        [0.93, 0.76, 0.62],
        [0.83, 0.63, 0.48],
        [0.68, 0.49, 0.35],
        [0.50, 0.34, 0.23],
        [0.33, 0.22, 0.15],
    ],
    dtype=np.float32,
)
HAIR_PALETTE = np.array(
    [
        [0.08, 0.06, 0.05],
        [0.25, 0.16, 0.10],
        [0.45, 0.30, 0.17],
        [0.70, 0.55, 0.35],
        [0.85, 0.75, 0.55],
        [0.55, 0.25, 0.12],
        [0.60, 0.60, 0.60],
    ],
    dtype=np.float32,
)
IRIS_PALETTE = np.array(
    [[0.35, 0.20, 0.10], [0.25, 0.35, 0.55], [0.30, 0.45, 0.30], [0.15, 0.10, 0.05]], dtype=np.float32
)

EYE_STATES = ("open", "blink")
MOUTH_STATES = ("neutral", "smile", "open")


# ----------------------------------------------------------------------------------------------------------------
# Identities


class Identity:
    """One synthetic person: `params` (name -> value), `vector` (normalised [0,1] draws), flags and a texture seed."""

    def __init__(self, index, vector, flags, texture_seed):
        self.index = index
        self.vector = vector
        self.params = {
            name: low + (high - low) * float(value)
            for (name, (low, high)), value in zip(IDENTITY_RANGES.items(), vector, strict=True)
        }
        self.flags = flags
        self.texture_seed = texture_seed


def _draw_identity(index, rng):
    """Draw one candidate identity from `rng`: the continuous vector, bald/beard/moustache flags, blotch seed."""
    vector = rng.random(IDENTITY_DIMENSIONS)
    flags = {"bald": rng.random() < 0.08, "beard": rng.random() < 0.2, "moustache": rng.random() < 0.2}
    return Identity(index, vector, flags, int(rng.integers(2**31)))


def make_identities(seed, indices):
    """Identities for `indices` (ints), deterministic in `(seed, index)`.

    Identity i draws from `default_rng([seed, i, 0])`; a draw closer than `MIN_IDENTITY_DISTANCE` (normalised
    parameter space) to an identity already made in this call is rejected and redrawn from the same generator.
    """
    identities, vectors = [], np.zeros((0, IDENTITY_DIMENSIONS))
    for index in indices:
        rng = np.random.default_rng([seed, index, 0])
        for _ in range(100):
            identity = _draw_identity(index, rng)
            if len(vectors) == 0 or np.min(np.linalg.norm(vectors - identity.vector, axis=1)) >= MIN_IDENTITY_DISTANCE:
                break
        identities.append(identity)
        vectors = np.vstack([vectors, identity.vector])
    return identities


# ----------------------------------------------------------------------------------------------------------------
# Painting the canonical texture


def _palette_colour(palette, position):
    """Linear interpolation along a colour palette at `position` in [0, 1]."""
    scaled = position * (len(palette) - 1)
    low = min(int(scaled), len(palette) - 2)
    return palette[low] + (scaled - low) * (palette[low + 1] - palette[low])


def _soft(signed_distance, width=SOFTNESS):
    """Anti-aliased inside mask: 1 inside (negative distance), 0 outside, a sigmoid edge of `width`."""
    return 1.0 / (1.0 + np.exp(np.clip(signed_distance / width, -30, 30)))


def _rotate(du, dv, angle):
    """Coordinates (du, dv) rotated by -angle, i.e. expressed in a frame tilted by `angle`."""
    cos, sin = np.cos(angle), np.sin(angle)
    return cos * du + sin * dv, -sin * du + cos * dv


def _ellipse(u, v, centre_u, centre_v, radius_u, radius_v, angle=0.0):
    """Approximate signed distance to an ellipse (radians)."""
    x, y = _rotate(u - centre_u, v - centre_v, angle)
    return (np.sqrt((x / radius_u) ** 2 + (y / radius_v) ** 2) - 1.0) * min(radius_u, radius_v)


def _stroke(u, v, centre_u, centre_v, half_length, half_thickness, curvature=0.0, angle=0.0):
    """Signed distance to a bent band (brow, lip, lid line): a box whose centre line is `y = curvature * x**2`."""
    x, y = _rotate(u - centre_u, v - centre_v, angle)
    y = y - curvature * x**2
    return np.maximum(np.abs(x) - half_length, np.abs(y) - half_thickness)


def _paint(texture, mask, colour):
    """Blend `colour` (RGB) into `texture[..., :3]` with coverage `mask`."""
    texture[..., :3] += mask[..., None] * (np.asarray(colour, dtype=np.float32) - texture[..., :3])


class _Region:
    """A window of the texture with its (u, v) coordinates, so features are painted only where they can be."""

    def __init__(self, u_range, v_range):
        columns = np.arange(TEXTURE_WIDTH)
        rows = np.arange(TEXTURE_HEIGHT)
        all_u = -U_MAX + (columns + 0.5) * (2 * U_MAX / TEXTURE_WIDTH)
        all_v = -V_MAX + (rows + 0.5) * (2 * V_MAX / TEXTURE_HEIGHT)
        c0, c1 = np.searchsorted(all_u, u_range)
        r0, r1 = np.searchsorted(all_v, v_range)
        self.slices = (slice(r0, r1), slice(c0, c1))
        self.u, self.v = np.meshgrid(all_u[c0:c1], all_v[r0:r1])


FULL_REGION = _Region((-U_MAX, U_MAX), (-V_MAX, V_MAX))


def _skin_colour(p):
    """The identity's base skin colour."""
    return _palette_colour(SKIN_PALETTE, p["skin_tone"]) * np.array(
        [1.0, 1.0 - 0.08 * p["skin_red"], 1.0 - 0.1 * p["skin_red"]]
    )


def _paint_skin(texture, rng, u, v, skin):
    """Skin albedo blotches (the identity's skin signature) and moles, drawn from the texture's `rng`."""
    for _ in range(rng.integers(4, 9)):  # low-contrast albedo blotches
        centre_u, centre_v, radius = rng.uniform(-1.0, 1.0), rng.uniform(-0.9, 0.9), rng.uniform(0.06, 0.2)
        texture[..., :3] *= (
            1.0 + rng.uniform(-0.07, 0.07) * _soft(_ellipse(u, v, centre_u, centre_v, radius, radius), 0.05)[..., None]
        )
    for _ in range(rng.integers(0, 4)):
        centre_u, centre_v, radius = rng.uniform(-0.8, 0.8), rng.uniform(-0.5, 0.8), rng.uniform(0.012, 0.02)
        _paint(texture, _soft(_ellipse(u, v, centre_u, centre_v, radius, radius)), skin * 0.45)


def _paint_nose_and_brows(texture, p, u, v, skin):
    """Nose bridge, nose sides, nostrils and eyebrows."""
    eye_v, nose_tip = p["eye_v"], p["eye_v"] + p["nose_len"]
    bridge = _soft(_stroke(u, v, 0, (eye_v + nose_tip) / 2, p["nose_w"] * 0.5, (nose_tip - eye_v) / 2), 0.03)
    texture[..., :3] *= (1.0 + 0.06 * p["bridge"] * bridge)[..., None]
    for side in (-1, 1):
        texture[..., :3] *= (
            1.0
            - 0.10
            * _soft(
                _stroke(u, v, side * p["nose_w"] * 0.6, (eye_v + nose_tip) / 2, 0.012, (nose_tip - eye_v) / 2), 0.02
            )
        )[..., None]
        _paint(
            texture,
            _soft(_ellipse(u, v, side * p["nose_w"] * 0.55, nose_tip, p["nostril"] * 1.4, p["nostril"])),
            skin * 0.35,
        )
        brow_v = eye_v - p["eye_h"] - p["brow_gap"]
        brow = _stroke(
            u, v, side * p["eye_sep"], brow_v, p["brow_len"], p["brow_thick"], -p["brow_arch"], side * p["brow_tilt"]
        )
        _paint(texture, 0.85 * _soft(brow), _palette_colour(HAIR_PALETTE, p["hair_color"]) * 0.8)


def _paint_hair(texture, p, flags, u, v):
    """Beard, scalp and side hair (or the side hair only, half covering, when bald)."""
    hair = _palette_colour(HAIR_PALETTE, p["hair_color"])
    if flags["beard"]:
        beard_top = p["mouth_v"] - 0.10 - 0.35 * np.clip(np.abs(u) - 0.15, 0, 1)
        _paint(texture, p["beard_density"] * _soft(beard_top - v, 0.03) * _soft(np.abs(u) - 1.25, 0.05), hair)
    hairline = p["hairline"] + 0.3 * p["hair_curve"] * u**2
    coverage = _soft(v - hairline, 0.02)
    side = _soft((1.45 - 0.45 * p["side_cover"]) - np.abs(u), 0.04) * _soft(v - 0.25, 0.05)
    coverage = np.maximum(coverage, side)
    if flags["bald"]:
        coverage = 0.5 * side
    texture[..., :3] = (
        texture[..., :3] * (1 - coverage[..., None])
        + coverage[..., None] * hair * (1.0 + 0.08 * np.sin(45 * u + 9 * v))[..., None]
    )


def _paint_base(identity):
    """The texture without eyes and mouth: skin, blotches, moles, nose, brows, beard, hair, jaw/chin cut-out (alpha)."""
    p = identity.params
    u, v = FULL_REGION.u, FULL_REGION.v
    texture = np.ones((TEXTURE_HEIGHT, TEXTURE_WIDTH, 4), dtype=np.float32)
    skin = _skin_colour(p)
    texture[..., :3] = skin
    _paint_skin(texture, np.random.default_rng(identity.texture_seed), u, v, skin)
    _paint_nose_and_brows(texture, p, u, v, skin)
    _paint_hair(texture, p, identity.flags, u, v)
    jaw_limit = np.pi / 2 - 1.1 * p["jaw"] * np.clip(v - 0.25, 0, None)
    texture[..., 3] = _soft(np.abs(u) - jaw_limit, 0.03) * _soft(v - p["chin_v"], 0.03)
    return texture


def _eye_patch(identity, base, state):
    """Copy of the eye window of `base` with both eyes painted in `state`."""
    p = identity.params
    region = _Region((-0.8, 0.8), (p["eye_v"] - 0.12, p["eye_v"] + 0.1))
    u, v = region.u, region.v
    patch = base[region.slices].copy()
    iris_colour = _palette_colour(IRIS_PALETTE, p["iris_color"])
    for side in (-1, 1):
        centre_u, tilt = side * p["eye_sep"], side * p["eye_tilt"]
        if state == "open":
            _paint(patch, _soft(_ellipse(u, v, centre_u, p["eye_v"], p["eye_w"], p["eye_h"], tilt)), (0.93, 0.92, 0.9))
            iris_radius = p["eye_h"] * p["iris_r"] * 1.6
            _paint(patch, _soft(_ellipse(u, v, centre_u, p["eye_v"], iris_radius, iris_radius)), iris_colour)
            _paint(
                patch, _soft(_ellipse(u, v, centre_u, p["eye_v"], iris_radius * 0.45, iris_radius * 0.45)), (0.03,) * 3
            )
            lid_v = p["eye_v"] - p["eye_h"]
        else:
            lid_v = p["eye_v"]
        lid = _stroke(u, v, centre_u, lid_v, p["eye_w"], 0.006, 25 * p["eye_h"], tilt)
        _paint(patch, _soft(lid), (0.12, 0.08, 0.07))
    return region.slices, patch


def _mouth_patch(identity, base, state):
    """Copy of the mouth window of `base` with lips (and moustache) painted in expression `state`."""
    p = identity.params
    region = _Region((-0.5, 0.5), (p["mouth_v"] - 0.16, p["mouth_v"] + 0.14))
    u, v = region.u, region.v
    patch = base[region.slices].copy()
    lip_colour = _skin_colour(p) * (0.8 - 0.15 * p["lip_color"]) + np.array([0.12, 0.0, 0.02]) * p["lip_color"]
    curve = p["mouth_curve"] - (3.0 if state == "smile" else 0.0)
    width = p["mouth_w"] * (1.15 if state == "smile" else 1.0)
    gap = 0.04 if state == "open" else 0.0
    upper = _stroke(u, v, 0, p["mouth_v"] - p["lip_up"] - gap / 2, width, p["lip_up"], curve)
    lower = _stroke(u, v, 0, p["mouth_v"] + p["lip_low"] + gap / 2, width * 0.9, p["lip_low"], curve)
    _paint(patch, _soft(np.minimum(upper, lower)), lip_colour)
    if state == "open":
        _paint(patch, _soft(_ellipse(u, v, 0, p["mouth_v"], width * 0.8, gap / 2 + 0.005)), (0.15, 0.05, 0.05))
    _paint(patch, _soft(_stroke(u, v, 0, p["mouth_v"], width, 0.004, curve)), lip_colour * 0.5)
    if identity.flags["moustache"]:
        moustache = _stroke(u, v, 0, p["mouth_v"] - 2 * p["lip_up"] - gap / 2 - 0.03, width * 1.05, 0.02, -1.0)
        _paint(patch, 0.9 * _soft(moustache, 0.012), _palette_colour(HAIR_PALETTE, p["hair_color"]))
    return region.slices, patch


class IdentityTextures:
    """The painted textures of one identity: the base and the eye/mouth patches of every expression state."""

    def __init__(self, identity):
        self.identity = identity
        self.base = _paint_base(identity)
        self.eyes = {state: _eye_patch(identity, self.base, state) for state in EYE_STATES}
        self.mouths = {state: _mouth_patch(identity, self.base, state) for state in MOUTH_STATES}

    def texture(self, eye_state, mouth_state):
        """The full RGBA texture for one expression."""
        texture = self.base.copy()
        for slices, patch in (self.eyes[eye_state], self.mouths[mouth_state]):
            texture[slices] = patch
        return texture


# ----------------------------------------------------------------------------------------------------------------
# Rendering one image


def _rotation(yaw, pitch, roll):
    """Rotation matrix (head frame -> camera frame) for angles in radians: roll about z, pitch about x, yaw about y."""
    cy, sy, cp, sp, cr, sr = np.cos(yaw), np.sin(yaw), np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    around_y = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    around_x = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    around_z = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return around_z @ around_x @ around_y


def _background(rng, nuisance, size):
    """A flat, gradient or block-noise background (HxWx3 float in [0,1]); plain grey at nuisance 0."""
    grey = np.full((size, size, 3), 0.5, dtype=np.float32)
    if rng.random() >= nuisance:
        return grey + (rng.uniform(-0.25, 0.25, 3) * nuisance).astype(np.float32)
    kind = rng.integers(3)
    colour_a, colour_b = rng.uniform(0.05, 0.95, 3), rng.uniform(0.05, 0.95, 3)
    if kind == 0:
        return grey * 0 + colour_a.astype(np.float32)
    if kind == 1:
        angle = rng.uniform(0, 2 * np.pi)
        ramp = np.linspace(-1, 1, size)
        t = (np.cos(angle) * ramp[None, :] + np.sin(angle) * ramp[:, None]) * 0.5 + 0.5
        return (colour_a + t[..., None] * (colour_b - colour_a)).astype(np.float32)
    blocks = rng.uniform(0.05, 0.95, (int(rng.integers(3, 9)),) * 2 + (3,)).astype(np.float32)
    return cv2.resize(blocks, (size, size), interpolation=cv2.INTER_NEAREST)


def _occlusion_masks(identity, u, v, rng, nuisance):
    """Albedo overrides for glasses / sunglasses / a surgical mask, as a list of (coverage HxW, RGB colour)."""
    p, overrides = identity.params, []
    if rng.random() < 0.12 * nuisance:
        dark = rng.random() < 0.4
        lens = np.zeros_like(u)
        ring = np.zeros_like(u)
        for side in (-1, 1):
            distance = _ellipse(u, v, side * p["eye_sep"], p["eye_v"], p["eye_w"] * 1.6, p["eye_h"] * 2.6)
            lens = np.maximum(lens, _soft(distance))
            ring = np.maximum(ring, _soft(np.abs(distance) - 0.012))
        if dark:
            overrides.append((lens, rng.uniform(0.0, 0.15, 3)))
        overrides.append(
            (
                np.maximum(ring, _soft(_stroke(u, v, 0, p["eye_v"] - 0.02, p["eye_sep"] * 0.5, 0.01))),
                rng.uniform(0.0, 0.5, 3),
            )
        )
    if rng.random() < 0.08 * nuisance:
        top = p["eye_v"] + p["nose_len"] * 0.75
        overrides.append((_soft(top - v, 0.02) * _soft(np.abs(u) - 1.35, 0.03), (0.75, 0.85, 0.92)))
    return overrides


def _camera(image, rng, nuisance):
    """Blur, down-up-sampling and sensor noise (each with a probability scaled by `nuisance`)."""
    size = image.shape[0]
    if rng.random() < 0.4 * nuisance:
        image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3 * nuisance:
        small = int(rng.integers(28, 81))
        image = cv2.resize(cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA), (size, size))
    return image + rng.normal(0, rng.uniform(0, 0.03) * nuisance, image.shape).astype(np.float32)


def _draw_pose(rng, n, size):
    """The pose and expression of one image: `(rotation, scale, shift, eye state, mouth state)`."""
    yaw = np.clip(rng.normal(0, np.radians(17)) * n, -np.radians(40), np.radians(40))
    rotation = _rotation(yaw, rng.normal(0, np.radians(9)) * n, rng.normal(0, np.radians(5)) * n)
    scale = 1.0 + rng.normal(0, 0.05) * n
    shift = rng.normal(0, 2.0 / (size / 2), 2) * n + np.array([0.0, 0.08])
    eye_state = "blink" if rng.random() < 0.1 * n else "open"
    mouth_draw = rng.random()
    mouth_state = "smile" if mouth_draw < 0.3 * n else "open" if mouth_draw < 0.45 * n else "neutral"
    return rotation, scale, shift, eye_state, mouth_state


def _ray_cast(p, rotation, scale, shift, size):
    """Ray-cast the head ellipsoid x²/a² + y²/b² + z²/c² = 1 along the camera's z axis, one ray per pixel.

    A camera point (x, y, depth) is (x, y, 0) + depth·(0, 0, 1); in the head frame it is R^T of that, divided by
    scale. Returns `(x, y, u, v, normal, coverage)`: the pixel grid (size, size), the texture coordinates of the
    hit points, the unit surface normals (size, size, 3) and the soft silhouette factor (size, size).
    """
    grid = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1) / np.float32(FACE_ZOOM)
    x, y = np.meshgrid(((grid - shift[0]) / scale).astype(np.float32), ((grid - shift[1]) / scale).astype(np.float32))
    inverse_axes = (1.0 / np.array([p["head_a"], p["head_b"], p["head_c"]])).astype(np.float32)
    rotation = rotation.astype(np.float32)
    origin = [(rotation[0, i] * x + rotation[1, i] * y) * inverse_axes[i] for i in range(3)]
    direction = rotation[2] * inverse_axes / np.float32(scale)
    a = float(np.sum(direction**2))
    b = 2 * (origin[0] * direction[0] + origin[1] * direction[1] + origin[2] * direction[2])
    c = origin[0] ** 2 + origin[1] ** 2 + origin[2] ** 2 - 1
    discriminant = np.maximum(b * b - 4 * a * c, 0)
    depth = (np.sqrt(discriminant) - b) / (2 * a)
    on_sphere = [origin[i] + depth * direction[i] for i in range(3)]  # the hit point scaled to the unit sphere
    u = np.arctan2(on_sphere[0], on_sphere[2])
    v = np.arcsin(np.clip(on_sphere[1], -1, 1))
    normal = np.stack([on_sphere[i] * inverse_axes[i] for i in range(3)], -1) @ rotation.T
    normal /= np.sqrt(np.sum(normal**2, -1, keepdims=True)) + 1e-9
    return x, y, u, v, normal, np.clip(np.sqrt(discriminant) / a / 0.05, 0, 1)


def _shaded_face(textures, rng, n, pose, hits):
    """The lit face colours (size, size, 3), its alpha and the light colour, for the ray-cast `hits`."""
    _, _, _, eye_state, mouth_state = pose
    _, _, u, v, normal, silhouette = hits
    texture = textures.texture(eye_state, mouth_state)
    map_x = (u + U_MAX) / (2 * U_MAX) * TEXTURE_WIDTH - 0.5
    map_y = (v + V_MAX) / (2 * V_MAX) * TEXTURE_HEIGHT - 0.5
    sampled = cv2.remap(texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    albedo, alpha = sampled[..., :3], sampled[..., 3] * silhouette
    for coverage, colour in _occlusion_masks(textures.identity, u, v, rng, n):
        albedo += coverage[..., None] * (np.asarray(colour, dtype=np.float32) - albedo)
    light = np.array([rng.normal(0, 0.75 * n), rng.normal(-0.2, 0.55 * n), 1.0])
    light /= np.linalg.norm(light)
    ambient = 0.35 + rng.uniform(-0.1, 0.1) * n
    light_colour = 1.0 + rng.normal(0, 0.06, 3) * n
    shading = ambient + (1 - ambient) * np.clip(normal @ light, 0, None)
    return albedo * shading[..., None] * light_colour, alpha, light_colour


def _photometric(image, rng, n):
    """Gamma, contrast, brightness, colour cast and (sometimes) greyscale of a 0..1 float image."""
    gamma = np.exp(rng.normal(0, 0.25) * n)
    image = np.clip(image, 0, 1) ** gamma
    image = (image - 0.5) * (1 + rng.normal(0, 0.2) * n) + 0.5 + rng.normal(0, 0.08) * n
    image = image * (1 + rng.normal(0, 0.08, 3) * n)  # colour cast, so colour alone cannot identify a person
    if rng.random() < 0.1 * n:
        image = np.repeat(image.mean(-1, keepdims=True), 3, -1)
    return image


def render_face(textures, rng, nuisance=0.5, size=IMAGE_SIZE):
    """Render one image of `textures.identity` with nuisances drawn from `rng`; returns an HxWx3 uint8 RGB array."""
    p, n = textures.identity.params, float(nuisance)
    pose = _draw_pose(rng, n, size)
    hits = _ray_cast(p, *pose[:3], size)
    face, alpha, light_colour = _shaded_face(textures, rng, n, pose, hits)
    x, y = hits[:2]
    image = _background(rng, n, size)
    neck = _soft(np.abs(x) - 0.42 * p["head_a"], 0.01) * _soft(0.3 - y, 0.01)
    image += neck[..., None] * (_skin_colour(p) * 0.7 * light_colour - image)
    image += alpha[..., None] * (face - image)
    if rng.random() < 0.15 * n:  # a foreign object in front of the face
        blob = _soft(
            _ellipse(x, y, *rng.uniform(-0.8, 0.8, 2), *rng.uniform(0.1, 0.35, 2), rng.uniform(0, np.pi)), 0.01
        )
        image += blob[..., None] * (rng.uniform(0, 1, 3).astype(np.float32) - image)
    image = _camera(_photometric(image, rng, n).astype(np.float32), rng, n)
    return np.clip(image * 255 + 0.5, 0, 255).astype(np.uint8)


def encode_jpeg(image, rng, nuisance):
    """JPEG bytes of an RGB uint8 image; with probability 0.5·nuisance a low quality in [30, 90], else 95."""
    quality = int(rng.integers(30, 91)) if rng.random() < 0.5 * nuisance else 95
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise RuntimeError("cv2 could not encode a synthetic image")
    return encoded.tobytes()


def render_identity_images(identity, seed, num_images, nuisance=0.5, size=IMAGE_SIZE):
    """JPEG bytes of images 0..num_images-1 of `identity`; image k uses `default_rng([seed, identity.index, 1 + k])`."""
    textures = IdentityTextures(identity)
    images = []
    for k in range(num_images):
        rng = np.random.default_rng([seed, identity.index, 1 + k])
        images.append(encode_jpeg(render_face(textures, rng, nuisance, size), rng, nuisance))
    return images


# ----------------------------------------------------------------------------------------------------------------
# Data sets


def _render_task(task):
    """Worker entry point: `(identity, seed, num_images, nuisance, folder or None)` -> (index, JPEG bytes list).

    With a folder the images are written there and the returned list is empty (nothing to send back).
    """
    identity, seed, num_images, nuisance, folder = task
    images = render_identity_images(identity, seed, num_images, nuisance)
    if folder is None:
        return identity.index, images
    class_dir = os.path.join(folder, str(identity.index))
    os.makedirs(class_dir, exist_ok=True)
    for k, data in enumerate(images):
        write_bytes_atomic(os.path.join(class_dir, f"{k}.jpg"), data)
    return identity.index, []


def render_identities(seed, indices, images_per_id, nuisance=0.5, folder=None, workers=None, desc="synthetic faces"):
    """Render `images_per_id` JPEGs of each identity in `indices`, in `workers` processes (default: all cores).

    With `folder`, writes `folder/<index>/<k>.jpg` and returns `{index: []}`; without, returns
    `{index: [jpeg bytes, ...]}`. The images do not depend on `workers`.
    """
    identities = make_identities(seed, indices)
    tasks = [(identity, seed, images_per_id, nuisance, folder) for identity in identities]
    workers = workers or os.cpu_count() or 1
    if workers == 1:
        results = map(_render_task, tasks)
        return dict(tqdm(results, total=len(tasks), desc=desc, unit="id"))
    with ProcessPoolExecutor(workers) as pool:
        return dict(tqdm(pool.map(_render_task, tasks, chunksize=4), total=len(tasks), desc=desc, unit="id"))


def make_pairs(indices, images_per_id, num_pairs, rng):
    """`num_pairs` distinct same-identity pairs and `num_pairs` distinct different-identity pairs, shuffled.

    Returns `(pairs, issame)` with pairs as `((index, k), (index, k))`.
    """
    indices = list(indices)
    positives, negatives = set(), set()
    if num_pairs > len(indices) * images_per_id * (images_per_id - 1) // 2:
        raise ValueError(f"cannot draw {num_pairs} distinct positive pairs from {len(indices)}x{images_per_id} images")
    while len(positives) < num_pairs:
        person = indices[rng.integers(len(indices))]
        first, second = sorted(rng.choice(images_per_id, 2, replace=False).tolist())
        positives.add(((person, first), (person, second)))
    while len(negatives) < num_pairs:
        first, second = rng.choice(len(indices), 2, replace=False)
        negatives.add(
            ((indices[first], int(rng.integers(images_per_id))), (indices[second], int(rng.integers(images_per_id))))
        )
    labelled = [(pair, True) for pair in sorted(positives)] + [(pair, False) for pair in sorted(negatives)]
    order = rng.permutation(len(labelled))
    return [labelled[i][0] for i in order], [labelled[i][1] for i in order]


def build_demo(
    out_dir,
    seed=0,
    train_ids=400,
    images_per_id=12,
    test_ids=100,
    test_images_per_id=10,
    num_pairs=3000,
    nuisance=0.5,
    workers=None,
):
    """Write the demo data set: `out_dir/train/<id>/<k>.jpg` and `out_dir/val.bin` of unseen identities.

    Training identities are 0..train_ids-1 drawn with `seed`; test identities are `train_ids..` drawn with
    `seed + 1` (disjoint seeds and ids). `val.bin` holds `num_pairs` positive and `num_pairs` negative pairs.
    Returns `(train folder, bin path)`.
    """
    from bin_files import save_bin

    train_dir, bin_path = os.path.join(out_dir, "train"), os.path.join(out_dir, "val.bin")
    render_identities(seed, range(train_ids), images_per_id, nuisance, train_dir, workers, "train identities")
    test_indices = range(train_ids, train_ids + test_ids)
    test_images = render_identities(
        seed + 1, test_indices, test_images_per_id, nuisance, None, workers, "test identities"
    )
    pairs, issame = make_pairs(test_indices, test_images_per_id, num_pairs, np.random.default_rng([seed, 2**31]))
    bins = [test_images[person][k] for pair in pairs for person, k in pair]
    save_bin(bin_path, bins, issame)
    return train_dir, bin_path


# ----------------------------------------------------------------------------------------------------------------
# Baseline


def pixel_verification_accuracy(images_a, images_b, issame):
    """Best-threshold verification accuracy of raw pixels (grey, mean-centred, cosine) on pairs of uint8 images.

    `images_a`, `images_b`: (N, H, W, 3) arrays; `issame`: N bools. This is the shortcut baseline a trained model
    must beat by far (about 0.6-0.7 on `nuisance=0.5` data).
    """

    def features(images):
        grey = np.asarray(images, dtype=np.float32).mean(-1).reshape(len(images), -1)
        grey -= grey.mean(1, keepdims=True)
        return grey / (np.linalg.norm(grey, axis=1, keepdims=True) + 1e-9)

    scores = np.sum(features(images_a) * features(images_b), axis=1)
    issame = np.asarray(issame, dtype=bool)
    thresholds = np.concatenate([[-np.inf], np.sort(scores)])
    return max(np.mean((scores > threshold) == issame) for threshold in thresholds)


# ----------------------------------------------------------------------------------------------------------------
# IJB-B / IJB-C layout

IJB_GALLERY_NAMES = {"IJBB": ("S1", "S2"), "IJBC": ("G1", "G2")}  # the 1:N gallery file suffixes of each subset
IJB_CSV_HEADER = "TEMPLATE_ID,SUBJECT_ID,FILENAME"


def _ijb_paths(out_dir, subset):
    """The files of an IJB layout, named as `IJB_evals.meta_file_paths` and `gallery_probe_file_paths` read them."""
    meta, lower = os.path.join(out_dir, subset, "meta"), subset.lower()
    first, second = IJB_GALLERY_NAMES[subset]
    return {
        "images": os.path.join(out_dir, subset, "loose_crop"),
        "media": os.path.join(meta, f"{lower}_face_tid_mid.txt"),
        "landmarks": os.path.join(meta, f"{lower}_name_5pts_score.txt"),
        "pairs": os.path.join(meta, f"{lower}_template_pair_label.txt"),
        "gallery_1": os.path.join(meta, f"{lower}_1N_gallery_{first}.csv"),
        "gallery_2": os.path.join(meta, f"{lower}_1N_gallery_{second}.csv"),
        "probe": os.path.join(meta, f"{lower}_1N_probe_mixed.csv"),
    }


def _ijb_image_name(subject, k):
    """File name of image k of `subject` in `loose_crop/`."""
    return f"{subject}_{k}.jpg"


def _ijb_image_rows(indices, templates_per_id, images_per_template, rng):
    """One `(file name, subject, template position, template id, media id)` per image, in file order.

    Subject `i`'s image k is `<i>_<k>.jpg`; its template t (ids 1, 2, ... over all subjects) holds images
    `t·P … t·P + P − 1` (P = `images_per_template`), cut by `rng` into one media or, with probability 1/2 when
    P ≥ 2, two medias at a random split point. Media ids are 1, 2, ... over all templates.
    """
    rows, template_id, media_id = [], 0, 0
    for subject in indices:
        for position in range(templates_per_id):
            template_id += 1
            two_medias = images_per_template >= 2 and rng.random() < 0.5
            split = int(rng.integers(1, images_per_template)) if two_medias else images_per_template
            for image in range(images_per_template):
                if image in (0, split):
                    media_id += 1
                name = _ijb_image_name(subject, position * images_per_template + image)
                rows.append((name, subject, position, template_id, media_id))
    return rows


def _write_text(path, lines):
    """Write `lines` (strings without newline) to `path`, one a line (atomically)."""
    write_text_atomic(path, "".join(line + "\n" for line in lines))


def _check_ijb_sizes(subset, num_ids, templates_per_id, images_per_template, num_pairs):
    """`subset` upper-cased and `num_pairs` (None → every genuine template pair); ValueError on sizes that cannot
    make a layout with genuine pairs, impostor pairs, two galleries and probes."""
    subset = str(subset).upper()
    if subset not in IJB_GALLERY_NAMES:
        raise ValueError(f"subset must be one of {tuple(IJB_GALLERY_NAMES)}, got {subset!r}")
    if num_ids < 2 or templates_per_id < 2 or images_per_template < 1:
        raise ValueError(f"an IJB layout needs num_ids >= 2, templates_per_id >= 2 and images_per_template >= 1, "
                         f"got {num_ids}, {templates_per_id}, {images_per_template}")
    genuine = num_ids * templates_per_id * (templates_per_id - 1) // 2
    num_pairs = genuine if num_pairs is None else int(num_pairs)
    if not 1 <= num_pairs <= genuine:
        raise ValueError(f"num_pairs must be in [1, {genuine}] (the genuine template pairs of {num_ids} subjects x "
                         f"{templates_per_id} templates), got {num_pairs}")
    return subset, num_pairs


def _write_ijb_galleries(paths, rows, first_gallery):
    """The 1:N files: the first template of the subjects in `first_gallery` → gallery 1, of the others → gallery 2,
    every other template → probes; one CSV row per image."""
    groups = {"gallery_1": [], "gallery_2": [], "probe": []}
    for name, subject, position, template, _ in rows:
        group = "probe" if position else "gallery_1" if subject in first_gallery else "gallery_2"
        groups[group].append(f"{template},{subject},{name}")
    for group, lines in groups.items():
        _write_text(paths[group], [IJB_CSV_HEADER, *lines])


def build_ijb_layout(out_dir, subset="IJBB", seed=0, num_ids=40, templates_per_id=3, images_per_template=3,
                     num_pairs=None, nuisance=0.5, first_index=100000, landmark_jitter=1.0, workers=None):
    """Write a synthetic IJB-B / IJB-C data set that `IJB_evals.IJB_test(model, out_dir, subset)` evaluates 1:1
    and 1:N, in place of the licensed data. Returns `out_dir`.

    Subjects are the identities `first_index … first_index + num_ids − 1` rendered with `seed + 1` (like the
    test identities of `build_demo`, so disjoint from training identities `0 …` of any demo set), each with
    `templates_per_id` templates of `images_per_template` images. Files, with `S` = subset and `s` = lower case:

    - `S/loose_crop/<subject>_<k>.jpg`: aligned 112x112 JPEGs, image k of the subject (k < templates·images);
    - `S/meta/s_face_tid_mid.txt`: `name template_id media_id` per image; template ids 1, 2, ...; each template
      is one media or (probability 1/2) two medias, so media pooling is exercised; media ids 1, 2, ...;
    - `S/meta/s_name_5pts_score.txt`: `name x1 y1 … x5 y5 score`: the ArcFace template landmarks (pixels)
      plus a uniform jitter of ±`landmark_jitter` pixels per coordinate, detector score uniform in [0.5, 1);
    - `S/meta/s_template_pair_label.txt`: `template_1 template_2 label`, `num_pairs` genuine pairs (two
      templates of one subject, distinct; default: all of them) and as many impostor pairs, shuffled;
    - 1:N: `S/meta/s_1N_gallery_{S1,S2}.csv` (IJB-B) or `..._{G1,G2}.csv` (IJB-C): the first template of the
      first `num_ids // 2` subjects, resp. of the others (disjoint subjects); `s_1N_probe_mixed.csv`: every
      other template, so each probe is mated in exactly one gallery. Header `TEMPLATE_ID,SUBJECT_ID,FILENAME`,
      one row per image.

    Deterministic: images depend only on `seed`, `first_index`, `num_ids`, the image counts and `nuisance` (not
    on `workers`; see `make_identities`, `render_identity_images`); media splits, landmarks and scores on
    `default_rng([seed, 2**31 + 1])`; pairs on `default_rng([seed, 2**31 + 2])`. The subset changes only the
    file names. Defaults (40 x 3 x 3 = 360 images, 120 + 120 pairs) take about 5 s
    (rendering: about 0.13 s per subject of 9 images on one core).
    """
    from face_align import ARCFACE_TEMPLATE

    subset, num_pairs = _check_ijb_sizes(subset, num_ids, templates_per_id, images_per_template, num_pairs)
    paths = _ijb_paths(out_dir, subset)  # the folders are made by the atomic writes
    indices = range(first_index, first_index + num_ids)
    images = render_identities(seed + 1, indices, templates_per_id * images_per_template, nuisance, None, workers,
                               f"{subset} identities")
    rng = np.random.default_rng([seed, 2**31 + 1])
    rows = _ijb_image_rows(indices, templates_per_id, images_per_template, rng)
    landmarks = ARCFACE_TEMPLATE.reshape(1, 10) + rng.uniform(-landmark_jitter, landmark_jitter, (len(rows), 10))
    scores = rng.uniform(0.5, 1.0, len(rows))
    for subject, jpegs in images.items():
        for k, data in enumerate(jpegs):
            write_bytes_atomic(os.path.join(paths["images"], _ijb_image_name(subject, k)), data)
    _write_text(paths["media"], [f"{name} {template} {media}" for name, _, _, template, media in rows])
    _write_text(paths["landmarks"], [f"{row[0]} " + " ".join(f"{value:.4f}" for value in points) + f" {score:.4f}"
                                     for row, points, score in zip(rows, landmarks, scores, strict=True)])
    template_ids = {(subject, position): template for _, subject, position, template, _ in rows}
    pairs, issame = make_pairs(indices, templates_per_id, num_pairs, np.random.default_rng([seed, 2**31 + 2]))
    _write_text(paths["pairs"], [f"{template_ids[first]} {template_ids[second]} {int(same)}"
                                 for (first, second), same in zip(pairs, issame, strict=True)])
    _write_ijb_galleries(paths, rows, set(indices[: num_ids // 2]))
    return out_dir
