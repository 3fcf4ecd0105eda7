"""Ingest throughput (source files/s) for UnityEyes-like input and 1914x1052 GTA-V-like pairs.

The inputs are written in each dataset's real on-disk layout first (not timed):

- UnityEyes: ``imgs/N.jpg`` (800x600 RGB JPEG, as the simulator renders) + ``imgs/N.json``
  (every value a string, Unity screen coordinates), ingested to 35x55 grayscale crops;
- GTA-V: ``images/N.png`` (1914x1052 RGB, a procedural street frame) + ``labels/N.png``
  (8-bit palette PNG of Cityscapes label ids, written like Playing for Data's), ingested with
  the default ``cityscapes-19`` ontology and the image bytes kept as they are.

Then ``refinery.ingest.ingest`` runs on each with 1 worker and with one worker per core, and
the record holds source files/s (a UnityEyes item or a GTA-V pair is two files) and samples/s.

    python -m benchmarks.ingest [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import cv2
import numpy as np

from benchmarks.common import RESULTS, write_result
from refinery import ontology, sim
from refinery.ingest import ingest


def _unityeyes(root: Path, count: int) -> None:
    imgs = root / "imgs"
    imgs.mkdir(parents=True)
    rng = np.random.default_rng(0)
    base = cv2.GaussianBlur(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8), (0, 0), 4)
    for i in range(count):
        shift = np.roll(base, 7 * i, axis=1)
        cv2.imwrite(str(imgs / f"{i + 1}.jpg"), shift, [cv2.IMWRITE_JPEG_QUALITY, 95])
        cx, cy = 400 + 30 * math.sin(i), 300 + 20 * math.cos(i)

        def pt(x: float, y: float) -> str:  # Unity screen space: origin bottom-left
            return f"({x:.4f}, {600 - y:.4f}, 9.1234)"

        xs = np.linspace(cx - 60, cx + 60, 9)
        upper = [pt(x, cy - 25 * math.sin(math.pi * k / 8)) for k, x in enumerate(xs)]
        lower = [pt(x, cy + 18 * math.sin(math.pi * k / 8)) for k, x in enumerate(xs)]
        label = {
            "interior_margin_2d": upper + lower[::-1][1:-1],
            "caruncle_2d": [pt(cx - 70, cy), pt(cx - 66, cy + 3)],
            "iris_2d": [pt(cx + 12 * math.cos(a), cy + 12 * math.sin(a)) for a in range(32)],
            "eye_details": {
                "look_vec": f"({0.2 * math.sin(i):.4f}, {0.1 * math.cos(i):.4f}, -0.9700, 0.0000)",
                "pupil_size": "0.0512",
                "iris_size": "0.9123",
                "iris_texture": "eyeball_brown_1",
            },
            "lighting_details": {"skybox_texture": "cape_hill", "skybox_exposure": "1.1"},
            "eye_region_details": {"primary_skin_texture": "m01_color"},
            "head_pose": f"({355 + i % 10:.4f}, {175 + i % 20:.4f}, 0.0000)",
        }
        (imgs / f"{i + 1}.json").write_text(json.dumps(label))


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _palette_png(indices: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    height, width = indices.shape
    rows = b"".join(b"\x00" + row.tobytes() for row in indices.astype(np.uint8))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 3, 0, 0, 0))
        + _chunk(b"PLTE", bytes(v for colour in palette for v in colour))
        + _chunk(b"IDAT", zlib.compress(rows, 6))
        + _chunk(b"IEND", b"")
    )


def _gta5(root: Path, count: int) -> None:
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    palette = [label.colour for label in ontology.CITYSCAPES_LABELS[:35]]
    palette += [(0, 0, 0)] * (256 - len(palette))
    label_id = np.full(256, 0, np.uint8)  # train id -> a Cityscapes label id
    for label in ontology.CITYSCAPES_LABELS:
        if 0 <= label.train_id < ontology.IGNORE and label.id >= 0:
            label_id[label.train_id] = label.id
    frames = sim.generate("scene", "synthetic", count, seed=5, height=1052, width=1914)
    for i, frame in enumerate(frames):
        name = f"{i + 1:05d}.png"
        cv2.imwrite(str(root / "images" / name), cv2.cvtColor(frame["png"], cv2.COLOR_RGB2BGR))
        (root / "labels" / name).write_bytes(_palette_png(label_id[frame["seg.png"]], palette))


def _measure(fmt: str, src: Path, out: Path, files_per_item: int, workers: int, **opts) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = ingest(fmt, str(src), str(out), workers=workers, progress=False, options=opts)
    seconds = time.perf_counter() - start
    if summary.total_rejected:
        raise RuntimeError(f"{fmt}: {summary.total_rejected} rejects in a benchmark input")
    return {
        "items": summary.items,
        "seconds": seconds,
        "files_per_s": summary.items * files_per_item / seconds,
        "samples_per_s": summary.samples_written / seconds,
        "output_mib": sum(p.stat().st_size for p in out.glob("*.tar")) / 2**20,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny inputs (tests)")
    parser.add_argument("--unityeyes", type=int, default=2000, help="UnityEyes items")
    parser.add_argument("--gta5", type=int, default=40, help="GTA-V pairs")
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    n_eyes, n_gta = (20, 2) if args.quick else (args.unityeyes, args.gta5)
    cores = os.cpu_count() or 1
    figures: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _unityeyes(root / "unityeyes", n_eyes)
        _gta5(root / "gta5", n_gta)
        for workers in sorted({1, cores}):
            figures[f"unityeyes_workers{workers}"] = _measure(
                "unityeyes", root / "unityeyes", root / "o1", 2, workers, size=(35, 55)
            )
            figures[f"gta5_workers{workers}"] = _measure(
                "gta5", root / "gta5", root / "o2", 2, workers
            )
    for key, f in figures.items():
        print(f"{key}: {f['files_per_s']:.0f} files/s ({f['items']} items, {f['seconds']:.1f} s)")
    settings = {
        "unityeyes": f"{n_eyes} items: 800x600 JPEG q95 + JSON -> 35x55 gray crops",
        "gta5": f"{n_gta} pairs: 1914x1052 RGB PNG + palette label PNG -> cityscapes-19",
        "workers": sorted({1, cores}),
        "files_per_item": 2,
        "disk": "local temporary directory (page cache warm after writing)",
    }
    write_result("ingest", figures, settings, results=Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
