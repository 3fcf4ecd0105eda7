"""What is in a set of shards: components and counts per shard, labels, rejects, a contact sheet."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from refinery import sheets
from refinery.samples import DOMAINS, SampleError, components, decode_sample, is_labeled
from refinery.shards import Rejects, expand_urls, tar_samples


def guess_domain(sample: dict[str, Any]) -> str | None:
    """The domain a raw sample belongs to: its label's ``domain`` field, else its components."""
    raw = sample.get("json")
    if isinstance(raw, bytes):
        try:
            declared = json.loads(raw).get("domain")
        except (ValueError, AttributeError):
            declared = None
        if declared in DOMAINS:
            return declared
    if "seg.png" in sample or "jpg" in sample:
        return "scene"
    if "depth.png" in sample and "png" not in sample:
        return "hand"
    if "png" in sample:
        return "gaze"
    return None


def _abbreviate(value: Any, items: int = 3) -> Any:
    """Long lists cut to their first items plus a count, so a label fits on a line."""
    if isinstance(value, dict):
        return {k: _abbreviate(v, items) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) <= items + 1:
            return [_abbreviate(v, items) for v in value]
        return [*(_abbreviate(v, items) for v in value[:items]), f"... {len(value)} items"]
    return value


@dataclass
class ShardSummary:
    url: str
    samples: int = 0
    components: Counter[str] = field(default_factory=Counter)
    rejects: Counter[str] = field(default_factory=Counter)
    unlabeled: int = 0  # good samples without labels (a real pool, your own images)


@dataclass
class Inspection:
    domain: str | None
    shards: list[ShardSummary]
    rejects: Rejects
    labels: list[tuple[str, dict[str, Any]]]
    sheet: Path | None = None

    @property
    def samples(self) -> int:
        return sum(s.samples for s in self.shards)

    def lines(self) -> list[str]:
        out = []
        for s in self.shards:
            comps = ", ".join(f"{name} {n}" for name, n in sorted(s.components.items()))
            bad = f"; rejected {sum(s.rejects.values())}" if s.rejects else ""
            bare = f"; unlabeled {s.unlabeled}" if s.unlabeled else ""
            out.append(f"{s.url}: {s.samples} samples; components: {comps or 'none'}{bare}{bad}")
        out.append(
            f"total: {self.samples} good samples in {len(self.shards)} "
            f"shard{'s' if len(self.shards) != 1 else ''}"
            f" (domain {self.domain or 'unknown'}); {self.rejects.summary()}"
        )
        unlabeled = sum(s.unlabeled for s in self.shards)
        if unlabeled:
            out.append(
                f'{unlabeled} of them unlabeled (no json, or "labeled": false): a real pool, '
                "or images to refine without labels; --synthetic needs labeled samples"
            )
        for record in self.rejects.records[:20]:
            where = ", ".join(
                f"{k} {record[k]!r}" for k in ("key", "component") if record[k] is not None
            )
            out.append(f"  rejected {record['url']}{', ' + where if where else ''}: "
                       f"{record['reason']}: {record['detail']}")  # fmt: skip
        if len(self.rejects.records) > 20:
            out.append(f"  ... {len(self.rejects.records) - 20} more rejects")
        for key, label in self.labels:
            out.append(f"label {key}: {json.dumps(_abbreviate(label), sort_keys=True)}")
        if self.sheet is not None:
            out.append(f"contact sheet: {self.sheet}")
        return out


def inspect(
    groups: Sequence[str],
    *,
    domain: str | None = None,
    labels: int = 3,
    sheet: str | Path | None = None,
    per_row: int = 8,
    rows_per_group: int = 2,
) -> Inspection:
    """Read every sample of every shard (bad ones are counted, not raised) and summarise.

    ``groups`` are URL specs; on the contact sheet each group gets its own titled rows, so
    ``inspect(["synthetic/", "real/"])`` puts synthetic above real.
    """
    rejects = Rejects()
    summaries: list[ShardSummary] = []
    shown: list[tuple[str, dict[str, Any]]] = []
    tiles: list[list[Any]] = []
    for spec in groups:
        group_tiles: list[Any] = []
        for url in expand_urls(spec):
            summary = ShardSummary(url)
            summaries.append(summary)

            def handler(error: SampleError, summary: ShardSummary = summary) -> None:
                summary.rejects[error.reason] += 1
                rejects(error)

            for raw in tar_samples(url, handler=handler):
                if domain is None:
                    domain = guess_domain(raw)
                try:
                    sample = decode_sample(raw, domain)
                except SampleError as error:
                    handler(error.with_url(url))
                    continue
                summary.samples += 1
                summary.unlabeled += not is_labeled(sample)
                summary.components.update(components(raw))
                if len(shown) < labels and isinstance(sample.get("json"), dict):
                    shown.append((sample["__key__"], sample["json"]))
                if sheet is not None and domain and len(group_tiles) < per_row * rows_per_group:
                    group_tiles.append(sheets.tile(sample, domain))
        tiles.append(group_tiles)
    sheet_path = None
    if sheet is not None and any(tiles):
        rows, titles = [], []
        for spec, group_tiles in zip(groups, tiles, strict=True):
            for start in range(0, max(len(group_tiles), 1), per_row):
                rows.append(group_tiles[start : start + per_row])
                titles.append(spec if start == 0 else "")
        sheet_path = sheets.save_png(sheet, sheets.grid(rows, titles=titles))
    return Inspection(domain, summaries, rejects, shown, sheet_path)
