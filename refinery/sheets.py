"""Contact sheets: decoded samples drawn as tiles with their labels, for people to look at.

Each domain is drawn so that a wrong label is visible: the gaze direction as an arrow from the
iris centre, hand joints as dots on the depth map, scene class ids as a colour overlay.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from refinery.ontology import TRAIN_COLOURS
from refinery.samples import image_component

# Cityscapes' own colours for its 19 train ids (cityscapesScripts labels.py); 255 = ignore.
CITYSCAPES_COLOURS = np.array(TRAIN_COLOURS, dtype=np.uint8)


def seg_palette() -> np.ndarray:
    """(256, 3) uint8: Cityscapes colours for ids 0-18, black for 255, fixed others."""
    palette = np.random.default_rng(19).integers(40, 256, size=(256, 3), dtype=np.uint8)
    palette[: len(CITYSCAPES_COLOURS)] = CITYSCAPES_COLOURS
    palette[255] = 0
    return palette


def colourise_seg(seg: np.ndarray) -> np.ndarray:
    return seg_palette()[seg]  # (H, W) -> (H, W, 3)


def depth_to_rgb(depth: np.ndarray) -> np.ndarray:
    """16-bit depth as a colour map over its valid range; 0 (no measurement) stays black."""
    valid = depth > 0
    if valid.any():
        lo, hi = np.percentile(depth[valid], [1, 99])
        scaled = np.clip((depth.astype(np.float32) - lo) / max(hi - lo, 1.0), 0, 1)
    else:
        scaled = np.zeros(depth.shape, np.float32)
    rgb = cv2.applyColorMap((255 - scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    rgb[~valid] = 0
    return np.ascontiguousarray(rgb)


def _fit(image: np.ndarray, height: int) -> tuple[np.ndarray, float]:
    scale = height / image.shape[0]
    width = max(1, round(image.shape[1] * scale))
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_NEAREST), scale


def tile(sample: dict[str, Any], domain: str, *, height: int = 96) -> np.ndarray:
    """One decoded sample drawn with its labels, (height, W, 3) uint8 RGB."""
    name = image_component(sample, domain)
    image = sample[name]
    label = sample.get("json") if isinstance(sample.get("json"), dict) else {}
    if domain == "gaze":
        rgb, scale = _fit(cv2.cvtColor(image, cv2.COLOR_GRAY2RGB), height)
        _draw_gaze(rgb, label, scale)
    elif domain == "hand":
        rgb, scale = _fit(depth_to_rgb(image), height)
        for u, v, _ in label.get("joints_uvd", []):
            cv2.circle(rgb, (round(u * scale), round(v * scale)), 2, (255, 255, 255), -1)
    else:
        rgb, _ = _fit(image, height)
        seg = sample.get("seg.png")
        if isinstance(seg, np.ndarray):
            overlay, _ = _fit(colourise_seg(seg), height)
            rgb = np.concatenate([rgb, overlay], axis=1)
    return rgb


def _draw_gaze(rgb: np.ndarray, label: dict[str, Any], scale: float) -> None:
    gaze = label.get("gaze")
    if not isinstance(gaze, dict):
        return
    pitch, yaw = float(gaze["pitch"]), float(gaze["yaw"])
    landmarks = label.get("landmarks") or {}
    centre = landmarks.get("iris_centre") or [
        rgb.shape[1] / scale / 2 - 0.5,
        rgb.shape[0] / scale / 2 - 0.5,
    ]
    x0, y0 = (centre[0] + 0.5) * scale, (centre[1] + 0.5) * scale
    # image displacement of the look vector (x right, y down): (-cos p sin y, -sin p)
    length = 0.45 * rgb.shape[0]
    dx, dy = -np.cos(pitch) * np.sin(yaw) * length, -np.sin(pitch) * length
    cv2.arrowedLine(
        rgb,
        (round(x0), round(y0)),
        (round(x0 + dx), round(y0 + dy)),
        (255, 60, 0),
        2,
        tipLength=0.25,
    )


def grid(
    rows: Sequence[Sequence[np.ndarray]], *, titles: Sequence[str] | None = None
) -> np.ndarray:
    """Lay tiles out row by row, each row optionally headed by a title band."""
    pad = 2
    width = max(sum(t.shape[1] + pad for t in row) + pad for row in rows if row)
    bands = []
    for i, row in enumerate(rows):
        if titles is not None and titles[i]:
            band = np.full((18, width, 3), 255, np.uint8)
            cv2.putText(band, titles[i], (4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
            bands.append(band)
        height = max((t.shape[0] for t in row), default=0)
        strip = np.full((height + 2 * pad, width, 3), 255, np.uint8)
        x = pad
        for t in row:
            strip[pad : pad + t.shape[0], x : x + t.shape[1]] = t
            x += t.shape[1] + pad
        bands.append(strip)
    return np.concatenate(bands, axis=0)


def save_png(path: str | Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")
    return path
