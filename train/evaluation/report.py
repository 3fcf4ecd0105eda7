"""The report of ``refinery evaluate``: one self-contained HTML page, its JSON and its plots.

``write_report(report, out)`` takes the plain dict that ``train.evaluation.evaluate`` builds (format
``refinery-evaluate/1``: task, inputs, per-training-set metrics over seeds, gap closed, label
drift, per-sample error distributions, PCK curves or per-class IoU) and writes::

    out/report.json          the dict, plus "files" (paths relative to out) and "nonfinite"
    out/report.html          every section of SECTIONS, images inlined as data: URIs
    out/plots/*.png          errors.png, pck.png, per_class_iou.png, seeds.png, where measured
    out/samples.png          the contact sheet, when one is given

The page needs no server, no script and nothing from the network: open it from disk or mail
it. Non-finite numbers (a diverged seed's NaN) are written as null, never as NaN; their
places are listed under ``"nonfinite"`` and flagged in the summary. Plots are drawn on a bare
``matplotlib.figure.Figure`` with the Agg canvas, so the caller's pyplot backend is untouched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

FORMAT = "refinery-evaluate/1"
SECTIONS: tuple[str, ...] = (
    "summary",
    "results",
    "gap",
    "drift",
    "realism",
    "labels",
    "plots",
    "samples",
    "settings",
)
TRAINING_SETS = ("synthetic", "refined", "real")
# ColorBrewer Dark2: distinguishable in print and for the common colour-vision deficiencies
COLOURS = {"synthetic": "#d95f02", "refined": "#1b9e77", "real": "#7570b3"}
OTHER_COLOURS = ("#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")
SHEET_CAPTION = "rows: synthetic, refined (same keys), real test"
MAX_LISTED = 20  # differing label keys and non-finite places shown / kept by name

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial,
  sans-serif; color: #1d1d1f; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 960px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0 0 .25rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .5rem; border-bottom: 1px solid #ddd; padding-bottom: .2rem; }
h3 { font-size: 1rem; margin: 1.25rem 0 .4rem; }
.meta, .note, figcaption { color: #555; font-size: .9rem; }
.absent { color: #777; font-style: italic; }
.warn { background: #fff4e5; border-left: 4px solid #e8a33d; padding: .5rem .75rem; }
.bad { color: #b3261e; font-weight: 600; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .92rem; }
th, td { border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f6; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.best td { background: #e6f4ea; }
tr.best td:first-child { font-weight: 600; }
figure { margin: 1rem 0; }
img { max-width: 100%; height: auto; border: 1px solid #eee; }
img.sheet { image-rendering: pixelated; }
pre { background: #f7f7f9; border: 1px solid #e3e3e8; padding: .6rem; overflow-x: auto;
  font-size: .82rem; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: .3rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; min-width: 0; }
ul.keys { columns: 2; font-family: ui-monospace, monospace; font-size: .85rem; }
"""


# -- entry point ----------------------------------------------------------------------------


def write_report(report: dict, out: str | Path, *, sheet: np.ndarray | None = None) -> Path:
    """Write out/report.json, out/report.html, out/plots/*.png (and out/samples.png when `sheet`
    (H, W, 3) uint8 RGB is given); return the HTML path.

    Plot and sheet files of an earlier report in ``out`` that this one does not measure are
    removed, so the directory always matches its report.json.
    """
    _check(report)
    clean, nonfinite = _finite(report)
    sheet_png = None if sheet is None else _sheet_png(sheet)  # refuse a bad sheet before writing
    out = Path(out)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {"html": "report.html", "json": "report.json", "plots": {}}
    images: dict[str, bytes] = {}
    for name, draw in PLOTS.items():
        path = out / "plots" / f"{name}.png"
        fig = draw(clean)
        if fig is None:
            path.unlink(missing_ok=True)
            continue
        images[name] = _png(fig)
        path.write_bytes(images[name])
        files["plots"][name] = f"plots/{name}.png"
    if sheet_png is not None:
        images["samples"] = sheet_png
        (out / "samples.png").write_bytes(sheet_png)
        files["samples"] = "samples.png"
    else:
        (out / "samples.png").unlink(missing_ok=True)
    record = {**clean, "files": files}
    if nonfinite["count"]:
        record["nonfinite"] = nonfinite
    (out / "report.json").write_text(json.dumps(record, indent=2, allow_nan=False) + "\n")
    page = out / "report.html"
    page.write_text(_page(record, images), encoding="utf-8")
    return page


def _check(report: dict) -> None:
    if not isinstance(report, dict):
        raise TypeError(f"report must be a dict, got {type(report).__name__}")
    if report.get("format") != FORMAT:
        raise ValueError(f"report format {report.get('format')!r} is not {FORMAT!r}")
    for key in ("domain", "task", "results"):
        if key not in report:
            raise ValueError(f"report has no {key!r}")
    if not isinstance(report["task"].get("metric"), dict) or "key" not in report["task"]["metric"]:
        raise ValueError("report task has no metric with a 'key'")


def _finite(obj: Any, where: str = "") -> tuple[Any, dict[str, Any]]:
    """A JSON-able copy of ``obj`` with NaN/inf as None, and where they were."""
    found: list[str] = []

    def walk(x: Any, at: str) -> Any:
        if isinstance(x, np.ndarray):
            x = x.tolist()
        elif isinstance(x, np.generic):
            x = x.item()
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            if math.isfinite(x):
                return x
            found.append(at)
            return None
        if isinstance(x, dict):
            return {str(k): walk(v, f"{at}.{k}" if at else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [walk(v, f"{at}[{i}]") for i, v in enumerate(x)]
        raise TypeError(f"report{'.' + at if at else ''}: {type(x).__name__} is not JSON-able")

    clean = walk(obj, where)
    return clean, {"count": len(found), "first": found[:MAX_LISTED]}


def _sheet_png(sheet: np.ndarray) -> bytes:
    import cv2

    sheet = np.asarray(sheet)
    if sheet.ndim != 3 or sheet.shape[2] != 3 or sheet.dtype != np.uint8:
        raise ValueError(f"sheet must be (H, W, 3) uint8 RGB, got {sheet.shape} {sheet.dtype}")
    ok, png = cv2.imencode(".png", cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("could not encode the sheet as PNG")
    return png.tobytes()


# -- reading the dict -----------------------------------------------------------------------


def _sets(report: dict) -> list[str]:
    """Training sets in report order: synthetic, refined, real, then any others."""
    results = report.get("results") or {}
    return [s for s in TRAINING_SETS if s in results] + [
        s for s in results if s not in TRAINING_SETS
    ]


def _metric(report: dict) -> dict[str, Any]:
    return report["task"]["metric"]


def _stat(report: dict, name: str, key: str) -> dict[str, Any] | None:
    entry = (report.get("results") or {}).get(name) or {}
    return (entry.get("metrics") or {}).get(key)


def _runs(stat: dict | None) -> list[float | None]:
    return list((stat or {}).get("runs") or [])


def _colour(name: str, i: int) -> str:
    return COLOURS.get(name, OTHER_COLOURS[i % len(OTHER_COLOURS)])


def _floats(values: Sequence[Any] | None) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in values or []], dtype=np.float64)


def _count_key(name: str) -> str:
    return "real_train" if name == "real" else name


# -- formatting -----------------------------------------------------------------------------


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _decimals(x: float, digits: int = 3) -> int:
    if x == 0:
        return digits - 1
    return min(6, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def _num(x: float | None, decimals: int | None = None) -> str:
    """3 significant digits without an exponent: 6.10, 0.0421, 123; None as an en dash."""
    if x is None:
        return "–"
    if isinstance(x, int) and not isinstance(x, bool) and decimals is None:
        return f"{x:,}"
    return f"{x:.{_decimals(x) if decimals is None else decimals}f}"


def _pm(stat: dict | None, unit: str = "") -> str:
    """'mean ± std unit': the mean to 3 significant digits, the std to at least 1."""
    if not stat or stat.get("mean") is None:
        return "–"
    mean, std = stat["mean"], stat.get("std")
    if std is None:
        return _with_unit(_num(mean), unit)
    decimals = max(_decimals(mean), _decimals(std, 1))
    return _with_unit(f"{_num(mean, decimals)} ± {_num(std, decimals)}", unit)


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("°", "%") else f"{text} {unit}"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _better(metric: dict) -> str:
    return "higher is better ↑" if metric.get("higher_is_better") else "lower is better ↓"


def _metric_name(metric: dict) -> str:
    label = metric.get("label") or metric["key"]
    return f"{label} ({metric['unit']})" if metric.get("unit") else label


def _table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    best: Sequence[int] = (),
    groups: Sequence[tuple[str, int]] = (),
) -> str:
    """Cells are HTML already; all columns but the first are right-aligned numbers.

    ``groups`` is an optional header row above ``head``: (HTML, columns spanned) pairs.
    """
    cls = ["" if i == 0 else ' class="num"' for i in range(len(head))]
    out = ["<table>"]
    if groups:
        out.append(
            "<tr>"
            + "".join(
                f'<th colspan="{n}">{h}</th>' if n > 1 else f"<th>{h}</th>" for h, n in groups
            )
            + "</tr>"
        )
    out.append(
        "<tr>" + "".join(f"<th{c}>{h}</th>" for c, h in zip(cls, head, strict=True)) + "</tr>"
    )
    for i, row in enumerate(rows):
        tr = ' class="best"' if i in best else ""
        cells = "".join(f"<td{c}>{v}</td>" for c, v in zip(cls, row, strict=True))
        out.append(f"<tr{tr}>{cells}</tr>")
    out.append("</table>")
    return "\n".join(out)


def _pretty(value: Any, indent: int = 0) -> str:
    """JSON, indented, with lists of numbers and short strings kept on one line."""
    pad = "  " * (indent + 1)
    if isinstance(value, dict) and value:
        items = [f"{pad}{json.dumps(k)}: {_pretty(v, indent + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + "  " * indent + "}"
    if isinstance(value, list) and value:
        flat = json.dumps(value, ensure_ascii=False)
        if len(flat) <= 80 and not any(isinstance(v, (dict, list)) for v in value):
            return flat
        items = [pad + _pretty(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "  " * indent + "]"
    return json.dumps(value, ensure_ascii=False)


def _json_block(value: Any) -> str:
    return f"<pre>{_esc(_pretty(value))}</pre>"


# -- the page -------------------------------------------------------------------------------


def _page(record: dict, images: dict[str, bytes]) -> str:
    title = record.get("title") or f"Refinement report: {record['domain']}"
    meta = [f"format {record['format']}"]
    if record.get("created"):
        meta.insert(0, f"created {record['created']}")
    sections = {
        "summary": ("Summary", _summary(record)),
        "results": ("Results on the real test set", _results(record)),
        "gap": ("Synthetic-to-real gap closed", _gap(record)),
        "drift": ("Label drift", _drift(record)),
        "realism": ("Realism (no labels needed)", _realism(record)),
        "labels": ("Labels kept", _labels(record)),
        "plots": ("Plots", _plots(record, images)),
        "samples": ("Samples", _samples(record, images)),
        "settings": ("Inputs and settings", _settings(record)),
    }
    body = "\n".join(
        f'<section id="{sid}">\n<h2>{sections[sid][0]}</h2>\n{sections[sid][1]}\n</section>'
        for sid in SECTIONS
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{_esc(title)}</title>
<link rel="icon" href="data:,">
<style>{CSS}</style>
</head>
<body>
<main>
<h1>{_esc(title)}</h1>
<p class="meta">{_esc(" · ".join(meta))}</p>
{body}
</main>
</body>
</html>
"""


def _summary(record: dict) -> str:
    metric, task = _metric(record), record["task"]
    unit = metric.get("unit") or ""
    counts = record.get("counts") or {}
    seeds = record.get("seeds") or []
    figures = ", ".join(
        f"{_esc(name)} {_esc(_pm(_stat(record, name, metric['key']), unit))}"
        for name in _sets(record)
    )
    test = (
        f" on {_esc(_num(counts['real_test']))} real test samples"
        if counts.get("real_test")
        else ""
    )
    over = f" over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}" if seeds else ""
    first = (
        f"Domain <b>{_esc(record['domain'])}</b>, network <b>{_esc(task.get('network', '?'))}</b>: "
        f"{_esc(metric.get('label') or metric['key'])}{test} ({_esc(_better(metric))}), "
        f"trained on {figures}{over} (mean ± std)."
    )
    if not _sets(record):
        first = (
            f"Domain <b>{_esc(record['domain'])}</b>: the real test set "
            f"({_esc(_num(counts.get('real_test')))} samples) has no labels, so no task network "
            "was scored on it; realism and label drift are measured without them."
        )
    parts = [first, _gap_sentence(record)]
    sets = (record.get("realism") or {}).get("sets") or {}
    if sets:
        parts.append(
            "Realism: a classifier tells "
            + ", ".join(
                f"{_esc(name)} from real {_esc(_pct(entry['c2st_accuracy']['mean']))}"
                for name, entry in sets.items()
            )
            + " of the time (50% = indistinguishable)."
        )
    drift = record.get("label_drift")
    if drift and drift.get("mean") is not None:
        parts.append(
            f"Label drift: {_esc(_pm(drift, drift.get('unit') or ''))}"
            + (f" ({_esc(drift['label'])})." if drift.get("label") else ".")
        )
    robust = record.get("label_drift_robust")
    if robust and robust.get("mean") is not None:
        parts.append(
            f"Of an appearance-robust network: {_esc(_pm(robust, robust.get('unit') or ''))}."
        )
    labels = record.get("labels")
    if labels and labels.get("paired") is not None:
        parts.append(
            f"Labels kept: {_esc(_num(labels.get('identical')))} of "
            f"{_esc(_num(labels['paired']))} paired samples identical."
        )
    out = [f"<p>{' '.join(parts)}</p>"]
    nonfinite = record.get("nonfinite")
    if nonfinite:
        places = ", ".join(_esc(p) for p in nonfinite["first"])
        more = nonfinite["count"] - len(nonfinite["first"])
        out.append(
            f'<p class="warn">{nonfinite["count"]} non-finite value(s) (NaN or inf) in the '
            f"input were written as null: {places}{f', and {more} more' if more > 0 else ''}.</p>"
        )
    return "\n".join(out)


def _gap_sentence(record: dict) -> str:
    gap = record.get("gap_closed")
    if record.get("real_test_labeled") is False:
        return "The share of the synthetic-to-real gap closed was not measured: no real labels."
    if not gap or gap.get("of_means") is None:
        if "real" not in (record.get("results") or {}):
            return "The share of the synthetic-to-real gap closed was not measured: no real training data given."
        return "The share of the synthetic-to-real gap closed was not measured."
    mean, over = gap["of_means"], gap.get("mean_over_seeds")
    seeds = f" (mean of the per-seed values: {_pct(over)})" if over is not None else ""
    if mean < 0:
        return (
            f'<span class="bad">Refinement made it worse: it closed {_pct(mean)} of the '
            f"synthetic-to-real gap on the mean errors</span>{seeds} (the network trained on "
            "refined data is further from the real-data one than the synthetic-data network)."
        )
    beyond = " (more than 100%: refined beat real training data)" if mean > 1 else ""
    return f"Refinement closed {_pct(mean)} of the synthetic-to-real gap on the mean errors{seeds}{beyond}."


def _results(record: dict) -> str:
    if not _sets(record):
        return '<p class="absent">Not measured: the real test set has no labels.</p>'
    metric = _metric(record)
    key = metric["key"]
    keys = [key]
    for name in _sets(record):
        keys += [k for k in (record["results"][name].get("metrics") or {}) if k not in keys]
    seeds = record.get("seeds") or []
    n_runs = max((len(_runs(_stat(record, s, key))) for s in _sets(record)), default=0)
    run_names = [f"seed {s}" for s in seeds] if len(seeds) == n_runs else []
    run_names += [f"run {i}" for i in range(len(run_names), n_runs)]
    counts = record.get("counts") or {}

    means = {s: (_stat(record, s, key) or {}).get("mean") for s in _sets(record)}
    scored = [m for m in means.values() if m is not None]
    best = (max if metric.get("higher_is_better") else min)(scored) if scored else None

    head = [
        "training set",
        "training samples",
        f"<b>{_esc(_metric_name(metric))}</b>",
        *(f"<code>{_esc(k)}</code>" for k in keys[1:]),
        *(_esc(r) for r in run_names),
    ]
    groups = [("", 2), ("mean ± std over seeds", len(keys))]
    if run_names:
        groups.append((f"{_esc(_metric_name(metric))} per seed", len(run_names)))
    rows = []
    for name in _sets(record):
        cells = [
            _esc(name),
            _esc(_num(counts.get(_count_key(name)))),
            f"<b>{_esc(_pm(_stat(record, name, key)))}</b>",
            *(_esc(_pm(_stat(record, name, k))) for k in keys[1:]),
        ]
        runs = _runs(_stat(record, name, key))
        places = _decimals(means[name]) if means[name] is not None else None
        cells += [_esc(_num(runs[i], places)) if i < len(runs) else "–" for i in range(n_runs)]
        rows.append(cells)
    note = (
        f'<p class="note">Mean ± std over seeds. Primary metric: {_esc(_metric_name(metric))}, '
        f"<b>{_esc(_better(metric))}</b>; the best training set is highlighted.</p>"
    )
    if "real" not in (record.get("results") or {}):
        note += '<p class="note">No real training data given: no real-data row.</p>'
    description = record["task"].get("description")
    if description:
        note += f'<p class="note">Task: {_esc(description)}</p>'
    best_rows = [i for i, s in enumerate(_sets(record)) if best is not None and means[s] == best]
    return _table(head, rows, best=best_rows, groups=groups) + "\n" + note


def _gap(record: dict) -> str:
    gap = record.get("gap_closed")
    if record.get("real_test_labeled") is False:
        return '<p class="absent">Not measured: the real test set has no labels.</p>'
    if not gap:
        if "real" not in (record.get("results") or {}):
            return '<p class="absent">Not measured: no real training data given.</p>'
        return '<p class="absent">Not measured.</p>'
    runs = list(gap.get("runs") or [])
    rows = [
        ["of the means (formula on each set's mean error)", _pct_cell(gap.get("of_means"))],
        ["mean over seeds (of the per-seed values)", _pct_cell(gap.get("mean_over_seeds"))],
    ]
    rows += [
        [_esc(f"seed {s}"), _pct_cell(r)]
        for s, r in zip(_seed_names(record, runs), runs, strict=True)
    ]
    out = [_table(["", "gap closed"], rows), f"<p>{_gap_sentence(record)}</p>"]
    if gap.get("note"):
        out.append(f'<p class="note">{_esc(gap["note"])}</p>')
    if any(r is None for r in runs):
        out.append('<p class="note">–: not defined for that seed (e.g. no gap to close).</p>')
    return "\n".join(out)


def _pct_cell(x: float | None) -> str:
    text = _esc(_pct(x))
    return f'<span class="bad">{text}</span>' if x is not None and x < 0 else text


def _seed_names(record: dict, runs: Sequence[Any]) -> list[Any]:
    seeds = list(record.get("seeds") or [])
    return seeds if len(seeds) == len(runs) else list(range(len(runs)))


def _drift(record: dict) -> str:
    drift = record.get("label_drift")
    if not drift:
        return '<p class="absent">Not measured.</p>'
    robust = record.get("label_drift_robust")
    columns = {"task network trained on synthetic": drift}
    if robust:
        columns["the same, appearance-robust"] = robust
    unit = drift.get("unit") or ""
    runs = list(drift.get("runs") or [])
    per_seed = [d.get("runs") or [None] * len(runs) for d in columns.values()]
    rows = [["mean ± std over seeds", *(_esc(_pm(d, unit)) for d in columns.values())]]
    rows += [
        [_esc(f"seed {seed}"), *(_esc(_with_unit(_num(r), unit)) for r in values)]
        for seed, *values in zip(_seed_names(record, runs), *per_seed, strict=True)
    ]
    out = []
    if drift.get("label"):
        out.append(f"<p>{_esc(drift['label'])}</p>")
    out.append(_table(["", *columns], rows))
    for name, d in columns.items():
        if d.get("description"):
            out.append(f'<p class="note">{_esc(name)}: {_esc(d["description"])}</p>')
    return "\n".join(out)


def _realism(record: dict) -> str:
    realism = record.get("realism")
    if not realism or not realism.get("sets"):
        return '<p class="absent">Not measured.</p>'
    sets = realism["sets"]
    seeds = record.get("seeds") or []
    head = ["images", "two-sample test accuracy", "null band (95%)", "KID", *(
        f"seed {s}" for s in seeds
    )]  # fmt: skip
    rows = []
    for name, entry in sets.items():
        c2st, kid = entry["c2st_accuracy"], entry.get("kid") or {}
        runs = list(c2st.get("runs") or [])
        rows.append(
            [
                _esc(f"{name} vs real"),
                f"<b>{_esc(_pm(c2st))}</b>",
                _esc(f"0.5 ± {_num(entry.get('c2st_null_band'))}"),
                _esc(_pm(kid) if kid else "–"),
                *(_esc(_num(runs[i])) if i < len(runs) else "–" for i in range(len(seeds))),
            ]
        )
    first = next(iter(sets.values()))
    tested, learned = first.get("c2st_test_images"), first.get("c2st_train_images")
    notes = [
        f"Two-sample test: {realism.get('note', '')}; {_num(tested)} held-out images per test, "
        f"{_num(realism.get('real_images'))} real images in all; mean ± std over seeds (split, "
        "draw and initialisation). A value inside the null band is not told apart."
    ]
    repeats = first.get("c2st_classifiers_per_seed", 1)
    if repeats > 1:
        spread = ", ".join(
            f"{name} ± {_num(entry['c2st_classifier_std'])}" for name, entry in sets.items()
        )
        notes.append(
            f"Each seed's accuracy is the mean of {repeats} classifiers (their own split, draw "
            f"and initialisation); their spread on the same images, pooled over seeds: {spread}."
        )
    if learned is not None:  # reports written before the key was added lack it
        notes.append(
            f"The test's classifier learned from {_num(learned)} images (half real, half "
            "candidate). A classifier given fewer images tells sets apart less often, so compare "
            "accuracies only between tests that learned from the same number."
        )
    if realism.get("kid_note"):
        notes.append(f"KID: {realism['kid_note']}; mean ± std over random subsets.")
    return _table(head, rows) + "\n" + "\n".join(f'<p class="note">{_esc(n)}</p>' for n in notes)


def _labels(record: dict) -> str:
    labels = record.get("labels")
    if not labels:
        return '<p class="absent">Not recorded.</p>'
    names = {
        "paired": "paired (same key in synthetic and refined)",
        "identical": "identical labels",
        "unpaired_refined": "refined samples with no synthetic source",
        "missing_from_refined": "synthetic samples missing from refined",
    }
    rows = [[_esc(text), _esc(_num(labels.get(k)))] for k, text in names.items() if k in labels]
    rows += [
        [_esc(k), _esc(_num(v) if isinstance(v, (int, float)) else v)]
        for k, v in labels.items()
        if k not in names and k != "differing_keys"
    ]
    out = [_table(["", "samples"], rows)]
    differing = list(labels.get("differing_keys") or [])
    paired, identical = labels.get("paired"), labels.get("identical")
    if differing or (paired is not None and identical is not None and identical < paired):
        shown = "".join(f"<li>{_esc(k)}</li>" for k in differing[:MAX_LISTED])
        more = len(differing) - MAX_LISTED
        out.append(
            '<div class="warn"><p><b>Refinement changed labels</b>'
            + (f" of {len(differing)} sample(s)" if differing else "")
            + (":" if differing else ".")
            + "</p>"
            + (f'<ul class="keys">{shown}</ul>' if shown else "")
            + (f"<p>and {more} more (all in report.json).</p>" if more > 0 else "")
            + "</div>"
        )
    return "\n".join(out)


def _img(png: bytes, alt: str, cls: str = "") -> str:
    data = base64.b64encode(png).decode("ascii")
    attr = f' class="{cls}"' if cls else ""
    return f'<img{attr} alt="{_esc(alt)}" src="data:image/png;base64,{data}">'


def _plots(record: dict, images: dict[str, bytes]) -> str:
    out = []
    for name, (title, caption, absent) in PLOT_TEXT.items():
        out.append(f"<h3>{_esc(title)}</h3>")
        if name in images:
            path = (record.get("files") or {}).get("plots", {}).get(name, "")
            out.append(
                f"<figure>{_img(images[name], title)}<figcaption>{_esc(caption(record))} "
                f"({_esc(path)})</figcaption></figure>"
            )
        else:
            out.append(f'<p class="absent">Not plotted: {_esc(absent(record))}.</p>')
        if name == "per_class_iou" and record.get("per_class_iou"):
            out.append(_iou_table(record))
    return "\n".join(out)


def _iou_table(record: dict) -> str:
    iou = record["per_class_iou"]
    values = iou.get("values") or {}
    sets = [s for s in _sets(record) if s in values] + [s for s in values if s not in _sets(record)]
    rows = [
        [_esc(c)] + [_esc(_num(values[s][i])) if i < len(values[s] or []) else "–" for s in sets]
        for i, c in enumerate(iou.get("classes") or [])
    ]
    table = _table(["class", *(_esc(s) for s in sets)], rows)
    return (
        f"<details><summary>Per-class IoU as a table (– : class absent from the test set "
        f"and the predictions)</summary>\n{table}\n</details>"
    )


def _samples(record: dict, images: dict[str, bytes]) -> str:
    if "samples" not in images:
        return '<p class="absent">No contact sheet given.</p>'
    caption = record.get("sheet_caption") or SHEET_CAPTION
    path = (record.get("files") or {}).get("samples", "")
    return (
        f"<figure>{_img(images['samples'], 'contact sheet', 'sheet')}"
        f"<figcaption>{_esc(caption)} ({_esc(path)})</figcaption></figure>"
    )


def _inputs(urls: Any) -> str:
    if not urls:
        return '<p class="absent">none given</p>'
    if isinstance(urls, list):
        return "<pre>" + "\n".join(_esc(u) for u in urls) + "</pre>"
    return _json_block(urls)


def _settings(record: dict) -> str:
    items = [
        ("inputs", "Inputs"),
        ("counts", "Counts"),
        ("seeds", "Seeds"),
        ("settings", "Settings"),
        ("task", "Task"),
        ("seconds", "Seconds"),
        ("memory", "Peak memory (MiB)"),
        ("machine", "Machine"),
        ("versions", "Versions"),
        ("created", "Created"),
    ]
    out = ["<dl>"]
    for key, name in items:
        value = record.get(key)
        if key == "inputs" and isinstance(value, dict):
            shown = "".join(f"<p><b>{_esc(k)}</b></p>{_inputs(v)}" for k, v in value.items())
        elif value is None:
            shown = '<span class="absent">not recorded</span>'
        elif isinstance(value, (dict, list)):
            shown = _json_block(value)
        else:
            shown = _esc(value)
        out.append(f"<dt>{name}</dt><dd>{shown}</dd>")
    out.append("</dl>")
    return "\n".join(out)


# -- plots ----------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    """A Figure on its own Agg canvas: no pyplot, no global backend switch."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no version stamp
    fig.clear()
    return buf.getvalue()


def _percent_axis(axis: Any) -> None:
    from matplotlib.ticker import PercentFormatter

    axis.set_major_formatter(PercentFormatter(1.0, decimals=0))


def _plot_errors(record: dict) -> Any | None:
    dist = record.get("distributions")
    if not dist or not dist.get("values"):
        return None
    order = [s for s in _sets(record) if s in dist["values"]]
    order += [s for s in dist["values"] if s not in order]
    values = {}
    for name in order:
        v = _floats(dist["values"][name])
        v = v[np.isfinite(v)]
        if v.size:
            values[name] = v
    if not values:
        return None
    pooled = np.concatenate(list(values.values()))
    lo = min(0.0, float(pooled.min()))
    hi = float(np.percentile(pooled, 99.5))  # long tails would squash the bulk into 2 bins
    if hi <= lo:
        hi = lo + 1.0
    edges = np.linspace(lo, hi, 41)
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    for i, (name, v) in enumerate(values.items()):
        colour = _colour(name, i)
        mean = float(v.mean())
        ax.hist(
            np.clip(v, lo, hi),
            bins=edges,
            weights=np.full(v.size, 1.0 / v.size),
            histtype="step",
            linewidth=1.6,
            color=colour,
            label=f"{name} (n={v.size:,}, mean {_num(mean)})",
        )
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.2)
    label = dist.get("label") or "per-sample error"
    if (pooled > hi).any():
        label += f"; last bin holds all ≥ {_num(hi)}"
    ax.set_xlabel(label)
    ax.set_ylabel("share of samples")
    _percent_axis(ax.yaxis)
    ax.set_xlim(lo, hi)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8)
    ax.set_title("dashed: means", fontsize=9, loc="right", color="#555")
    return fig


def _plot_pck(record: dict) -> Any | None:
    pck = record.get("pck")
    if not pck or not pck.get("curves") or not pck.get("thresholds"):
        return None
    x = _floats(pck["thresholds"])
    order = [s for s in _sets(record) if s in pck["curves"]]
    order += [s for s in pck["curves"] if s not in order]
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    for i, name in enumerate(order):
        curve = pck["curves"][name] or {}
        colour = _colour(name, i)
        mean = _floats(curve.get("mean"))
        if mean.size != x.size:
            raise ValueError(f"pck curve {name!r}: {mean.size} values for {x.size} thresholds")
        ax.plot(x, mean, color=colour, linewidth=1.8, label=name)
        if curve.get("min") and curve.get("max"):
            ax.fill_between(
                x, _floats(curve["min"]), _floats(curve["max"]), color=colour, alpha=0.18, lw=0
            )
    unit = pck.get("unit") or "px"
    ax.set_xlabel(f"distance threshold ({unit})")
    ax.set_ylabel("joints within threshold")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(float(x.min()), float(x.max()))
    _percent_axis(ax.yaxis)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    ax.set_title("line: mean over seeds, band: min–max", fontsize=9, loc="right", color="#555")
    return fig


def _plot_iou(record: dict) -> Any | None:
    iou = record.get("per_class_iou")
    if not iou or not iou.get("classes") or not iou.get("values"):
        return None
    classes = list(iou["classes"])
    order = [s for s in _sets(record) if s in iou["values"]]
    order += [s for s in iou["values"] if s not in order]
    n, k = len(classes), len(order)
    band = 0.8 / k
    fig = _figure(7.5, 1.2 + 0.1 * n * k + 0.1 * n)
    ax = fig.add_subplot()
    y = np.arange(n)
    for j, name in enumerate(order):
        values = _floats(iou["values"][name])
        if values.size != n:
            raise ValueError(f"per_class_iou {name!r}: {values.size} values for {n} classes")
        pos = y - 0.4 + band * (j + 0.5)
        ok = np.isfinite(values)
        ax.barh(pos[ok], values[ok], height=band * 0.95, color=_colour(name, j), label=name)
        for p in pos[~ok]:
            ax.text(0.005, p, "–", va="center", ha="left", fontsize=7, color="#555")
    ax.set_yticks(y, classes, fontsize=8)
    ax.set_ylim(n - 0.5, -0.5)  # first class on top
    ax.set_xlim(0, 1)
    ax.set_xlabel("IoU on the real test set (mean over seeds; – : class absent)")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(frameon=False, fontsize=8, loc="outside upper center", ncols=k)
    return fig


def _plot_seeds(record: dict) -> Any | None:
    metric = _metric(record)
    runs = {s: _floats(_runs(_stat(record, s, metric["key"]))) for s in _sets(record)}
    if not any(np.isfinite(r).any() for r in runs.values()):
        return None
    fig = _figure(max(3.5, 1.4 * len(runs) + 1.5), 3.4)
    ax = fig.add_subplot()
    for i, (name, r) in enumerate(runs.items()):
        colour = _colour(name, i)
        ok = np.isfinite(r)
        dx = np.linspace(-0.12, 0.12, r.size) if r.size > 1 else np.zeros(r.size)
        ax.scatter(i + dx[ok], r[ok], color=colour, s=28, zorder=3)
        if ok.any():
            ax.hlines(float(r[ok].mean()), i - 0.25, i + 0.25, color=colour, linewidth=2)
    ax.set_xticks(np.arange(len(runs)), list(runs))
    ax.set_xlim(-0.6, len(runs) - 0.4)
    ax.set_ylabel(_metric_name(metric))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"dots: seeds, line: mean; {_better(metric)}", fontsize=9, color="#555")
    return fig


PLOTS: dict[str, Callable[[dict], Any | None]] = {
    "errors": _plot_errors,
    "pck": _plot_pck,
    "per_class_iou": _plot_iou,
    "seeds": _plot_seeds,
}


def _domain_only(domain: str, what: str) -> Callable[[dict], str]:
    def reason(record: dict) -> str:
        if record["domain"] != domain:
            return f"{what} is measured for the {domain} domain only"
        return f"no {what} in the report"

    return reason


# name -> (title, caption, why it is absent); names match PLOTS and the PNG file names
PLOT_TEXT: dict[str, tuple[str, Callable[[dict], str], Callable[[dict], str]]] = {
    "errors": (
        "Error distributions",
        lambda r: (
            f"{(r.get('distributions') or {}).get('label') or 'per-sample error'}, "
            "pooled over seeds; shared bins, each curve sums to 100%; dashed lines: means."
        ),
        lambda r: "no per-sample errors in the report",
    ),
    "pck": (
        "PCK curves",
        lambda r: (
            "Share of joints within a distance of the truth, by threshold; "
            "line: mean over seeds, band: min to max."
        ),
        _domain_only("hand", "PCK"),
    ),
    "per_class_iou": (
        "Per-class IoU",
        lambda r: (
            "IoU per class on the real test set, mean over seeds; "
            "–: class absent from the test set and the predictions."
        ),
        _domain_only("scene", "per-class IoU"),
    ),
    "seeds": (
        "Primary metric per seed",
        lambda r: f"{_metric_name(_metric(r))} of each seed's network; line: mean.",
        lambda r: "no per-seed runs of the primary metric",
    ),
}
