"""NYU Hand Pose (Tompson et al., TOG 2014): synthetic or real Kinect depth frames + 3-D joints.

On disk (the dataset's ``train/`` or ``test/`` directory is the root)::

    joint_data.mat                  joint_uvd, joint_xyz: (kinects=3, frames, 36, 3) float
    synthdepth_K_NNNNNNN.png        rendered hand model  (variant "synthetic")
    depth_K_NNNNNNN.png             Kinect measurement   (variant "real")
    rgb_K_NNNNNNN.png               not read

K is the Kinect (view) 1..3 and selects ``joint_uvd[K - 1]``; NNNNNNN is the 1-based frame,
so frame N is ``joint_uvd[K - 1, N - 1]``. A depth PNG is 640×480 8-bit RGB with the depth in
millimetres packed as ``G * 256 + B`` (R unused). OpenCV returns channels as BGR, so here
``depth = bgr[..., 1] << 8 | bgr[..., 0]``, widened to uint16 before the shift. NYU marks a
pixel without a measurement (holes, and anything beyond 2 m) with 2001 mm; ``no_depth=2001``
(the default) turns those into 0, this project's "no measurement" (refinery/sim/hands.py);
``no_depth=None`` keeps the file's values.

Labels (same field names as refinery/sim/hands.py, so hand trainers read both):

- ``joints_uvd`` / ``joints_xyz``: the 14-joint evaluation subset used by every NYU benchmark
  (DeepPrior's ``restrictedJointsEval``: indices ``EVAL14``), named by ``joint_names`` =
  ``refinery.sim.hands.JOINT_NAMES`` position by position; ``nyu_joint_names`` gives the
  dataset's own names of the same 14. u, v are pixels of the stored image (pixel centres at
  integer coordinates), d and x, y, z are millimetres.
- ``nyu36``: all 36 annotated joints (``joint_names``, ``joints_uvd``, ``joints_xyz``), moved
  with the crop exactly like the 14, so nothing in joint_data.mat is lost.
- Camera frame: x right, y *down*, z away from the camera, so ``u = fx * x / z + cx`` and
  ``v = fy * y / z + cy`` with positive intrinsics. NYU's joint_xyz has y up
  (``convert_uvd_to_xyz.m``: ``v = 240 - fy * y / z``); its y is negated here.
- ``intrinsics``: fx, fy from the dataset's ``convert_xyz_to_uvd.m`` (588.036865, 587.075073),
  principal point (320, 240); adjusted by the crop.

Crop (``crop=N``), after DeepPrior's ``HandDetector.cropArea3D`` with the ground-truth centre:
a ``cube``-mm cube (300 by default, DeepPrior's NYU value) centred on joint PALM_3 (index 32,
DeepPrior's ``crop_joint_idx``) is projected to a square of side ``S = round(cube * fx / d)``
pixels whose centre pixel ``x0 + (S - 1) / 2`` is the one nearest the joint's u
(``x0 = floor(u - (S - 1) / 2 + 0.5)``, ``y0`` likewise); the square is resampled to N×N by nearest neighbour (destination pixel j reads source pixel
``x0 + floor((j + 0.5) * S / N)``; depth is never interpolated). Pixels outside the frame and
pixels whose depth lies outside the cube (``|depth - d| > cube / 2``, the body and the wall
behind the hand) become 0, no measurement. Joints move by the same map:
``u' = (u - x0 + 0.5) * N / S - 0.5`` (v likewise; d, x, y, z unchanged), and so do the
intrinsics (``fx' = fx * N / S``, ``cx' = (cx - x0 + 0.5) * N / S - 0.5``). The label's ``crop``
records the box, the scale and the cube.

Keys: ``nyu-synth-k1-0000001`` / ``nyu-real-k1-0000001`` (view, 1-based frame). Train and test
reuse frame numbers, so ingest them as separate datasets.

References read: moberweger/deep-prior-pp src/data/importers.py (``NYUImporter``: loading,
G<<8|B, eval indices, intrinsics, y sign) and src/util/handdetector.py (the 3-D crop); the NYU
dataset's MATLAB scripts (``convert_uvd_to_xyz.m``, ``convert_xyz_to_uvd.m`` and the script
that writes joint_data.mat: the 36 joint names, the (kinect, frame, joint, 3) layout).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

import cv2
import numpy as np

from refinery.formats import Item, register_format
from refinery.samples import (
    DEPTH16,
    MALFORMED,
    MISSING,
    UNDECODABLE,
    SampleError,
    encode_image,
    encode_json,
    imdecode,
)
from refinery.sim.hands import JOINT_NAMES

LABEL_FILE = "joint_data.mat"
VARIANTS = {"synthetic": "synthdepth", "real": "depth"}  # variant -> file name prefix
KEY_TAGS = {"synthetic": "synth", "real": "real"}
WIDTH, HEIGHT = 640, 480
FX, FY, CX, CY = 588.036865, 587.075073, 320.0, 240.0  # convert_xyz_to_uvd.m
NYU_NO_DEPTH = 2001  # mm; NYU's value for "no measurement / beyond range"

NYU_JOINT_NAMES = tuple(
    [
        f"{finger}_KNU{k}_{ab}"
        for finger in ("F1", "F2", "F3", "F4", "TH")
        for k in (3, 2, 1)
        for ab in "AB"
    ]
    + [f"PALM_{i}" for i in range(1, 7)]
)  # the 36 joints of joint_data.mat, in its order; F1 is the little finger, F4 the index
EVAL14 = (0, 3, 6, 9, 12, 15, 18, 21, 24, 25, 27, 30, 31, 32)  # -> JOINT_NAMES, in order
CROP_CENTER = 32  # PALM_3
DEFAULT_CUBE_MM = 300.0

_NAME = re.compile(r"(synthdepth|depth)_(\d+)_(\d{7})\.png")


@register_format(
    "nyu-hand",
    domain="hand",
    summary="NYU hand pose depth (synthdepth_/depth_K_N.png, G*256+B mm) + joint_data.mat",
)
class NYUHand:
    """Reader over one NYU ``train/`` or ``test/`` directory; see the module docstring."""

    def __init__(
        self,
        root: str,
        *,
        variant: str = "synthetic",
        kinect: int | None = None,
        crop: int | None = None,
        cube: float = DEFAULT_CUBE_MM,
        no_depth: int | None = NYU_NO_DEPTH,
    ):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        if kinect is not None and (isinstance(kinect, bool) or kinect not in (1, 2, 3)):
            raise ValueError(f"kinect must be 1, 2, 3 or None (all views), got {kinect!r}")
        if crop is not None and (isinstance(crop, bool) or not isinstance(crop, int) or crop < 1):
            raise ValueError(f"crop must be a positive number of pixels or None, got {crop!r}")
        if isinstance(cube, bool) or not isinstance(cube, int | float) or not cube > 0:
            raise ValueError(f"cube must be a positive size in mm, got {cube!r}")
        if no_depth is not None and (
            isinstance(no_depth, bool) or not isinstance(no_depth, int) or not 0 < no_depth < 65536
        ):
            raise ValueError(f"no_depth must be a depth in mm (1..65535) or None, got {no_depth!r}")
        self.root = os.fspath(root)
        self.labels_path = os.path.join(self.root, LABEL_FILE)
        if not os.path.isfile(self.labels_path):
            raise FileNotFoundError(
                f"nyu-hand: no {LABEL_FILE} in {self.root!r}; the root is the dataset's train/ or "
                f"test/ directory, which holds {LABEL_FILE} next to the depth PNGs"
            )
        self.variant = variant
        self.kinect = kinect
        self.crop = crop
        self.cube = float(cube)
        self.no_depth = no_depth
        self._joints: tuple[np.ndarray, np.ndarray] | None = None  # loaded on first convert

    def items(self) -> list[Item]:
        prefix = VARIANTS[self.variant]
        items = []
        for name in sorted(os.listdir(self.root)):
            match = _NAME.fullmatch(name)
            if match is None or match.group(1) != prefix:
                continue
            kinect, frame = int(match.group(2)), int(match.group(3))
            if self.kinect is None or kinect == self.kinect:
                items.append(
                    Item(
                        name=name[: -len(".png")],
                        paths=(os.path.join(self.root, name), self.labels_path),
                        data=(kinect, frame),
                    )
                )
        return items

    def convert(self, item: Item) -> list[dict[str, Any]]:
        kinect, frame = item.data
        path = item.paths[0]
        key = f"nyu-{KEY_TAGS[self.variant]}-k{kinect}-{frame:07d}"
        try:
            uvd36, xyz36 = self._frame_joints(kinect, frame)
            depth = self._read_depth(path)
            intrinsics = {"fx": FX, "fy": FY, "cx": CX, "cy": CY}
            crop_label = None
            if self.crop is not None:
                depth, uvd36, intrinsics, crop_label = self._crop(depth, uvd36, intrinsics)
        except SampleError as error:
            error.key = key
            raise error.with_url(path) from None

        eval14 = list(EVAL14)
        label: dict[str, Any] = {
            "domain": "hand",
            "variant": self.variant,
            "source": {
                "dataset": "nyu-hand",
                "file": os.path.basename(path),
                "labels": LABEL_FILE,
                "kinect": kinect,
                "frame": frame,
                "no_depth": self.no_depth,
            },
            "joint_names": list(JOINT_NAMES),
            "nyu_joint_names": [NYU_JOINT_NAMES[i] for i in eval14],
            "joints_uvd": uvd36[eval14].tolist(),
            "joints_xyz": xyz36[eval14].tolist(),
            "intrinsics": intrinsics,
            "depth_unit": "mm",
            "nyu36": {
                "joint_names": list(NYU_JOINT_NAMES),
                "joints_uvd": uvd36.tolist(),
                "joints_xyz": xyz36.tolist(),
            },
        }
        if crop_label is not None:
            label["crop"] = crop_label
        return [
            {"__key__": key, "depth.png": encode_image(depth, DEPTH16), "json": encode_json(label)}
        ]

    # -- labels -------------------------------------------------------------------------------

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        """joint_uvd, joint_xyz as (kinects, frames, 36, 3) float64; read once per reader."""
        if self._joints is None:
            import scipy.io

            try:
                mat = scipy.io.loadmat(self.labels_path, variable_names=("joint_uvd", "joint_xyz"))
            except Exception as exc:  # a broken label file is fatal: nothing can be labeled
                raise ValueError(f"nyu-hand: cannot read {self.labels_path}: {exc}") from exc
            arrays = []
            for name in ("joint_uvd", "joint_xyz"):
                array = mat.get(name)
                if array is None:
                    raise ValueError(f"nyu-hand: {self.labels_path} has no {name!r}")
                if array.ndim != 4 or array.shape[2:] != (len(NYU_JOINT_NAMES), 3):
                    raise ValueError(
                        f"nyu-hand: {name} in {self.labels_path} has shape {array.shape}, expected "
                        f"(kinects, frames, {len(NYU_JOINT_NAMES)}, 3)"
                    )
                arrays.append(np.asarray(array, np.float64))
            if arrays[0].shape != arrays[1].shape:
                raise ValueError(
                    f"nyu-hand: joint_uvd {arrays[0].shape} and joint_xyz {arrays[1].shape} differ "
                    f"in {self.labels_path}"
                )
            self._joints = (arrays[0], arrays[1])
        return self._joints

    def _frame_joints(self, kinect: int, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """(36, 3) uvd and xyz (y down) of one view and 1-based frame."""
        uvd, xyz = self._load()
        kinects, frames = uvd.shape[:2]
        if not 1 <= kinect <= kinects or not 1 <= frame <= frames:
            raise SampleError(
                MISSING,
                f"no label for view {kinect} frame {frame}: {LABEL_FILE} holds {kinects} view(s) "
                f"of {frames} frame(s)",
                component="json",
            )
        uvd36 = uvd[kinect - 1, frame - 1].copy()
        xyz36 = xyz[kinect - 1, frame - 1] * np.array([1.0, -1.0, 1.0])  # NYU y up -> y down
        if not (np.isfinite(uvd36).all() and np.isfinite(xyz36).all()):
            raise SampleError(
                MALFORMED, f"non-finite joints for view {kinect} frame {frame}", component="json"
            )
        return uvd36, xyz36 + 0.0  # + 0.0: no -0.0 in the JSON

    # -- depth --------------------------------------------------------------------------------

    def _read_depth(self, path: str) -> np.ndarray:
        """(480, 640) uint16 mm from an NYU depth PNG."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as exc:
            raise SampleError(
                MISSING, f"cannot read the depth PNG: {exc}", component="depth.png"
            ) from None
        bgr = imdecode(data, cv2.IMREAD_UNCHANGED)
        if bgr is None:
            raise SampleError(
                UNDECODABLE, f"not a decodable image ({len(data)} bytes)", component="depth.png"
            )
        if bgr.dtype != np.uint8 or bgr.ndim != 3 or bgr.shape[2] != 3:
            raise SampleError(
                MALFORMED,
                f"expected an 8-bit 3-channel PNG with depth in G*256+B, got shape "
                f"{tuple(bgr.shape)} dtype {bgr.dtype}",
                component="depth.png",
            )
        if bgr.shape[:2] != (HEIGHT, WIDTH):
            raise SampleError(
                MALFORMED,
                f"expected a {WIDTH}x{HEIGHT} NYU frame, got {bgr.shape[1]}x{bgr.shape[0]}",
                component="depth.png",
            )
        depth = (bgr[..., 1].astype(np.uint16) << 8) | bgr[..., 0]  # OpenCV order: B, G, R
        if self.no_depth is not None:
            depth[depth == self.no_depth] = 0
        return depth

    def _crop(
        self, depth: np.ndarray, uvd36: np.ndarray, intrinsics: dict[str, float]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, float], dict[str, Any]]:
        size = self.crop
        u, v, d = (float(x) for x in uvd36[CROP_CENTER])
        if not d > 0:
            raise SampleError(
                MALFORMED,
                f"cannot crop: the centre joint {NYU_JOINT_NAMES[CROP_CENTER]} has depth {d} mm",
                component="json",
            )
        side = max(1, round(self.cube * intrinsics["fx"] / d))  # S, source pixels
        x0 = math.floor(u - (side - 1) / 2 + 0.5)  # the box's centre is within 0.5 px of u
        y0 = math.floor(v - (side - 1) / 2 + 0.5)
        # destination pixel j reads source pixel x0 + floor((j + 0.5) * S / N), in integers
        offsets = ((2 * np.arange(size) + 1) * side) // (2 * size)
        cols, rows = x0 + offsets, y0 + offsets
        patch = np.zeros((size, size), np.uint16)
        inside_c = (cols >= 0) & (cols < depth.shape[1])
        inside_r = (rows >= 0) & (rows < depth.shape[0])
        patch[np.ix_(inside_r, inside_c)] = depth[np.ix_(rows[inside_r], cols[inside_c])]
        outside_cube = np.abs(patch.astype(np.float64) - d) > self.cube / 2
        patch[outside_cube] = 0

        scale = size / side
        moved = uvd36.copy()
        moved[:, 0] = (uvd36[:, 0] - x0 + 0.5) * scale - 0.5
        moved[:, 1] = (uvd36[:, 1] - y0 + 0.5) * scale - 0.5
        cropped_intrinsics = {
            "fx": intrinsics["fx"] * scale,
            "fy": intrinsics["fy"] * scale,
            "cx": (intrinsics["cx"] - x0 + 0.5) * scale - 0.5,
            "cy": (intrinsics["cy"] - y0 + 0.5) * scale - 0.5,
        }
        label = {
            "box": [x0, y0, side, side],  # source pixels: left, top, width, height
            "scale": scale,  # destination pixels per source pixel
            "size": size,
            "cube_mm": self.cube,
            "center": NYU_JOINT_NAMES[CROP_CENTER],
            "center_uvd": [u, v, d],
            "source_size": [WIDTH, HEIGHT],
        }
        return patch, moved, cropped_intrinsics, label
