"""Street views with exact segmentation and depth: GTA-V/SYNTHIA-like ("synthetic") and Cityscapes-like ("real").

A pinhole camera (no roll or pitch; the horizon is the row ``cy``) at 1.3-1.7 m above a flat
ground looks down a straight street: road, kerb-side sidewalks or terrain, rows of vertical
slabs parallel to the street on both sides (building facades, walls, fences, hedges; a second,
taller row further back), sometimes a building across the far end, and sky. On that stage stand
billboards facing the camera (people, poles with signs and traffic lights, trees) and cars,
trucks and buses as boxes (a rear billboard plus the side slab the camera sees). Everything is
drawn into a z-buffer, so segmentation and depth agree per pixel by construction; the result is
the same as painting far to near.

World and camera coordinates (metres): X right, Y down, Z forward (depth along the optical
axis); the camera is at the origin and the ground is the plane Y = camera height. A pixel
(u, v) sees the ray ((u - cx) / f, (v - cy) / f, 1).

Labels: ``seg.png`` holds Cityscapes train ids (``CLASSES``; this simulator uses road, sidewalk,
building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, sky, person, car,
truck and bus); ``depth.png`` is depth in centimetres, 65535 for sky (and nothing else), capped at
65534 for far ground. The JSON names the ontology, the ids present and the camera.

Synthetic: saturated flat colours per class, side-dependent facade shading and a little distance
fog, no sensor. Real: the Cityscapes look, all of it local enough for a fully convolutional
refiner: a greyer, shifted palette per class with a different white balance, an overcast sky,
texture on road, sidewalk tiles, facades and foliage, cast shadows on one side of the street,
an illumination gradient, exposure, vignetting, blur and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from refinery.ontology import IGNORE, TRAIN_NAMES

CLASSES = {name: train_id for train_id, name in enumerate(TRAIN_NAMES)}  # cityscapes-19
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, LIGHT, SIGN = 0, 1, 2, 3, 4, 5, 6, 7
VEGETATION, TERRAIN, SKY, PERSON, CAR, TRUCK, BUS = 8, 9, 10, 11, 13, 14, 15
SKY_DEPTH = 65535  # depth.png value for sky (no surface)
MAX_DEPTH_CM = 65534
FAR_M = 250.0  # the side rows end here
LAMPS = ((220, 40, 30), (240, 180, 30), (40, 200, 80))  # traffic light colours


@dataclass(frozen=True, kw_only=True)
class Options:
    height: int = 256
    width: int = 512

    def __post_init__(self) -> None:
        for name, minimum in (("height", 32), ("width", 64)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"scene {name} must be an integer >= {minimum}, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class Camera:
    f: float  # px, fx = fy
    cx: float
    cy: float  # the horizon row
    height_m: float  # above the ground


@dataclass(frozen=True)
class Slab:
    """A vertical rectangle in the plane X = x, from z0 to z1 and bottom to top metres above ground."""

    x: float
    z0: float
    z1: float
    bottom: float
    top: float
    class_id: int
    style: str  # "facade", "foliage", "wall", "fence", "car"
    phase: float = 0.0  # shape parameter (ragged hedge top)
    body: int = -1  # vehicles: the id shared by its rear board and side slab (one paint colour)


@dataclass(frozen=True)
class Board:
    """A rectangle facing the camera in the plane Z = z, centred on x, bottom to top above ground."""

    x: float
    z: float
    width: float
    bottom: float
    top: float
    class_id: int
    style: str  # "car", "truck", "bus", "person", "pole", "sign", "light", "trunk", "crown"
    phase: float = 0.0  # shape parameter (sign shape, crown outline, stride)
    body: int = -1  # vehicles: see Slab.body


@dataclass(frozen=True, kw_only=True)
class Layout:
    """Everything that decides seg and depth; drawn from the variant-independent stream."""

    camera: Camera
    road_left: float  # road spans X in [-road_left, road_right]
    road_right: float
    kerb_left: float  # sidewalk (or terrain) width beyond the road
    kerb_right: float
    kerb_class: tuple[int, int]  # (left, right): SIDEWALK or TERRAIN
    lanes: tuple[float, ...]  # X of lane lines
    far_end: float | None  # Z of a building across the street, if any
    far_top: float
    slabs: tuple[Slab, ...] = field(default_factory=tuple)
    boards: tuple[Board, ...] = field(default_factory=tuple)


# -- layout -----------------------------------------------------------------------------------


# Front-row segments along the kerb: (class, style, height range m, probability); None: a gap.
_FRONT_ROW = (
    (BUILDING, "facade", (7.0, 30.0), 0.62),
    (VEGETATION, "foliage", (2.0, 6.0), 0.12),
    (WALL, "wall", (1.2, 2.8), 0.08),
    (FENCE, "fence", (1.0, 2.0), 0.08),
    (None, None, None, 0.10),
)
# Vehicle boxes: (style, width, height, length ranges in metres).
_VEHICLES = {
    CAR: ("car", (1.65, 1.95), (1.35, 1.6), (3.9, 4.8)),
    TRUCK: ("truck", (2.2, 2.5), (2.6, 3.4), (6.0, 9.0)),
    BUS: ("bus", (2.5, 2.5), (3.0, 3.4), (10.0, 12.0)),
}


def _side_rows(rng: np.random.Generator, side: int, inner: float) -> list[Slab]:
    """Front row (buildings, walls, fences, hedges, gaps) and a taller back row on one side."""
    slabs = []
    weights = [row[3] for row in _FRONT_ROW]
    z = rng.uniform(-5.0, 3.0)
    while z < FAR_M:
        length = rng.uniform(8.0, 32.0)
        class_id, style, heights, _ = _FRONT_ROW[rng.choice(len(_FRONT_ROW), p=weights)]
        x = side * (inner + rng.uniform(0.0, 2.0))
        if class_id is not None:
            top = rng.uniform(*heights)
            slabs.append(Slab(x, z, z + length, 0.0, top, class_id, style, rng.uniform(0, 6.3)))
        z += length + (rng.uniform(2.0, 10.0) if rng.random() < 0.15 else 0.0)
    back = side * (inner + rng.uniform(8.0, 20.0))
    z = rng.uniform(-5.0, 3.0)
    while z < FAR_M:
        length = rng.uniform(10.0, 40.0)
        if rng.random() < 0.75:
            slab = Slab(back, z, z + length, 0.0, rng.uniform(10.0, 35.0), BUILDING, "facade")
        else:
            top = rng.uniform(6.0, 14.0)
            slab = Slab(back, z, z + length, 0.0, top, VEGETATION, "foliage", rng.uniform(0, 6.3))
        slabs.append(slab)
        z += length
    return slabs


def _vehicle(
    rng: np.random.Generator, x: float, z: float, kind: int, body: int
) -> tuple[Board, Slab]:
    """A vehicle box: the rear face and the side the camera sees (the one nearer X = 0)."""
    style, widths, heights, lengths = _VEHICLES[kind]
    width, height, length = rng.uniform(*widths), rng.uniform(*heights), rng.uniform(*lengths)
    rear = Board(x, z, width, 0.0, height, kind, style, body=body)
    near = x - width / 2 if x > 0 else x + width / 2
    side_style = "car" if kind == CAR else "facade"
    return rear, Slab(near, z, z + length, 0.0, height, kind, side_style, body=body)


def _person(rng: np.random.Generator, x: float, z: float, stride: float) -> Board:
    height = rng.uniform(1.55, 1.95)
    return Board(x, z, 0.36 * height, 0.0, height, PERSON, "person", stride)


def _kerb_props(
    rng: np.random.Generator, side: int, road: float, kerb: float, boards: list, slabs: list
) -> None:
    """Poles with signs and traffic lights, trees, parked cars and people along one kerb."""
    edge = side * (road + 0.4)
    z = rng.uniform(4.0, 15.0)
    spacing = rng.uniform(12.0, 25.0)
    while z < 90.0:
        top = rng.uniform(4.0, 8.0)
        boards.append(Board(edge, z, rng.uniform(0.14, 0.22), 0.0, top, POLE, "pole"))
        draw = rng.random()
        if draw < 0.35:
            low, shape = rng.uniform(2.2, 3.0), rng.integers(0, 3)  # circle, triangle, square
            width = rng.uniform(0.5, 0.75)
            boards.append(Board(edge, z - 0.05, width, low, low + 0.65, SIGN, "sign", shape))
        elif draw < 0.5:
            boards.append(Board(edge - side * 0.2, z - 0.05, 0.35, top - 1.0, top, LIGHT, "light"))
        z += spacing * rng.uniform(0.8, 1.2)
    if rng.random() < 0.5:  # a row of trees
        z = rng.uniform(3.0, 12.0)
        spacing = rng.uniform(7.0, 15.0)
        x = side * (road + kerb * rng.uniform(0.4, 0.7))
        while z < 100.0:
            trunk, radius = rng.uniform(1.8, 3.2), rng.uniform(1.4, 3.0)
            width = rng.uniform(0.25, 0.4)
            boards.append(Board(x, z + 0.05, width, 0.0, trunk + 0.5, VEGETATION, "trunk"))
            crown = trunk + 1.8 * radius
            outline = rng.uniform(0, 6.3)
            boards.append(Board(x, z, 2 * radius, trunk, crown, VEGETATION, "crown", outline))
            z += spacing * rng.uniform(0.8, 1.2)
    if rng.random() < 0.6:  # parked cars
        z = rng.uniform(4.0, 20.0)
        for _ in range(rng.integers(1, 7)):
            x = side * (road - rng.uniform(0.95, 1.15))
            rear, side_slab = _vehicle(rng, x, z, CAR, body=len(boards))
            boards.append(rear)
            slabs.append(side_slab)
            z += rng.uniform(5.5, 9.0)
    for _ in range(rng.integers(0, 5)):
        x = side * (road + rng.uniform(0.4, max(0.5, kerb - 0.3)))
        boards.append(_person(rng, x, rng.uniform(4.0, 45.0), rng.uniform(0.0, 0.12)))


def sample_layout(rng: np.random.Generator, options: Options) -> Layout:
    width, height = options.width, options.height
    camera = Camera(
        f=width * rng.uniform(0.8, 1.0),
        cx=(width - 1) / 2 + rng.normal(0.0, 0.01 * width),
        cy=height * rng.uniform(0.38, 0.48),
        height_m=rng.uniform(1.3, 1.7),
    )
    road_left, road_right = rng.uniform(2.5, 8.0), rng.uniform(2.5, 8.0)
    kerb_left, kerb_right = rng.uniform(1.8, 5.0), rng.uniform(1.8, 5.0)
    kerb_class = tuple(int(SIDEWALK if rng.random() < 0.8 else TERRAIN) for _ in range(2))
    lane_width = rng.uniform(2.8, 3.6)
    lanes = np.arange(-road_left + lane_width, road_right - 1.0, lane_width)
    far_end = rng.uniform(60.0, 200.0) if rng.random() < 0.5 else None
    far_top = rng.uniform(8.0, 30.0)
    slabs = _side_rows(rng, -1, road_left + kerb_left) + _side_rows(rng, 1, road_right + kerb_right)

    boards: list[Board] = []
    _kerb_props(rng, -1, road_left, kerb_left, boards, slabs)
    _kerb_props(rng, 1, road_right, kerb_right, boards, slabs)
    lane_centres = np.arange(-road_left + lane_width / 2, road_right - 1.0, lane_width)
    for _ in range(rng.poisson(2.5)):  # traffic
        kind = CAR if rng.random() < 0.85 else (TRUCK if rng.random() < 0.5 else BUS)
        x = float(rng.choice(lane_centres)) + rng.normal(0.0, 0.2) if len(lane_centres) else 0.0
        if abs(x) < 1.4:
            x = 1.4 * (np.sign(x) or 1.0)  # the camera's own lane stays clear near the camera
        rear, side_slab = _vehicle(rng, x, rng.uniform(8.0, 70.0), kind, body=len(boards))
        boards.append(rear)
        slabs.append(side_slab)
    for _ in range(rng.integers(0, 3)):  # people crossing
        x, z = rng.uniform(-road_left, road_right), rng.uniform(6.0, 40.0)
        boards.append(_person(rng, x, z, rng.uniform(0.05, 0.2)))
    return Layout(
        camera=camera,
        road_left=road_left,
        road_right=road_right,
        kerb_left=kerb_left,
        kerb_right=kerb_right,
        kerb_class=kerb_class,
        lanes=tuple(lanes.round(3).tolist()),
        far_end=far_end,
        far_top=far_top,
        slabs=tuple(slabs),
        boards=tuple(boards),
    )


# -- appearance -------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Look:
    """Colours (RGB, 0..255) and texture strengths; drawn from the variant's own stream."""

    base: np.ndarray  # (19, 3) colour per class id
    sky_top: np.ndarray
    sky_horizon: np.ndarray
    lane: np.ndarray
    window: np.ndarray
    skin: np.ndarray
    texture: np.ndarray  # (19, 2) fine / coarse texture amplitude per class id
    sides: tuple[float, float]  # light on (left, right) facades
    fog_m: float


def _jitter(rng: np.random.Generator, colour, spread: float) -> np.ndarray:
    jittered = np.asarray(colour, np.float32) + rng.normal(0.0, spread, 3).astype(np.float32)
    return np.clip(jittered, 0.0, 255.0)


def _sample_look(rng: np.random.Generator, real: bool) -> Look:
    base = np.zeros((len(CLASSES), 3), np.float32)
    texture = np.zeros((len(CLASSES), 2), np.float32)
    if not real:
        # Game palette: saturated, clean, one colour per class with a little jitter.
        grey = rng.uniform(70.0, 95.0)
        base[ROAD] = _jitter(rng, (grey, grey, grey + 12.0), 4.0)
        base[SIDEWALK] = _jitter(rng, (200, 180, 150), 10.0)
        base[BUILDING] = _jitter(rng, (190, 120, 80), 25.0)
        base[WALL] = _jitter(rng, (170, 160, 140), 10.0)
        base[FENCE] = _jitter(rng, (140, 100, 60), 10.0)
        base[POLE] = _jitter(rng, (120, 120, 130), 8.0)
        base[LIGHT] = _jitter(rng, (40, 40, 40), 5.0)
        base[SIGN] = _jitter(rng, (240, 200, 20), 10.0)
        base[VEGETATION] = _jitter(rng, (50, 150, 40), 12.0)
        base[TERRAIN] = _jitter(rng, (120, 180, 60), 12.0)
        base[PERSON] = _jitter(rng, (200, 60, 60), 30.0)
        base[CAR] = _jitter(rng, (40, 90, 210), 40.0)
        base[TRUCK] = _jitter(rng, (220, 220, 220), 15.0)
        base[BUS] = _jitter(rng, (230, 170, 30), 15.0)
        texture[:, 0] = 0.01
        return Look(
            base=base,
            sky_top=_jitter(rng, (60, 130, 235), 10.0),
            sky_horizon=_jitter(rng, (170, 210, 250), 8.0),
            lane=_jitter(rng, (240, 240, 230), 5.0),
            window=_jitter(rng, (60, 90, 140), 10.0),
            skin=_jitter(rng, (230, 180, 140), 10.0),
            texture=texture,
            sides=(1.0, rng.uniform(0.7, 0.85)),
            fog_m=rng.uniform(300.0, 600.0),
        )
    # Cityscapes: grey asphalt, beige and grey facades, olive foliage, a white overcast sky.
    grey = rng.uniform(95.0, 130.0)
    base[ROAD] = _jitter(rng, (grey + 2.0, grey, grey - 4.0), 4.0)
    base[SIDEWALK] = _jitter(rng, (160, 150, 140), 8.0)
    base[BUILDING] = _jitter(rng, (140, 130, 115), 15.0)
    base[WALL] = _jitter(rng, (170, 168, 160), 8.0)
    base[FENCE] = _jitter(rng, (120, 100, 80), 8.0)
    base[POLE] = _jitter(rng, (75, 78, 80), 6.0)
    base[LIGHT] = _jitter(rng, (45, 45, 40), 5.0)
    base[SIGN] = _jitter(rng, (175, 150, 60), 15.0)
    base[VEGETATION] = _jitter(rng, (75, 95, 50), 8.0)
    base[TERRAIN] = _jitter(rng, (125, 135, 80), 8.0)
    base[PERSON] = _jitter(rng, (60, 55, 60), 15.0)
    base[CAR] = _jitter(rng, (110, 110, 115), 30.0)
    base[TRUCK] = _jitter(rng, (200, 200, 195), 10.0)
    base[BUS] = _jitter(rng, (200, 180, 90), 10.0)
    texture[[ROAD, SIDEWALK, TERRAIN]] = ((0.08, 0.04), (0.05, 0.03), (0.12, 0.08))
    texture[[BUILDING, WALL, FENCE]] = ((0.07, 0.04), (0.06, 0.04), (0.10, 0.04))
    texture[VEGETATION] = (0.30, 0.12)
    texture[[CAR, TRUCK, BUS, PERSON]] = (0.03, 0.02)
    texture[SKY] = (0.0, 0.02)
    texture *= rng.uniform(0.8, 1.25)
    return Look(
        base=base,
        sky_top=_jitter(rng, (185, 200, 215), 12.0),
        sky_horizon=_jitter(rng, (225, 230, 230), 8.0),
        lane=_jitter(rng, (200, 200, 195), 8.0),
        window=_jitter(rng, (70, 75, 80), 8.0),
        skin=_jitter(rng, (190, 150, 125), 10.0),
        texture=texture,
        sides=tuple(rng.permutation([1.0, rng.uniform(0.6, 0.8)])),
        fog_m=rng.uniform(200.0, 400.0),
    )


def _colour(look: Look, class_id: int, tint: np.ndarray, real: bool) -> np.ndarray:
    """An object's colour: the class colour moved by a (3,) standard normal tint.

    Game objects vary freely in hue; real cars, people and facades mostly in brightness.
    """
    varied = class_id in (BUILDING, CAR, PERSON)
    if real:
        shift = (45.0 if varied else 15.0) * tint[0] + 10.0 * tint
    else:
        shift = (50.0 if varied else 20.0) * tint
    return np.clip(look.base[class_id] + shift, 0.0, 255.0)


# -- drawing ----------------------------------------------------------------------------------


class _Canvas:
    """z-buffered RGB / class / depth; a layer is written where it is nearer than what is there."""

    def __init__(self, height: int, width: int):
        # Planar (3, H, W): per-channel operations run over contiguous memory.
        self.rgb = np.zeros((3, height, width), np.float32)
        self.seg = np.full((height, width), SKY, np.uint8)
        self.depth = np.full((height, width), np.inf, np.float32)  # metres along Z

    def paint(self, v0: int, u0: int, mask: np.ndarray, z, class_id, colour) -> None:
        """Write `mask` (h, w) at rows v0.., cols u0..; z and class_id broadcast to (h, w),
        colour is (3,) or (h, w, 3)."""
        h, w = mask.shape
        window = (slice(v0, v0 + h), slice(u0, u0 + w))
        depth = self.depth[window]
        write = mask & (z < depth)
        # copyto broadcasts and skips the gather / scatter of boolean indexing.
        np.copyto(depth, z, where=write)
        np.copyto(self.seg[window], class_id, where=write)
        colour = colour[:, None, None] if colour.ndim == 1 else colour.transpose(2, 0, 1)
        np.copyto(self.rgb[(slice(None), *window)], colour, where=write)


def _ground(
    canvas: _Canvas, layout: Layout, look: Look, rng: np.random.Generator, real: bool
) -> np.ndarray:
    """Road, kerbs and terrain; returns the (H, W) shadow gain for ground pixels."""
    cam = layout.camera
    height, width = canvas.seg.shape
    v0 = int(np.floor(cam.cy)) + 1
    v = np.arange(v0, height, dtype=np.float32)[:, None]  # (h, 1)
    u = np.arange(width, dtype=np.float32)[None, :]  # (1, w)
    z = cam.f * cam.height_m / (v - cam.cy)  # (h, 1)
    x = z * (u - cam.cx) / cam.f  # (h, w)
    left_kerb = -layout.road_left - layout.kerb_left
    right_kerb = layout.road_right + layout.kerb_right
    class_id = np.full(x.shape, TERRAIN, np.uint8)
    class_id[(x >= left_kerb) & (x < -layout.road_left)] = layout.kerb_class[0]
    class_id[(x > layout.road_right) & (x <= right_kerb)] = layout.kerb_class[1]
    road = (x >= -layout.road_left) & (x <= layout.road_right)
    class_id[road] = ROAD
    colour = look.base[class_id]  # (h, w, 3)
    # Lane dashes (3 m of paint every 9 m) and a kerb stone line, both part of their class.
    dashes = (np.mod(z, 9.0) < 3.0) & road
    paint = np.zeros(x.shape, bool)
    for lane in layout.lanes:
        paint |= np.abs(x - lane) < 0.075
    colour[paint & dashes] = look.lane
    kerb_stone = ~road & (
        (np.abs(x + layout.road_left) < 0.15) | (np.abs(x - layout.road_right) < 0.15)
    )
    colour[kerb_stone] = look.base[SIDEWALK] * 1.15
    if real:
        # Paving tiles on sidewalks, anchored to the ground (0.5 m grid, thin joints).
        tiles = (np.mod(x, 0.5) < 0.04) | (np.mod(z, 0.5) < 0.04)
        colour[tiles & (class_id == SIDEWALK)] *= 0.82
    canvas.paint(v0, 0, np.ones(x.shape, bool), z, class_id, colour)

    shadow = np.ones(canvas.seg.shape, np.float32)
    if real:
        # A building row's shadow over the kerb and part of the road on one side; applied later
        # only where the ground stays visible.
        side = -1.0 if rng.random() < 0.5 else 1.0
        reach = rng.uniform(1.0, 6.0)
        edge = (layout.road_left if side < 0 else layout.road_right) - reach
        shadow[v0:] = np.where(side * x > edge, rng.uniform(0.45, 0.65), 1.0)
    return shadow


def _columns(
    cam: Camera, x: float, z0: float, z1: float, width: int
) -> tuple[int, np.ndarray] | None:
    """For the plane X = x: the first column and the depth Z of each column where Z is in [z0, z1]."""
    z0 = max(z0, 0.5)
    if z1 <= z0 or x == 0.0:
        return None
    ends = sorted((cam.cx + cam.f * x / z0, cam.cx + cam.f * x / z1))
    u0, u1 = max(0, int(np.ceil(ends[0]))), min(width - 1, int(np.floor(ends[1])))
    if u1 < u0:
        return None
    u = np.arange(u0, u1 + 1, dtype=np.float32)
    ray = (u - cam.cx) / cam.f
    with np.errstate(divide="ignore"):
        z = np.where(ray * x > 0, x / ray, np.inf)
    return u0, np.clip(z, z0, z1).astype(np.float32)


def _slab(
    canvas: _Canvas, slab: Slab, cam: Camera, look: Look, light: float, colour: np.ndarray
) -> None:
    height, width = canvas.seg.shape
    found = _columns(cam, slab.x, slab.z0, slab.z1, width)
    if found is None:
        return
    u0, z = found
    v_top = cam.cy + cam.f * (cam.height_m - slab.top) / z  # (w,)
    v_bottom = cam.cy + cam.f * (cam.height_m - slab.bottom) / z
    r0 = max(0, int(np.ceil(v_top.min())))
    r1 = min(height - 1, int(np.floor(v_bottom.max())))
    if r1 < r0:
        return
    v = np.arange(r0, r1 + 1, dtype=np.float32)[:, None]  # (h, 1)
    up = cam.height_m - z[None, :] * (v - cam.cy) / cam.f  # (h, w) metres above ground
    along = np.broadcast_to(z[None, :] - slab.z0, up.shape)  # (h, w) metres along the slab
    top = slab.top
    if slab.style == "foliage":
        top = slab.top - 0.6 * (
            1.0 + np.sin(1.3 * along + slab.phase) * np.sin(0.37 * along + 2 * slab.phase)
        )
    mask = (up >= slab.bottom) & (up <= top)
    rgb = np.empty((*mask.shape, 3), np.float32)
    rgb[:] = colour * light
    if slab.style == "car":
        length = slab.z1 - slab.z0
        h = slab.top
        cabin = (
            (up > 0.62 * h)
            & (along > 0.25 * length + (up - 0.62 * h))
            & (along < 0.78 * length - 0.6 * (up - 0.62 * h))
        )
        body = (up > 0.12 * h) & (up <= 0.62 * h)
        wheel = (
            np.minimum((along - 0.18 * length) ** 2, (along - 0.8 * length) ** 2) + (up - 0.3) ** 2
            < 0.32**2
        )
        mask &= cabin | body | wheel
        rgb[cabin] = look.window
        rgb[wheel] = (20.0, 20.0, 20.0)
    elif slab.class_id == BUILDING:
        # Windows on a world-anchored grid: 1.4 m wide every 3 m, 1.5 m tall every 3.2 m floor.
        bays = (np.mod(along, 3.0) > 0.8) & (np.mod(along, 3.0) < 2.2)
        floors = (
            (np.mod(up, 3.2) > 1.0) & (np.mod(up, 3.2) < 2.5) & (up > 3.0) & (up < slab.top - 1.0)
        )
        rgb[bays & floors] = look.window * light
    elif slab.style == "fence":
        rgb[np.mod(along, 0.4) < 0.08] *= 0.7
    canvas.paint(r0, u0, mask, z[None, :], slab.class_id, rgb)


def _board(
    canvas: _Canvas, board: Board, cam: Camera, look: Look, colour: np.ndarray, second: np.ndarray
) -> None:
    height, width = canvas.seg.shape
    z = board.z
    if z < 0.5:
        return
    left = cam.cx + cam.f * (board.x - board.width / 2) / z
    right = cam.cx + cam.f * (board.x + board.width / 2) / z
    top = cam.cy + cam.f * (cam.height_m - board.top) / z
    bottom = cam.cy + cam.f * (cam.height_m - board.bottom) / z
    u0, u1 = max(0, int(np.ceil(left))), min(width - 1, int(np.floor(right)))
    v0, v1 = max(0, int(np.ceil(top))), min(height - 1, int(np.floor(bottom)))
    if u1 < u0 or v1 < v0:
        return
    # Local metric coordinates: a across from the left edge, b down from the top edge.
    a = (
        (np.arange(u0, u1 + 1, dtype=np.float32) - cam.cx) * z / cam.f - (board.x - board.width / 2)
    )[None, :]
    b = (board.top - cam.height_m + (np.arange(v0, v1 + 1, dtype=np.float32) - cam.cy) * z / cam.f)[
        :, None
    ]
    w, h = board.width, board.top - board.bottom
    shape = (v1 - v0 + 1, u1 - u0 + 1)
    a, b = np.broadcast_to(a, shape), np.broadcast_to(b, shape)
    mask = np.ones(shape, bool)
    rgb = np.broadcast_to(colour, (*shape, 3)).copy()
    if board.style == "car":
        inset = 0.12 * w + 0.18 * w * (1.0 - b / (0.4 * h))
        cabin = (b < 0.4 * h) & (a > inset) & (a < w - inset)
        body = (b >= 0.4 * h) & (b < 0.86 * h)
        wheels = (
            (b >= 0.8 * h) & ((a < 0.22 * w) | (a > 0.78 * w)) & ((a > 0.05 * w) & (a < 0.95 * w))
        )
        mask = cabin | body | wheels
        rgb[cabin & (b > 0.06 * h)] = look.window
        lamps = (b > 0.46 * h) & (b < 0.56 * h) & ((a < 0.15 * w) | (a > 0.85 * w))
        rgb[lamps] = (200.0, 30.0, 30.0)
        rgb[wheels & (b >= 0.86 * h)] = (20.0, 20.0, 20.0)
    elif board.style in ("truck", "bus"):
        wheels = (b >= 0.88 * h) & (
            ((a > 0.05 * w) & (a < 0.25 * w)) | ((a > 0.75 * w) & (a < 0.95 * w))
        )
        mask = (b < 0.9 * h) | wheels
        rgb[wheels] = (20.0, 20.0, 20.0)
        glass = (
            (b > 0.1 * h)
            & (b < (0.45 if board.style == "bus" else 0.25) * h)
            & (a > 0.08 * w)
            & (a < 0.92 * w)
        )
        rgb[glass] = look.window
    elif board.style == "person":
        x = a - w / 2
        head = (x / 0.1) ** 2 + ((b - 0.12 * h / 1.75) / 0.12) ** 2 < 1.0
        torso = (b > 0.22 * h / 1.75) & (b < 0.52 * h) & (np.abs(x) < 0.19)
        arms = (b > 0.25 * h / 1.75) & (b < 0.48 * h) & (np.abs(x) < 0.27)
        stride = board.phase * (b - 0.5 * h) / (0.5 * h)
        legs = (b >= 0.5 * h) & (
            np.minimum(np.abs(x - 0.09 - stride), np.abs(x + 0.09 + stride)) < 0.075
        )
        mask = head | torso | arms | legs
        rgb[head] = look.skin
        rgb[legs] = second
    elif board.style == "sign":
        centre = (a - w / 2) / (w / 2), (b - h / 2) / (h / 2)
        if int(board.phase) == 0:
            mask = centre[0] ** 2 + centre[1] ** 2 < 1.0
        elif int(board.phase) == 1:
            mask = (centre[1] > -0.9) & (np.abs(centre[0]) < (1.0 - centre[1]) / 2)  # triangle
        rgb[np.abs(centre[1]) < 0.25] = second
    elif board.style == "light":
        lamp = (np.mod(b / h * 3.0, 1.0) - 0.5) ** 2 + ((a / w) - 0.5) ** 2 < 0.09
        rgb[lamp] = second
    elif board.style == "crown":
        x, y = (a - w / 2) / (w / 2), (b - h / 2) / (h / 2)
        angle = np.arctan2(y, x)
        ragged = (
            1.0
            + 0.12 * np.sin(5 * angle + board.phase)
            + 0.08 * np.sin(11 * angle + 2 * board.phase)
        )
        mask = x**2 + y**2 < ragged**2 * 0.95
        rgb = rgb * (1.0 - 0.25 * np.clip(y, 0.0, 1.0))[..., None]
    elif board.style == "trunk":
        rgb[:] = (90.0, 70.0, 50.0)
    canvas.paint(v0, u0, mask, z, board.class_id, rgb)


def _far_end(canvas: _Canvas, layout: Layout, colour: np.ndarray) -> None:
    cam = layout.camera
    height, width = canvas.seg.shape
    z = layout.far_end
    v0 = max(0, int(np.ceil(cam.cy + cam.f * (cam.height_m - layout.far_top) / z)))
    v1 = min(height - 1, int(np.floor(cam.cy + cam.f * cam.height_m / z)))
    if v1 >= v0:
        mask = np.ones((v1 - v0 + 1, width), bool)
        canvas.paint(v0, 0, mask, z, BUILDING, colour)


def _sky(canvas: _Canvas, look: Look, cam: Camera) -> None:
    height = canvas.seg.shape[0]
    rows = np.clip(np.arange(height, dtype=np.float32) / max(cam.cy, 1.0), 0.0, 1.0)[:, None, None]
    sky = look.sky_top * (1.0 - rows) + look.sky_horizon * rows  # (H, 1, 3)
    np.copyto(canvas.rgb, sky.transpose(2, 0, 1), where=canvas.seg == SKY)


def _smooth(rng: np.random.Generator, shape: tuple[int, int], cells: tuple[int, int]) -> np.ndarray:
    """Unit-ish normal noise on a coarse grid of `cells`, upsampled bicubically to `shape`."""
    grid = rng.standard_normal(cells, np.float32)
    return cv2.resize(grid, (shape[1], shape[0]), interpolation=cv2.INTER_CUBIC)


def _finish(
    canvas: _Canvas, look: Look, shadow: np.ndarray, rng: np.random.Generator, real: bool
) -> np.ndarray:
    """Fog and (real) texture, lighting and the camera; returns (H, W, 3) uint8 RGB."""
    height, width = canvas.seg.shape
    rgb = canvas.rgb  # (3, H, W)
    # Sky has depth inf, so exp(-inf) = 0 and the sky would be all fog: mask it out.
    fog = (1.0 - np.exp(canvas.depth * np.float32(-1.0 / look.fog_m))) * (canvas.seg != SKY)
    rgb += (look.sky_horizon[:, None, None] - rgb) * fog
    if real:
        # Per-class texture strength by table lookup: (256,) tables indexed by the seg ids.
        tables = np.zeros((256, 2), np.float32)
        tables[: len(look.texture)] = look.texture
        fine = _smooth(rng, (height, width), (height // 2, width // 2)) * 1.3  # grain of ~2 px
        coarse = _smooth(rng, (height, width), (height // 8, width // 8))
        texture = (
            1.0
            + cv2.LUT(canvas.seg, tables[:, 0]) * fine
            + cv2.LUT(canvas.seg, tables[:, 1]) * coarse
        )
        # Illumination: cast shadows on the ground, a gradient over the frame, vignetting.
        x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
        y = np.linspace(-1.0, 1.0, height, dtype=np.float32)[:, None]
        slope = rng.normal(0.0, 0.15, 2).tolist()  # Python floats keep the arrays float32
        ground = (canvas.seg <= SIDEWALK) | (canvas.seg == TERRAIN)
        light = np.where(ground, shadow, np.float32(1.0))
        light *= np.exp(slope[0] * x + slope[1] * y) * (
            1.0 - rng.uniform(0.15, 0.35) * (x * x + y * y) / 2.0
        )
        # Camera: white balance and exposure, blur, noise (luminance shared by the channels).
        balance = np.array(
            [1.0, 1.0 + rng.normal(0.03, 0.02), 1.0 + rng.normal(-0.07, 0.03)], np.float32
        )
        rgb *= texture * light
        rgb *= (balance * rng.uniform(0.7, 1.0))[:, None, None]
        sigma = rng.uniform(0.5, 0.9)
        noise = rng.uniform(2.0, 4.5) * rng.standard_normal((height, width), np.float32)
        chroma = rng.standard_normal((3, height // 2, width // 2), np.float32)  # ~2 px colour noise
        for channel in range(3):
            rgb[channel] = cv2.GaussianBlur(rgb[channel], (0, 0), sigma) + noise
            rgb[channel] += 2.0 * cv2.resize(
                chroma[channel], (width, height), interpolation=cv2.INTER_LINEAR
            )
    np.clip(rgb, 0.0, 255.0, out=rgb)
    return cv2.merge([np.rint(channel).astype(np.uint8) for channel in rgb])


def render(
    geometry: np.random.Generator, appearance: np.random.Generator, *, real: bool, options: Options
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({"png": (H, W, 3) uint8 RGB, "seg.png": (H, W) uint8, "depth.png": (H, W) uint16 cm}, labels)."""
    layout = sample_layout(geometry, options)
    look = _sample_look(appearance, real)
    cam = layout.camera
    canvas = _Canvas(options.height, options.width)
    shadow = _ground(canvas, layout, look, appearance, real)
    # One colour per slab and board, in layout order, so the draws do not depend on visibility;
    # a vehicle's side slab takes its rear board's colour. Boards first: body ids index them.
    count = len(layout.boards) + len(layout.slabs) + 1
    tints = appearance.standard_normal((count, 2, 3), np.float32)
    for i, slab in enumerate(layout.slabs):
        tint = tints[slab.body if slab.body >= 0 else len(layout.boards) + i]
        light = look.sides[0] if slab.x < 0 else look.sides[1]
        _slab(canvas, slab, cam, look, light, _colour(look, slab.class_id, tint[0], real))
    if layout.far_end is not None:
        _far_end(canvas, layout, _colour(look, BUILDING, tints[-1, 0], real) * 0.9)
    order = sorted(range(len(layout.boards)), key=lambda i: -layout.boards[i].z)  # far to near
    for i in order:
        board, tint = layout.boards[i], tints[i]
        colour = _colour(look, board.class_id, tint[0], real)
        second = _colour(look, board.class_id, tint[1], real) * 0.6
        if board.style == "light":
            second = np.array(LAMPS[int(abs(tint[1, 0]) * 10) % 3], np.float32)
        _board(canvas, board, cam, look, colour, second)
    _sky(canvas, look, cam)
    png = _finish(canvas, look, shadow, appearance, real)

    depth = np.where(
        np.isfinite(canvas.depth),
        np.clip(np.rint(canvas.depth * 100.0), 1, MAX_DEPTH_CM),
        SKY_DEPTH,
    ).astype(np.uint16)
    labels = {
        "ontology": "cityscapes-19",
        "classes": list(TRAIN_NAMES),  # names by id, as every ingested scene has them
        "ignore_index": IGNORE,
        "present": sorted(int(c) for c in np.unique(canvas.seg)),
        "depth_unit": "cm",
        "camera": {"fx": cam.f, "fy": cam.f, "cx": cam.cx, "cy": cam.cy, "height_m": cam.height_m},
    }
    return {"png": png, "seg.png": canvas.seg, "depth.png": depth}, labels
