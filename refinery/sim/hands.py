"""16-bit hand depth crops with 3-D joints: NYU-synthetic-like ("synthetic") and Kinect-like ("real").

The hand is a set of sphere-swept capsules (a capsule is a segment with a radius at each end):
forearm, palm (four metacarpals and two cross pieces), three phalanges per finger and three
thumb segments, posed by random flexion / abduction angles, a random global rotation and a
distance of 500-900 mm. It is seen by a virtual pinhole camera for the crop: like an NYU crop
of a ``CUBE_MM`` cube around the hand resized to ``size`` pixels, the focal length scales with
the hand's distance, so the hand has about the same size in every crop. Depth is rendered by a
z-buffer over capsules, each vectorised over the pixels of its bounding box: for a pixel at 2-D
distance d from the capsule's projected axis, at the axis point with depth z and radius r (r_px
in pixels), the surface depth is ``z - r * sqrt(1 - (d / r_px)**2)``: a sphere-swept,
locally orthographic approximation of the exact ray intersection. Behind the hand is a slanted
plane (a wall or the body): 1000-1600 mm away in synthetic crops, often just behind the hand in
real ones.

Depth is in millimetres; 0 means no measurement. Camera coordinates: x right, y down, z away
from the camera, and ``u = fx * x / z + cx``, ``v = fy * y / z + cy`` (pixel centres at integer
coordinates).

Joints follow NYU's 14-joint evaluation subset (``JOINT_NAMES``). "mid" is the PIP joint of a
finger and the IP joint of the thumb, "thumb_base" the thumb's MCP joint, ``palm_left`` /
``palm_right`` the thumb-side / little-finger-side base of the palm, ``wrist`` the wrist centre.
Joints are centres on capsule axes, so the visible surface at a joint's pixel is in front of the
joint by about the capsule radius (7-22 mm).

Real: Kinect artefacts, all local: no measurement at and next to depth discontinuities, flying
pixels between foreground and background there, the projector's shadow beside the hand,
depth quantised in disparity (steps growing with depth squared), depth-dependent noise, missing
blobs and a noisier, differently placed background.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

CUBE_MM = 300.0  # side of the cube around the hand that the crop covers
MARGIN_PX = 2.0  # joints stay this far inside the crop
JOINT_NAMES = (
    "pinky_tip",
    "pinky_mid",
    "ring_tip",
    "ring_mid",
    "middle_tip",
    "middle_mid",
    "index_tip",
    "index_mid",
    "thumb_tip",
    "thumb_mid",
    "thumb_base",
    "palm_left",
    "palm_right",
    "wrist",
)
FINGERS = ("index", "middle", "ring", "pinky")

# Hand frame (mm): origin at the wrist centre, +y towards the fingers, +x towards the little
# finger, +z out of the palm. Values for an average adult hand, scaled per sample.
_MCP = {"index": (-27.0, 86.0), "middle": (-8.0, 90.0), "ring": (10.0, 86.0), "pinky": (27.0, 78.0)}
_PHALANGES = {  # (proximal, middle, distal) lengths
    "index": (40.0, 24.0, 20.0),
    "middle": (45.0, 28.0, 22.0),
    "ring": (42.0, 27.0, 21.0),
    "pinky": (33.0, 19.0, 18.0),
}
_FINGER_RADII = {  # radius at the MCP, PIP, DIP joint and the tip
    "index": (10.0, 8.5, 7.5, 6.8),
    "middle": (10.0, 8.8, 7.7, 7.0),
    "ring": (9.5, 8.2, 7.3, 6.6),
    "pinky": (8.5, 7.3, 6.6, 6.0),
}
_SPREAD = {"index": -1.0, "middle": 0.0, "ring": 0.6, "pinky": 1.2}  # abduction per unit spread
_PALM_BASE = {
    "index": (-18.0, 18.0),
    "middle": (-6.0, 14.0),
    "ring": (6.0, 14.0),
    "pinky": (18.0, 18.0),
}
_THUMB_CMC = (-20.0, 22.0, 6.0)
_THUMB_LENGTHS = (42.0, 32.0, 26.0)  # CMC-MCP, MCP-IP, IP-tip
_THUMB_RADII = (13.0, 10.5, 9.0, 8.0)
_WRIST_RADIUS = 22.0
_PALM_RADIUS = 13.0
_FOREARM_MM = 220.0


@dataclass(frozen=True, kw_only=True)
class Options:
    size: int = 128

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"hand size must be an integer >= 32, got {self.size!r}")


@dataclass(frozen=True)
class Capsule:
    a: np.ndarray  # (3,) end point, camera mm
    b: np.ndarray
    ra: float  # radius at a, mm
    rb: float


@dataclass(frozen=True, kw_only=True)
class Pose:
    """The posed hand in camera space; drawn from the variant-independent stream."""

    capsules: tuple[Capsule, ...]
    joints: np.ndarray  # (14, 3) camera mm, in JOINT_NAMES order
    fx: float
    fy: float
    cx: float
    cy: float

    def project(self, points: np.ndarray) -> np.ndarray:
        """(N, 3) camera mm -> (N, 3) [u, v, d_mm]."""
        z = points[:, 2]
        return np.stack(
            [self.fx * points[:, 0] / z + self.cx, self.fy * points[:, 1] / z + self.cy, z], axis=1
        )


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues: (3, 3) rotation by `angle` about unit `axis`."""
    x, y, z = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]])
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _chain(start: np.ndarray, direction: np.ndarray, bend: np.ndarray, lengths, angles) -> list:
    """Joint positions of a planar chain: each joint turns the direction towards `bend`."""
    points = [start]
    total = 0.0
    for length, angle in zip(lengths, angles, strict=True):
        total += angle
        step = np.cos(total) * direction + np.sin(total) * bend
        points.append(points[-1] + length * step)
    return points


def sample_pose(rng: np.random.Generator, size: int) -> Pose:
    scale = rng.uniform(0.85, 1.12)
    curl = rng.uniform(0.0, 1.0) ** 1.3
    pointing = rng.random() < 0.3  # one finger stays straight, as in pointing gestures
    straight = rng.integers(0, 4) if pointing else -1
    spread = rng.uniform(0.0, 0.28) * (1.0 - 0.7 * curl)
    palm_normal = np.array([0.0, 0.0, 1.0])

    joints: dict[str, np.ndarray] = {}
    capsules: list[tuple[np.ndarray, np.ndarray, float, float]] = []
    for i, finger in enumerate(FINGERS):
        mcp = np.array([*_MCP[finger], 0.0]) * scale
        abduction = _SPREAD[finger] * spread + rng.normal(0.0, 0.04)
        direction = np.array([np.sin(abduction), np.cos(abduction), 0.0])
        own = 0.1 if i == straight else curl
        flex_mcp = np.clip(1.35 * own + rng.normal(0.0, 0.2), -0.25, 1.5)
        flex_pip = np.clip(1.7 * own + rng.normal(0.0, 0.25), 0.0, 1.9)
        flex_dip = np.clip(0.66 * flex_pip + rng.normal(0.0, 0.1), 0.0, 1.2)
        lengths = np.array(_PHALANGES[finger]) * scale
        points = _chain(mcp, direction, palm_normal, lengths, (flex_mcp, flex_pip, flex_dip))
        radii = np.array(_FINGER_RADII[finger]) * scale
        for k in range(3):
            capsules.append((points[k], points[k + 1], radii[k], radii[k + 1]))
        base = np.array([*_PALM_BASE[finger], 0.0]) * scale
        capsules.append((base, mcp, _PALM_RADIUS * scale, radii[0] + 2.0 * scale))
        joints[f"{finger}_mid"], joints[f"{finger}_tip"] = points[1], points[3]
        joints[f"{finger}_mcp"], joints[f"{finger}_base"] = mcp, base

    # Thumb: swung out (abduction) and towards the palm (opposition), then flexed towards it.
    cmc = np.array(_THUMB_CMC) * scale
    swing = rng.uniform(0.35, 1.05)
    opposition = rng.uniform(0.05, 0.9) * (0.5 + 0.5 * curl)
    thumb_dir = np.array(
        [
            -np.sin(swing) * np.cos(opposition),
            np.cos(swing) * np.cos(opposition),
            np.sin(opposition),
        ]
    )
    towards_palm = np.array([1.0, 0.3, 1.0])
    bend = towards_palm - thumb_dir * (towards_palm @ thumb_dir)
    bend /= np.linalg.norm(bend)
    thumb_flex = (
        np.clip(rng.normal(0.15, 0.1), 0.0, 0.4),
        np.clip(0.9 * curl + rng.normal(0.0, 0.2), 0.0, 1.0),
        np.clip(1.0 * curl + rng.normal(0.0, 0.25), 0.0, 1.3),
    )
    thumb = _chain(cmc, thumb_dir, bend, np.array(_THUMB_LENGTHS) * scale, thumb_flex)
    thumb_radii = np.array(_THUMB_RADII) * scale
    for k in range(3):
        capsules.append((thumb[k], thumb[k + 1], thumb_radii[k], thumb_radii[k + 1]))

    wrist = np.zeros(3)
    palm_left, palm_right = joints["index_base"], joints["pinky_base"]
    wrist_radius = _WRIST_RADIUS * scale
    capsules += [
        (wrist - np.array([0.0, _FOREARM_MM, 0.0]), wrist, 1.15 * wrist_radius, wrist_radius),
        (wrist, (palm_left + palm_right) / 2, wrist_radius, _PALM_RADIUS * scale),
        (palm_left, palm_right, _PALM_RADIUS * scale, _PALM_RADIUS * scale),
        (joints["index_mcp"], joints["pinky_mcp"], 11.0 * scale, 10.0 * scale),
        (cmc, palm_left, 14.0 * scale, _PALM_RADIUS * scale),
    ]
    named = {
        **joints,
        "thumb_tip": thumb[3],
        "thumb_mid": thumb[2],
        "thumb_base": thumb[1],
        "palm_left": palm_left,
        "palm_right": palm_right,
        "wrist": wrist,
    }
    local = np.stack([named[name] for name in JOINT_NAMES])  # (14, 3) hand frame

    # Global pose: hand frame -> camera (+y hand is image-up, palm towards the camera), then a
    # turn about the hand's long axis (palm or back visible), a tilt and an in-plane roll.
    to_camera = np.diag([1.0, -1.0, -1.0])
    rotation = (
        _rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(-1.2, 1.2))
        @ _rotation(np.array([1.0, 0.0, 0.0]), rng.uniform(-0.6, 0.6))
        @ _rotation(np.array([0.0, 1.0, 0.0]), rng.uniform(-np.pi, np.pi))
        @ to_camera
    )
    distance = rng.uniform(500.0, 900.0)
    palm_centre = np.array([0.0, 50.0, 0.0]) * scale
    offset = np.array([*rng.normal(0.0, 8.0, 2), distance]) - rotation @ palm_centre

    def place(p: np.ndarray) -> np.ndarray:
        return p @ rotation.T + offset

    # The crop: a CUBE_MM cube at the hand's distance spans `size` pixels, centred on the palm
    # and shifted where needed so that every joint lies at least MARGIN_PX inside the crop.
    focal = size * distance / CUBE_MM
    joints_xyz = place(local)
    uv = focal * joints_xyz[:, :2] / joints_xyz[:, 2:3]  # (14, 2) relative to the centre
    low, high = MARGIN_PX - uv.min(axis=0), size - 1 - MARGIN_PX - uv.max(axis=0)
    centre = np.clip(np.full(2, (size - 1) / 2), low, np.maximum(low, high))
    return Pose(
        capsules=tuple(
            Capsule(place(a), place(b), float(ra), float(rb)) for a, b, ra, rb in capsules
        ),
        joints=joints_xyz,
        fx=float(focal),
        fy=float(focal),
        cx=float(centre[0]),
        cy=float(centre[1]),
    )


def render_depth(pose: Pose, size: int, background: np.ndarray) -> np.ndarray:
    """z-buffer the capsules over `background`; (size, size) float32 mm."""
    depth = background.astype(np.float32).copy()
    ends = np.stack([np.stack([c.a, c.b]) for c in pose.capsules])  # (N, 2, 3) camera mm
    uvd = pose.project(ends.reshape(-1, 3)).reshape(-1, 2, 3).tolist()  # Python floats
    for capsule, ((ua, va, za), (ub, vb, zb)) in zip(pose.capsules, uvd, strict=True):
        if min(za, zb) <= 10.0:
            continue
        pad = max(capsule.ra / za, capsule.rb / zb) * pose.fx + 1.0  # px
        u0, u1 = max(0, math.floor(min(ua, ub) - pad)), min(size, math.ceil(max(ua, ub) + pad) + 1)
        v0, v1 = max(0, math.floor(min(va, vb) - pad)), min(size, math.ceil(max(va, vb) + pad) + 1)
        if u0 >= u1 or v0 >= v1:
            continue
        u = np.arange(u0, u1, dtype=np.float32)[None, :] - ua  # (1, w) from end a
        v = np.arange(v0, v1, dtype=np.float32)[:, None] - va  # (h, 1)
        du, dv = ub - ua, vb - va
        length2 = du * du + dv * dv
        if length2 > 1e-9:
            t = np.clip((u * du + v * dv) * (1.0 / length2), 0.0, 1.0)  # (h, w)
        else:
            t = np.zeros((v1 - v0, u1 - u0), np.float32)
        dist2 = (u - t * du) ** 2 + (v - t * dv) ** 2
        z = za + t * (zb - za)
        radius = capsule.ra + t * (capsule.rb - capsule.ra)  # mm
        radius_px = radius * (pose.fx / z)
        cover = 1.0 - dist2 / (radius_px * radius_px)
        surface = np.where(cover > 0.0, z - radius * np.sqrt(np.maximum(cover, 0.0)), np.inf)
        window = depth[v0:v1, u0:u1]
        np.minimum(window, surface, out=window)
    return depth


def _background(rng: np.random.Generator, pose: Pose, size: int, real: bool) -> np.ndarray:
    """A slanted plane behind the hand: depth along each pixel's ray, mm.

    Synthetic: a wall 1000-1600 mm away. Real: like NYU's recordings, the wall or the subject's
    body is often just behind the hand, from 100 mm behind its farthest joint to 1400 mm.
    """
    if real:
        farthest = float(pose.joints[:, 2].max())
        at_centre = rng.uniform(farthest + 100.0, max(1400.0, farthest + 300.0))
    else:
        nearest = float(pose.joints[:, 2].min())
        at_centre = rng.uniform(max(1000.0, nearest + 250.0), max(1600.0, nearest + 350.0))
    a, b = rng.uniform(-0.5, 0.5, 2)
    v, u = np.mgrid[0:size, 0:size].astype(np.float32)
    rays = a * (u - pose.cx) / pose.fx + b * (v - pose.cy) / pose.fy + 1.0  # normal . ray, z = 1
    return at_centre / np.clip(rays, 0.5, None)


def _kinect(depth: np.ndarray, background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Kinect-like measurement of a clean depth map (mm, float32); 0 = no measurement."""
    size = depth.shape[0]
    pixel = size / 128  # artefact sizes are set for a 128-pixel crop
    out = depth.copy()
    # Noise first (it is part of the measurement), then the disparity quantisation.
    scale = (out / 1000.0) ** 2
    smooth = cv2.resize(
        rng.standard_normal((8, 8), np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    sigma = rng.uniform(2.0, 5.0)  # mm at 1 m
    out += scale * (sigma * rng.standard_normal(out.shape, np.float32) + 3.0 * smooth)
    step_at_1m = rng.uniform(2.5, 4.0)  # mm per disparity step at 1 m; grows with depth^2
    disparity = 1.0e6 / step_at_1m
    out = disparity / np.maximum(np.rint(disparity / np.maximum(out, 1.0)), 1.0)

    # Discontinuities (neighbours more than 20 mm apart), widened by 1-2 px: mostly no
    # measurement, some flying pixels between the near and the far surface.
    kernel = np.ones((3, 3), np.uint8)
    near, far = cv2.erode(depth, kernel), cv2.dilate(depth, kernel)
    edge = (far - near) > 20.0
    widen = int(rng.integers(1, 3) * pixel)
    if widen:
        edge = cv2.dilate(edge.astype(np.uint8), np.ones((2 * widen + 1,) * 2, np.uint8)).astype(
            bool
        )
    # Ragged rather than salt-and-pepper: runs of a few pixels along the edge go missing.
    ragged = cv2.resize(
        rng.standard_normal((size // 4, size // 4), np.float32),
        (size, size),
        interpolation=cv2.INTER_LINEAR,
    )
    draw = rng.random(out.shape, np.float32)
    flying = edge & (draw < rng.uniform(0.1, 0.25))
    mix = rng.random(out.shape, np.float32)
    out = np.where(flying, near + mix * (far - near), out)
    holes = edge & ~flying & (ragged > rng.uniform(-0.5, 0.2))

    # The projector sits beside the camera: background next to the hand on that side is unlit.
    foreground = depth < background - 30.0
    width = int(np.clip(rng.normal(3.5, 1.0), 1.0, 7.0) * pixel)
    shadow = np.zeros_like(foreground)
    for shift in range(1, width + 1):
        shadow[:, shift:] |= foreground[:, :-shift]
    holes |= shadow & ~foreground

    # Thin parts (fingers seen from afar or edge-on) lose their measurement in places: what a
    # morphological opening removes from the foreground, under a smooth random field.
    opening = max(3, round(rng.uniform(5.0, 9.0) * pixel) | 1)  # odd kernel side
    solid = cv2.morphologyEx(
        foreground.astype(np.uint8), cv2.MORPH_OPEN, np.ones((opening, opening), np.uint8)
    )
    patches = cv2.resize(
        rng.standard_normal((12, 12), np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    holes |= foreground & ~solid.astype(bool) & (patches > rng.uniform(0.0, 0.8))

    # Missing blobs (dark or specular surfaces) and scattered dropouts.
    field = cv2.resize(
        rng.standard_normal((10, 10), np.float32), (size, size), interpolation=cv2.INTER_CUBIC
    )
    holes |= field > np.quantile(field, 1.0 - rng.uniform(0.04, 0.10))
    holes |= rng.random(out.shape, np.float32) < rng.uniform(0.0005, 0.003)
    out[holes] = 0.0
    return out


def render(
    geometry: np.random.Generator, appearance: np.random.Generator, *, real: bool, options: Options
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """({"depth.png": (S, S) uint16 mm}, labels) for one sample."""
    size = options.size
    pose = sample_pose(geometry, size)
    background = _background(appearance, pose, size, real)
    depth = render_depth(pose, size, background)
    if real:
        depth = _kinect(depth, background, appearance)
    image = np.clip(np.rint(depth), 0, 65535).astype(np.uint16)
    labels = {
        "joint_names": list(JOINT_NAMES),
        "joints_uvd": pose.project(pose.joints),
        "joints_xyz": pose.joints,
        "intrinsics": {"fx": pose.fx, "fy": pose.fy, "cx": pose.cx, "cy": pose.cy},
        "depth_unit": "mm",
    }
    return {"depth.png": image}, labels
