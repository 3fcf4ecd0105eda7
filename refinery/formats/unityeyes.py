"""UnityEyes (Wood et al., ETRA 2016): rendered eye-region images + JSON labels → gaze crops.

On disk (the root is the directory that holds ``imgs/``, or ``imgs/`` itself)::

    imgs/N.jpg     the render (800×600 RGB by default)
    imgs/N.json    its labels

Every JSON value is a string. 2-D points such as ``interior_margin_2d`` (16 points),
``caruncle_2d`` (7) and ``iris_2d`` (32) are ``"(x, y, z)"`` in Unity screen space: pixels,
origin at the *bottom-left* corner of the image, pixel edges at integers, the third number a
depth that is not used. ``eye_details.look_vec`` is ``"(x, y, z, 0)"`` in the camera's frame
(x right, y up, z forward, away from the camera) and ``head_pose`` is ``"(pitch, yaw, roll)"``
in degrees (Unity Euler angles, frontal = (0, 180, 0)). Strings are parsed as numbers, never
evaluated.

Labels use the field names and conventions of ``refinery/sim/eyes.py`` (x right, y down,
z away from the camera), so gaze trainers read both:

- ``look_vec`` g = (x, -y, z) of UnityEyes' look_vec, normalised (only y flips: its camera has
  y up). ``gaze`` = {pitch: arcsin(-g_y), yaw: arctan2(-g_x, -g_z)} radians; positive pitch
  looks up, positive yaw moves the iris to the image left. This is GazeML's label exactly:
  its reader negates x, takes (arcsin y, arctan2(x, z)) and then folds yaw through ±π, which
  together equal arctan2(-x, -z) of the unflipped vector. The fixture look_vec
  (0.3404, 0.3879, -0.8566) gives (pitch, yaw) = (0.3983, -0.3783).
- ``head_pose`` [pitch, yaw, roll] radians, defined as for MPIIGaze: pitch and yaw are the
  angles of the direction the face points, in the gaze convention (positive pitch faces up,
  positive yaw turns the face towards the image left), roll turns the head clockwise in the
  image. UnityEyes' head_pose is the Euler rotation of its camera orbiting a head that faces
  world +z (frontal = (0, 180, 0)), so near frontal pitch ≈ -wrap(p) and yaw ≈ 180 - y, the
  signs of GazeML's corrected angles (wrap(p), y - 180) flipped; see
  ``head_pose_from_unity`` for the exact map. The yaw sign is checked on the fixture: head
  yaw 203.8° puts the eyelid opening ~27 px right of the eyeball centre (the image centre,
  where UnityEyes aims its camera), as a face turned by -23.9° does; roll is unchecked
  (UnityEyes writes 0). ``head_pose_range=(p, y)`` keeps items with |pitch| <= p and
  |yaw| <= y degrees of this head_pose (GazeML keeps 20, 20 of its corrected Euler angles,
  which differ from these by up to ~1.5° at that range); the others are
  ``Filtered("head-pose")``, counted by the ingest driver but not rejected.
- ``landmarks`` in crop pixels (pixel centres at integer coordinates, as in sim/eyes.py):
  ``eye_corners`` = interior_margin_2d[0] (the caruncle side, image left) and [8] (GazeML's
  "right corner"); ``upper_lid`` = points 0..8, ``lower_lid`` = points 0, 15, 14, ..., 8 (both
  corner to corner, image left to right; UnityEyes renders one eye, with this topology);
  ``iris_centre`` = the mean of the 32 iris_2d points; ``iris`` and ``caruncle`` the contours.

Crop (after GazeML's eye_middle / eye_width, from the interior margin only): the box is
centred on the middle of the interior margin's bounding box, ``1.5 ×`` its width wide
(GazeML's factor) and as high as the output's aspect asks (``width * h / w``); corners are
rounded to whole source pixels, ``x0 = floor(cx - W / 2 + 0.5)``, ``x1 = x0 + round(W)``
(y likewise). The grayscale render (decoded as GazeML does, ``IMREAD_GRAYSCALE``) is cut to
the box, padded by edge replication where the box leaves the image, and resized to ``size``
with area averaging (bilinear when enlarging). A source point (x, y) in Unity screen space
moves to ``u = (x - x0) * w / (x1 - x0) - 0.5``, ``v = (H - y - y0) * h / (y1 - y0) - 0.5``.
The label's ``crop`` records the box, the scale, the source size and whether it was padded.

Keys: ``unityeyes-00000017`` (the file number, zero-padded so keys sort like numbers).

References read: swook/GazeML src/datasources/unityeyes.py (parsing, the ``ih - y`` flip, the
crop from interior_margin_2d, the look_vec x flip and yaw fold, the head-pose filter) and
david-wb/gaze-estimation util/preprocess.py (the same crop without augmentation).
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import cv2
import numpy as np

from refinery.formats import Item, register_format
from refinery.ingest import Filtered
from refinery.samples import (
    GRAY8,
    MALFORMED,
    MISSING,
    UNDECODABLE,
    SampleError,
    encode_image,
    encode_json,
    imdecode,
)

EYE_WIDTH_FACTOR = 1.5  # crop width / interior-margin width (GazeML)
DEFAULT_SIZE = (35, 55)  # SimGAN's gaze crops; (36, 60) is MPIIGaze's
MARGIN_POINTS = 16
_STEM = re.compile(r"^\d+$")
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_TUPLE = re.compile(rf"^\(\s*({_NUMBER}(?:\s*,\s*{_NUMBER})*)\s*\)$")


def parse_tuple(text: Any, count: int | tuple[int, ...], *, field: str, url: str) -> list[float]:
    """``"(x, y, z)"`` → [x, y, z]; anything else is a MALFORMED reject naming the field."""
    counts = (count,) if isinstance(count, int) else count
    match = _TUPLE.match(text.strip()) if isinstance(text, str) else None
    values = [float(v) for v in match.group(1).split(",")] if match else []
    if len(values) not in counts or not all(math.isfinite(v) for v in values):
        want = " or ".join(str(c) for c in counts)
        raise SampleError(
            MALFORMED,
            f"{field}: expected a string '(n1, ..., n{want})' of {want} finite numbers, "
            f"got {text!r}",
            component="json",
            url=url,
        )
    return values


def _points(label: dict[str, Any], name: str, *, url: str, count: int | None = None) -> np.ndarray:
    """A list of ``"(x, y, z)"`` strings → (N, 2) float64 Unity screen (x, y)."""
    value = label.get(name)
    if not isinstance(value, list) or not value or (count is not None and len(value) != count):
        want = f"{count} " if count is not None else ""
        raise SampleError(
            MALFORMED,
            f"{name}: expected a list of {want}'(x, y, z)' strings",
            component="json",
            url=url,
        )
    points = [parse_tuple(p, 3, field=f"{name}[{i}]", url=url)[:2] for i, p in enumerate(value)]
    return np.array(points, dtype=np.float64)


def gaze_from_look_vec(look_vec: list[float]) -> tuple[np.ndarray, float, float]:
    """UnityEyes look_vec (x, y up, z) → (g in sim/eyes.py's frame, pitch, yaw)."""
    g = np.array([look_vec[0], -look_vec[1], look_vec[2]], dtype=np.float64)
    norm = float(np.linalg.norm(g))
    if not norm > 1e-9:
        raise ValueError("look_vec has zero length")
    g /= norm
    pitch = math.asin(max(-1.0, min(1.0, -g[1])))
    yaw = math.atan2(-g[0], -g[2])
    return g, pitch, yaw


def head_angles(rotation: np.ndarray) -> list[float]:
    """[pitch, yaw, roll] radians of a head rotation R = Ry(yaw) Rx(-pitch) Rz(roll).

    R's columns are the head's axes (x right, y down, z into the head, as the camera's for a
    frontal face) in camera coordinates, so -R[:, 2] is the direction the face points and
    pitch, yaw are that direction's angles in the gaze convention (hysts' ``convert_pose``).
    """
    r = rotation
    return [
        math.asin(max(-1.0, min(1.0, float(r[1, 2])))),
        math.atan2(float(r[0, 2]), float(r[2, 2])),
        math.atan2(float(r[1, 0]), float(r[1, 1])),
    ]


def _rotation(axis: int, angle: float) -> np.ndarray:
    """Unity's rotation by ``angle`` radians about axis 0, 1 or 2 (its left-handed sense)."""
    c, s = math.cos(angle), math.sin(angle)
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r = np.eye(3)
    r[i, i] = r[j, j] = c
    r[i, j], r[j, i] = -s, s
    return r


def head_pose_from_unity(degrees: list[float]) -> list[float]:
    """UnityEyes head_pose (pitch, yaw, roll) degrees → [pitch, yaw, roll] radians, our sense.

    UnityEyes' head_pose holds the Euler angles of its camera, which orbits a head facing
    world +z (frontal: (0, 180, 0)). Unity composes Euler angles as R = Ry Rx Rz; the camera's
    frame is x right, y up, z forward, so the head's axes in our camera frame (y down) are
    -diag(1, -1, 1) R^T.
    """
    pitch, yaw, roll = (math.radians(d) for d in degrees)
    camera = _rotation(1, yaw) @ _rotation(0, pitch) @ _rotation(2, roll)
    return head_angles(-np.diag([1.0, -1.0, 1.0]) @ camera.T)


def crop_box(margin: np.ndarray, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) source pixels (top-left origin) around interior-margin points.

    ``margin`` is (N, 2) in top-left continuous coordinates (pixel edges at integers).
    """
    height, width = size
    low, high = margin.min(axis=0), margin.max(axis=0)
    cx, cy = (low + high) / 2
    box_w = EYE_WIDTH_FACTOR * float(high[0] - low[0])
    box_h = box_w * height / width
    if not box_w > 0:
        raise ValueError("interior_margin_2d has no horizontal extent")
    w_px, h_px = max(1, math.floor(box_w + 0.5)), max(1, math.floor(box_h + 0.5))
    x0, y0 = math.floor(cx - box_w / 2 + 0.5), math.floor(cy - box_h / 2 + 0.5)
    return x0, y0, x0 + w_px, y0 + h_px


def cut(image: np.ndarray, box: tuple[int, int, int, int]) -> tuple[np.ndarray, bool]:
    """image[y0:y1, x0:x1], edge-replicated where the box leaves the image; (crop, padded)."""
    x0, y0, x1, y1 = box
    rows, cols = image.shape[:2]
    inside = image[max(y0, 0) : min(y1, rows), max(x0, 0) : min(x1, cols)]
    pads = (max(0, -y0), max(0, y1 - rows), max(0, -x0), max(0, x1 - cols))
    if not any(pads):
        return inside, False
    if inside.size == 0:
        raise ValueError(f"crop box {box} lies outside the {cols}x{rows} image")
    top, bottom, left, right = pads
    return cv2.copyMakeBorder(inside, top, bottom, left, right, cv2.BORDER_REPLICATE), True


def resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """To (h, w): area averaging when shrinking (no aliasing), bilinear when enlarging."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image.copy()
    shrinking = image.shape[0] >= height and image.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def check_size(size: Any) -> tuple[int, int]:
    if (
        not isinstance(size, tuple | list)
        or len(size) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size)
    ):
        raise ValueError(f"size must be (height, width) in positive integers, got {size!r}")
    return int(size[0]), int(size[1])


@register_format(
    "unityeyes",
    domain="gaze",
    summary="UnityEyes renders imgs/N.jpg + imgs/N.json → eye crops (35×55 gray) + gaze",
)
class UnityEyes:
    """Reader over a UnityEyes output directory; see the module docstring."""

    def __init__(
        self,
        root: str,
        *,
        size: tuple[int, int] = DEFAULT_SIZE,
        head_pose_range: tuple[float, float] | None = None,
    ):
        self.root = os.fspath(root)
        self.size = check_size(size)
        if head_pose_range is not None:
            if (
                not isinstance(head_pose_range, tuple | list)
                or len(head_pose_range) != 2
                or not all(
                    isinstance(v, int | float) and math.isfinite(v) and v >= 0
                    for v in head_pose_range
                )
            ):
                raise ValueError(
                    "head_pose_range must be (pitch, yaw) in non-negative degrees, "
                    f"got {head_pose_range!r}"
                )
            head_pose_range = (float(head_pose_range[0]), float(head_pose_range[1]))
        self.head_pose_range = head_pose_range
        if not os.path.isdir(self.root):
            raise FileNotFoundError(f"UnityEyes root {self.root!r} is not a directory")
        nested = os.path.join(self.root, "imgs")
        self.images = nested if os.path.isdir(nested) else self.root
        self._rel = os.path.relpath(self.images, self.root)

    def items(self) -> list[Item]:
        stems = {
            stem
            for stem, ext in (os.path.splitext(n) for n in os.listdir(self.images))
            if ext in (".jpg", ".json")
        }
        if not stems:
            raise ValueError(f"no UnityEyes N.jpg / N.json files in {self.images!r}")
        # Numbered files in number order (2 before 10, 0002 before 2); anything else after them.
        ordered = sorted(stems, key=lambda s: (0, int(s), s) if _STEM.match(s) else (1, 0, s))
        return [
            Item(
                name=os.path.normpath(os.path.join(self._rel, stem)),
                paths=(
                    os.path.join(self.images, f"{stem}.jpg"),
                    os.path.join(self.images, f"{stem}.json"),
                ),
            )
            for stem in ordered
        ]

    def convert(self, item: Item) -> list[dict[str, Any]]:
        jpg, json_path = item.paths
        stem = os.path.basename(jpg)[: -len(".jpg")]
        if not _STEM.match(stem):
            raise SampleError(
                MALFORMED, "UnityEyes files are named N.jpg / N.json with N a number", url=jpg
            )
        key = f"unityeyes-{int(stem):08d}"

        def fail(reason: str, detail: str, url: str, component: str) -> SampleError:
            return SampleError(reason, detail, key=key, component=component, url=url)

        for path, component in ((json_path, "json"), (jpg, "png")):
            if not os.path.exists(path):
                other = jpg if path == json_path else json_path
                raise fail(
                    MISSING,
                    f"{os.path.basename(other)} has no {os.path.basename(path)}",
                    path,
                    component,
                )
        try:
            with open(json_path, "rb") as f:
                label = json.loads(f.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise fail(UNDECODABLE, f"not UTF-8 JSON: {exc}", json_path, "json") from None
        if not isinstance(label, dict):
            raise fail(MALFORMED, "not a JSON object", json_path, "json")
        try:
            return [self._sample(key, label, jpg, json_path)]
        except SampleError as error:
            error.key = error.key or key
            raise
        except ValueError as exc:
            raise fail(MALFORMED, str(exc), json_path, "json") from None

    def _sample(self, key: str, label: dict[str, Any], jpg: str, json_path: str) -> dict[str, Any]:
        details = label.get("eye_details")
        if not isinstance(details, dict):
            raise ValueError("eye_details: missing (it holds look_vec)")
        look = parse_tuple(
            details.get("look_vec"), (3, 4), field="eye_details.look_vec", url=json_path
        )
        head_deg = parse_tuple(label.get("head_pose"), 3, field="head_pose", url=json_path)
        head_pose = head_pose_from_unity(head_deg)
        if self.head_pose_range is not None:
            pitch_deg, yaw_deg = math.degrees(head_pose[0]), math.degrees(head_pose[1])
            max_pitch, max_yaw = self.head_pose_range
            # 1e-9: a pose written as exactly the limit stays in despite rounding.
            if abs(pitch_deg) > max_pitch + 1e-9 or abs(yaw_deg) > max_yaw + 1e-9:
                raise Filtered(
                    "head-pose",
                    f"head pitch {pitch_deg:.1f}°, yaw {yaw_deg:.1f}° outside "
                    f"±{max_pitch:g}°, ±{max_yaw:g}°",
                    key=key,
                    url=json_path,
                )
        g, pitch, yaw = gaze_from_look_vec(look[:3])
        margin = _points(label, "interior_margin_2d", url=json_path, count=MARGIN_POINTS)
        caruncle = _points(label, "caruncle_2d", url=json_path)
        iris = _points(label, "iris_2d", url=json_path)

        with open(jpg, "rb") as f:
            data = f.read()
        image = imdecode(data, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise SampleError(
                UNDECODABLE,
                f"not a decodable image ({len(data)} bytes)",
                key=key,
                component="png",
                url=jpg,
            )
        rows, cols = image.shape
        flip = np.array([1.0, -1.0])
        shift = np.array([0.0, float(rows)])

        def top_left(points: np.ndarray) -> np.ndarray:  # Unity (y up) -> image (y down)
            return points * flip + shift

        box = crop_box(top_left(margin), self.size)
        crop, padded = cut(image, box)
        eye = resize(crop, self.size)
        x0, y0, x1, y1 = box
        scale = np.array([self.size[1] / (x1 - x0), self.size[0] / (y1 - y0)])

        def to_crop(points: np.ndarray) -> list[list[float]]:
            return ((top_left(points) - np.array([x0, y0])) * scale - 0.5).tolist()

        upper = margin[0:9]
        lower = margin[[0, *range(MARGIN_POINTS - 1, 7, -1)]]
        labels = {
            "gaze": {"pitch": pitch, "yaw": yaw},
            "look_vec": g.tolist(),
            "head_pose": head_pose,
            "landmarks": {
                "iris_centre": to_crop(iris.mean(axis=0, keepdims=True))[0],
                "eye_corners": to_crop(margin[[0, 8]]),
                "upper_lid": to_crop(upper),
                "lower_lid": to_crop(lower),
                "iris": to_crop(iris),
                "caruncle": to_crop(caruncle),
            },
            "crop": {
                "box": [x0, y0, x1, y1],
                "scale": scale.tolist(),
                "source_size": [cols, rows],
                "padded": padded,
            },
            "source": {
                "dataset": "unityeyes",
                "image": os.path.relpath(jpg, self.root),
                "label": os.path.relpath(json_path, self.root),
                "look_vec": look,
                "head_pose_deg": head_deg,
            },
        }
        return {"__key__": key, "png": encode_image(eye, GRAY8), "json": encode_json(labels)}
