"""Grayscale eye crops with a gaze label: UnityEyes-like ("synthetic") and MPIIGaze-like ("real").

Gaze convention (MPIIGaze / GazeML, normalised camera space): x right, y down, z away from the
camera. The look vector g points from the eye towards where it looks,

    g = (-cos(pitch) sin(yaw), -sin(pitch), -cos(pitch) cos(yaw)),
    pitch = arcsin(-g_y)          (positive: looking up),
    yaw   = arctan2(-g_x, -g_z)   (positive: the iris moves to the image LEFT).

The projection is orthographic: the iris centre in the image is the eyeball centre plus
``R * (g_x, g_y)`` with R the eyeball radius in pixels, and the iris disc (perpendicular to g)
projects to an ellipse whose minor axis, along (g_x, g_y), is shortened by ``|g_z|``. The upper
lid follows pitch (it lowers when the eye looks down), the lower lid a little less, and the lids
clip sclera and iris. A small head pose (labelled, radians) rolls the eye and slides the lids
against the eyeball. Pixel coordinates in the labels are (x, y) = (column, row) of pixel
centres in the crop; ``eyeball`` gives the centre and radii used to draw it.

Both variants share the anatomy, framed as MPIIGaze's normalised crops and GazeML's UnityEyes
crops frame it: the eye spans about 0.8 of the crop's width, the iris about 0.4 of the eye's,
the upper lid covers the top of the iris, and the gaze range is MPIIGaze's (pitch -20..+9
degrees, yaw +-23). The skin has a lid crease, lashes along the upper lid margin (longer
towards the outer corner) and a fainter line under the lower lid, a shadow of the upper lid
on the eyeball, darker eye corners and sometimes an eyebrow along the top edge.

Synthetic (UnityEyes-like): a clean render: smooth skin shading, a bright sclera, a striated
iris, a dark pupil, a specular glint. Real (MPIIGaze-like, tuned against 2,000 real MPIIGaze
crops with a classifier two-sample test, ``tests/test_sim.py``): skin texture, mostly dark
irises with little pupil contrast, a greyer sclera, heavier lashes and lid shadow, a smooth
illumination gain field, blur, sensor noise, then what MPIIGaze's pipeline does to every crop:
histogram equalisation and JPEG compression.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

BASE_HEIGHT, BASE_WIDTH = 35, 55
LID_POINTS = 8  # landmarks per lid, corner to corner


@dataclass(frozen=True, kw_only=True)
class Options:
    height: int = BASE_HEIGHT
    width: int = BASE_WIDTH
    # Anatomy scales on the drawn ranges (1.0: the eyes every recorded benchmark used). UnityEyes
    # and MPIIGaze eyes have larger irises in narrower openings than ours, cut by both lids:
    # ``iris_scale`` multiplies the iris radius, ``opening`` both lids' distance from the
    # corner line. Labels follow (iris_radius, upper_lid, lower_lid). ``iris_tone`` multiplies
    # the iris's grey level (MPIIGaze's irises are mostly near-black, ours brown to blue).
    iris_scale: float = 1.0
    opening: float = 1.0
    iris_tone: float = 1.0
    # The gaze distribution, as UnityEyes' camera and eye ranges set it: ``pitch_shift`` and
    # ``yaw_shift`` (degrees) move the ranges (positive: up, and towards the image left),
    # ``yaw_scale`` narrows or widens the yaw range, so the drawn labels can match what a real
    # set holds.
    pitch_shift: float = 0.0
    yaw_shift: float = 0.0
    yaw_scale: float = 1.0
    # What gaze pipelines do to every eye crop before a network sees it: MPIIGaze's normalised
    # crops are histogram-equalised, and GazeML equalises UnityEyes crops the same way.
    # ``equalise`` blends a synthetic eye towards its equalised self (0: as drawn, 1: fully
    # equalised); the real variant is always equalised.
    equalise: float = 0.0
    # Lower lashes and the lower lid's thickness: ``lower_lash`` darkens a soft band 1-4 px
    # under the lower lid margin by this fraction of the upper lashes' darkness (0: a bare
    # margin line, the eyes every recorded benchmark before it used). Real MPIIGaze and
    # UnityEyes 2 eyes have a dark lash band there; ours had a thin line and bright skin.
    lower_lash: float = 0.0

    def __post_init__(self) -> None:
        for name, minimum in (("height", 16), ("width", 24)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"gaze {name} must be an integer >= {minimum}, got {value!r}")
        for name, low, high in (
            ("iris_scale", 0.5, 1.5),
            ("opening", 0.5, 1.5),
            ("iris_tone", 0.25, 1.5),
            ("pitch_shift", -15.0, 15.0),
            ("yaw_shift", -15.0, 15.0),
            ("yaw_scale", 0.25, 1.5),
            ("equalise", 0.0, 1.0),
            ("lower_lash", 0.0, 1.0),
        ):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (low <= value <= high)
            ):
                raise ValueError(f"gaze {name} must be a number in [{low}, {high}], got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Geometry:
    """Everything the labels are made of; drawn from the variant-independent stream."""

    pitch: float
    yaw: float
    head_pose: tuple[float, float, float]  # (pitch, yaw, roll) radians
    centre: np.ndarray  # (2,) eyeball centre, px
    radius: float  # eyeball radius R, px
    iris_radius: float  # px
    pupil_ratio: float  # pupil radius / iris radius
    corners: np.ndarray  # (2, 2) [[x, y] image-left, [x, y] image-right]
    upper_open: float  # upper lid apex above the corner line, px
    lower_open: float  # lower lid apex below the corner line, px
    upper_skew: float  # exponent on t that moves the lid apex along the fissure
    lower_skew: float

    @property
    def look_vec(self) -> np.ndarray:
        return look_vector(self.pitch, self.yaw)

    @property
    def iris_centre(self) -> np.ndarray:
        return self.centre + self.radius * self.look_vec[:2]


def look_vector(pitch: float, yaw: float) -> np.ndarray:
    """g for (pitch, yaw), in the convention of the module docstring."""
    cp = np.cos(pitch)
    return np.array([-cp * np.sin(yaw), -np.sin(pitch), -cp * np.cos(yaw)])


def sample_geometry(rng: np.random.Generator, options: Options) -> Geometry:
    scale = min(options.height / BASE_HEIGHT, options.width / BASE_WIDTH)
    # Uniform ranges, biased downwards like MPIIGaze's laptop users (its normalised gaze spans
    # about -20..+8 degrees of pitch and +-22 of yaw: the mean crop has its iris in the middle
    # third).
    pitch = rng.uniform(-0.35, 0.15) + np.radians(options.pitch_shift)
    yaw = rng.uniform(-0.4, 0.4) * options.yaw_scale + np.radians(options.yaw_shift)
    head = (
        float(np.clip(rng.normal(0.0, 0.08), -0.2, 0.2)),
        float(np.clip(rng.normal(0.0, 0.10), -0.25, 0.25)),
        float(np.clip(rng.normal(0.0, 0.06), -0.15, 0.15)),
    )
    # corner to corner: MPIIGaze's normalised crops (and GazeML's UnityEyes crops, 1.5x the
    # interior margin's width) frame the eye at about 0.75-0.85 of the crop's width
    eye_width = scale * rng.uniform(44.0, 50.0)
    radius = eye_width * rng.uniform(0.40, 0.46)
    iris_radius = radius * rng.uniform(0.42, 0.50) * options.iris_scale
    pupil_ratio = rng.uniform(0.30, 0.48)
    jitter = np.clip(rng.normal(0.0, 0.8, 2), -1.5, 1.5) * scale
    centre = np.array([(options.width - 1) / 2, (options.height - 1) / 2]) + jitter
    # The fissure sits a little below the eyeball centre and slides with head yaw / pitch.
    middle = centre + radius * np.array([0.35 * np.sin(head[1]), 0.08 - 0.3 * np.sin(head[0])])
    roll = head[2] + rng.normal(0.0, 0.04)
    axis = np.array([np.cos(roll), np.sin(roll)])
    corners = np.stack([middle - axis * eye_width / 2, middle + axis * eye_width / 2])
    openness = rng.uniform(0.8, 1.15)
    upper_open = radius * openness * max(0.15, 0.42 + 0.6 * np.sin(pitch)) * options.opening
    lower_open = (
        radius * rng.uniform(0.85, 1.1) * (0.40 + 0.28 * max(0.0, -np.sin(pitch))) * options.opening
    )
    return Geometry(
        pitch=float(pitch),
        yaw=float(yaw),
        head_pose=head,
        centre=centre,
        radius=float(radius),
        iris_radius=float(iris_radius),
        pupil_ratio=float(pupil_ratio),
        corners=corners,
        upper_open=float(upper_open),
        lower_open=float(lower_open),
        upper_skew=float(rng.uniform(0.8, 1.25)),
        lower_skew=float(rng.uniform(0.85, 1.2)),
    )


def _bump(t: np.ndarray, skew: float) -> np.ndarray:
    """Lid profile on t in [0, 1] along the fissure: 0 at the corners, 1 at the apex."""
    t = np.clip(t, 0.0, 1.0) ** skew
    t = 4.0 * t * (1.0 - t)
    return np.sqrt(t * np.sqrt(t))  # t ** 0.75, faster


def _fissure_frame(geo: Geometry, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, ...]:
    """(t along the corner line, 0 and 1 at the corners; signed px below the line; eye width)."""
    (x0, y0), (x1, y1) = geo.corners.tolist()
    width = float(np.hypot(x1 - x0, y1 - y0))
    ax, ay = (x1 - x0) / width, (y1 - y0) / width
    dx, dy = x - x0, y - y0
    return (dx * ax + dy * ay) * (1.0 / width), dy * ax - dx * ay, width


def lid_curves(geo: Geometry, points: int = LID_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """(upper, lower) lid landmarks, each (points, 2) [x, y] from the left to the right corner."""
    left, right = geo.corners
    axis = right - left
    normal = np.array([-axis[1], axis[0]]) / np.hypot(*axis)  # points down in the image
    t = np.linspace(0.0, 1.0, points)
    base = left + t[:, None] * axis
    upper = base - (geo.upper_open * _bump(t, geo.upper_skew))[:, None] * normal
    lower = base + (geo.lower_open * _bump(t, geo.lower_skew))[:, None] * normal
    return upper, lower


@dataclass(frozen=True, kw_only=True)
class Look:
    """Appearance parameters; drawn from the variant's own stream."""

    skin: float  # base skin grey level
    sclera: float
    iris: float
    pupil: float
    glint: float  # peak added grey level; 0 for none
    light: tuple[float, float]  # direction of the skin shading gradient
    lash: float  # darkening of the upper lid margin, 0..1
    lash_width: float  # px of the lash band above the upper lid margin
    fold: float  # depth of the lid crease's shadow, 0..1
    brow: float  # darkness of an eyebrow along the top edge, 0 for none
    lid_shadow: float  # darkening of the eyeball just under the upper lid, 0..1


def _sample_look(rng: np.random.Generator, real: bool) -> Look:
    if real:
        # MPIIGaze: mostly dark irises, greyer sclera, weaker and sometimes missing glints.
        # MPIIGaze (infrared-free laptop webcam, normalised): bright skin, a large iris that
        # is mostly dark with little pupil contrast, weaker glints, heavy lash lines.
        iris = rng.uniform(20.0, 70.0) if rng.random() < 0.85 else rng.uniform(70.0, 120.0)
        return Look(
            skin=rng.uniform(150.0, 225.0),
            sclera=rng.uniform(175.0, 230.0),
            iris=iris,
            pupil=rng.uniform(5.0, 25.0),
            glint=rng.uniform(40.0, 120.0) if rng.random() < 0.6 else 0.0,
            light=tuple(rng.normal(0.0, 1.0, 2).tolist()),
            lash=rng.uniform(0.55, 0.8),
            lash_width=rng.uniform(2.5, 4.0),
            fold=rng.uniform(0.25, 0.5),
            brow=rng.uniform(0.2, 0.45) if rng.random() < 0.25 else 0.0,
            lid_shadow=rng.uniform(0.45, 0.7),
        )
    # UnityEyes: rendered skin with soft shading, a textured iris (brown to blue), lashes and
    # a lid crease, a bright sclera and a sharp corneal glint.
    return Look(
        skin=rng.uniform(120.0, 215.0),
        sclera=rng.uniform(200.0, 240.0),
        iris=rng.uniform(40.0, 150.0),
        pupil=rng.uniform(5.0, 15.0),
        glint=rng.uniform(120.0, 200.0),
        light=tuple(rng.normal(0.0, 1.0, 2).tolist()),
        lash=rng.uniform(0.5, 0.7),
        lash_width=rng.uniform(1.5, 2.8),
        fold=rng.uniform(0.25, 0.45),
        brow=rng.uniform(0.3, 0.55) if rng.random() < 0.3 else 0.0,
        lid_shadow=rng.uniform(0.3, 0.5),
    )


@functools.cache
def _grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel-centre coordinates, each (H, W) float32; read-only, shared between calls."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _smooth_field(rng: np.random.Generator, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Zero-mean, unit-ish smooth noise: a (cells x cells) grid upsampled bicubically."""
    grid = rng.standard_normal((cells, cells), np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def skin_texture(rng: np.random.Generator, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """The real variant's pores and wrinkles: (fine grain, a few-pixel mottling), each (H, W)
    float32 around 0, for the skin to be multiplied by 1 + a·grain + b·mottle."""
    grain = cv2.GaussianBlur(rng.standard_normal(shape, np.float32), (0, 0), 0.6)
    return grain, _smooth_field(rng, shape, 12)


def draw(
    geo: Geometry, look: Look, rng: np.random.Generator, *, real: bool, options: Options
) -> np.ndarray:
    """The (H, W) float32 image in grey levels (0..255, unclipped) before sensor effects."""
    height, width = options.height, options.width
    y, x = _grid(height, width)
    t, across, eye_width = _fissure_frame(geo, x, y)
    upper = -geo.upper_open * _bump(t, geo.upper_skew)
    lower = geo.lower_open * _bump(t, geo.lower_skew)
    # Signed distance (px) into the eye opening; the corner terms close it beyond the corners.
    inside = np.minimum.reduce([across - upper, lower - across, t * eye_width, (1 - t) * eye_width])
    aperture = np.clip(inside + 0.5, 0.0, 1.0)

    # Skin: lit from one side, a crease above the upper lid, the lash line on the lid margin.
    lx, ly = look.light
    norm = np.hypot(lx, ly) + 1e-6
    gradient = ((x - width / 2) * lx + (y - height / 2) * ly) / (norm * max(height, width))
    skin = look.skin * (1.0 + 0.35 * gradient)
    # Lid features fade out within a few px beyond the corners instead of running on as lines.
    beyond = np.clip(np.maximum(-t, t - 1.0), 0.0, None) * eye_width
    fade = np.exp(-((beyond / (0.12 * eye_width)) ** 2))
    # The lid fold: a shadowed crease above the upper lid, the lid skin below it lit a little.
    crease_height = upper - 0.32 * geo.radius
    crease = np.exp(-(((across - crease_height) / (0.1 * geo.radius)) ** 2))
    skin *= 1.0 - look.fold * fade * crease
    # Lashes: a dark band on the upper margin, broken into strands, longer towards the outer
    # corner; a fainter line under the lower lid, with the bright rim of the lid margin.
    above_lid = np.clip(upper - across, 0.0, None)
    strands = 0.92 + 0.08 * np.sin(2 * np.pi * 23.0 * t + 3.0 * look.light[0])
    reach = look.lash_width * (0.8 + 0.4 * np.clip(t, 0.0, 1.0))
    band = np.exp(-((above_lid / reach) ** 2)) * (across < upper + 0.8)
    skin *= 1.0 - look.lash * fade * band * strands
    below_lid = np.clip(across - lower, 0.0, None)
    skin *= 1.0 - 0.2 * look.lash * fade * np.exp(-((below_lid / 1.5) ** 2))
    if options.lower_lash > 0:  # lower lashes: a soft band centred 2.5 px under the margin
        band = np.exp(-(((below_lid - 2.5) / 1.5) ** 2))
        skin *= 1.0 - options.lower_lash * look.lash * fade * band
    # the cheek brightens away from the lower lid, the brow ridge above the crease
    skin *= 1.0 + 0.12 * np.tanh(np.clip(across - lower, 0.0, None) / (0.5 * geo.radius))
    if look.brow > 0:  # an eyebrow along the top edge, following the lid's arch
        brow_height = crease_height - 0.55 * geo.radius
        texture = 0.92 + 0.08 * np.sin(2 * np.pi * 23.0 * t + 1.7 * look.light[1])
        skin *= 1.0 - look.brow * texture * np.exp(
            -(((across - brow_height) / (0.22 * geo.radius)) ** 2)
        )
    if real:
        grain, mottle = skin_texture(rng, (height, width))
        skin *= 1.0 + rng.uniform(0.05, 0.10) * grain + rng.uniform(0.03, 0.07) * mottle

    # The eyeball is only seen through the opening: work in its bounding box from here on.
    rows, cols = np.nonzero(aperture.max(axis=1))[0], np.nonzero(aperture.max(axis=0))[0]
    if rows.size == 0:
        return skin
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    x, y, across, upper, aperture = x[box], y[box], across[box], upper[box], aperture[box]

    # Sclera: a shaded sphere, shadowed under the upper lid and darker in the corners (the
    # caruncle at the inner one).
    cx, cy = geo.centre.tolist()
    r2 = ((x - cx) ** 2 + (y - cy) ** 2) / geo.radius**2
    sclera = look.sclera * np.clip(1.0 - 0.35 * r2, 0.45, 1.0)
    tb = t[box]
    sclera *= 1.0 - 0.3 * np.exp(-((np.minimum(tb, 1.0 - tb) / 0.07) ** 2))

    # Iris: the disc perpendicular to g, foreshortened by |g_z| along (g_x, g_y).
    g = geo.look_vec.tolist()
    ix, iy = geo.iris_centre.tolist()
    planar = np.hypot(g[0], g[1])
    ux, uy = (g[0] / planar, g[1] / planar) if planar > 1e-6 else (1.0, 0.0)
    shrink = abs(g[2])
    dx, dy = x - ix, y - iy
    along = (dx * ux + dy * uy) / shrink
    side = -dx * uy + dy * ux
    rho = np.sqrt(along**2 + side**2) / geo.iris_radius  # 1 on the limbus
    theta = np.arctan2(side, along)
    soft = geo.iris_radius * (1.0 + shrink) / 2
    iris_mask = np.clip((1.0 - rho) * soft + 0.5, 0.0, 1.0)
    pupil_mask = np.clip((geo.pupil_ratio - rho) * soft + 0.5, 0.0, 1.0)
    phases = rng.uniform(0.0, 2 * np.pi, 3).tolist()
    striation = (
        0.10 * np.sin(17 * theta + phases[0])
        + 0.07 * np.sin(29 * theta + phases[1])
        + 0.05 * np.sin(7 * theta + 3 * rho + phases[2])
    )
    limbus = 1.0 - 0.45 * np.clip((rho - 0.72) / 0.28, 0.0, 1.0)
    collarette = 1.0 + 0.15 * np.exp(-(((rho - geo.pupil_ratio - 0.12) / 0.08) ** 2))
    iris = look.iris * options.iris_tone * (1.0 + striation) * limbus * collarette
    iris = iris * (1.0 - pupil_mask) + look.pupil * pupil_mask

    eyeball = sclera * (1.0 - iris_mask) + iris * iris_mask
    # the upper lid and its lashes shade the top of the eyeball, iris included
    eyeball = eyeball * (
        1.0 - look.lid_shadow * np.exp(-np.clip(across - upper, 0.0, None) / (0.22 * geo.radius))
    )
    if look.glint > 0:
        gx, gy = ix - 0.35 * geo.iris_radius * lx / norm, iy - 0.35 * geo.iris_radius * ly / norm
        eyeball = eyeball + look.glint * np.exp(-((x - gx) ** 2 + (y - gy) ** 2) / (2 * 0.6**2))
    skin[box] += (eyeball - skin[box]) * aperture
    return skin


def _camera(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MPIIGaze-like capture: gain field, exposure, contrast and gamma, blur, noise."""
    height, width = image.shape
    y, x = _grid(height, width)
    x, y = x * (2.0 / (width - 1)) - 1.0, y * (2.0 / (height - 1)) - 1.0  # [-1, 1]
    a = rng.normal(0.0, 0.25, 5).tolist()
    gain = np.exp(
        a[0] * x + a[1] * y + 0.5 * a[2] * x * x + 0.5 * a[3] * y * y + 0.5 * a[4] * x * y
    )
    # MPIIGaze's normalised crops are bright and contrasty (auto-exposure on a face, skin
    # often clipped white), slightly soft from the normalising warp, with mild sensor noise.
    image = image * gain * rng.uniform(0.75, 1.0)  # not clipped: equalising comes last
    mean = float(image.mean())
    image = mean + (image - mean) * rng.uniform(0.9, 1.15)
    gamma = rng.uniform(0.75, 1.05)
    image = 255.0 * (np.clip(image, 0.0, 255.0) / 255.0) ** gamma + rng.uniform(-6.0, 4.0)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.1))
    shot = np.sqrt(np.clip(image, 1.0, None)) * rng.uniform(0.02, 0.08)
    sigma = rng.uniform(0.4, 1.2) + shot
    return image + sigma * rng.standard_normal(image.shape, np.float32)


def render(
    geometry: np.random.Generator, appearance: np.random.Generator, *, real: bool, options: Options
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({"png": (H, W) uint8}, labels) for one sample."""
    geo = sample_geometry(geometry, options)
    image = draw(geo, _sample_look(appearance, real), appearance, real=real, options=options)
    if real:
        image = _camera(image, appearance)
    png = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    if real:  # MPIIGaze's normalised eye images are histogram-equalised (Zhang et al. 2015)
        png = cv2.equalizeHist(png)  # and published as JPEG
        quality = int(appearance.integers(70, 96))
        _, jpeg = cv2.imencode(".jpg", png, [cv2.IMWRITE_JPEG_QUALITY, quality])
        png = cv2.imdecode(jpeg, cv2.IMREAD_GRAYSCALE)
    elif options.equalise > 0:
        blend = (1.0 - options.equalise) * png + options.equalise * cv2.equalizeHist(png)
        png = np.clip(np.rint(blend), 0, 255).astype(np.uint8)
    upper, lower = lid_curves(geo)
    labels = {
        "gaze": {"pitch": geo.pitch, "yaw": geo.yaw},
        "look_vec": geo.look_vec,
        "head_pose": list(geo.head_pose),
        "landmarks": {
            "iris_centre": geo.iris_centre,
            "eye_corners": geo.corners,
            "upper_lid": upper,
            "lower_lid": lower,
        },
        "eyeball": {
            "centre": geo.centre,
            "radius": geo.radius,
            "iris_radius": geo.iris_radius,
            "pupil_radius": geo.iris_radius * geo.pupil_ratio,
        },
    }
    return {"png": png}, labels
