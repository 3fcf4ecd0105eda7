"""The ingest driver on small UnityEyes trees: shard grouping, stats, resume, strict mode,
conservation, duplicate keys, worker pools, the CLI, and output that readers accept."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import webdataset as wds

from refinery import shards as S
from refinery.cli import main
from refinery.formats.unityeyes import UnityEyes
from refinery.ingest import REJECTS_FILE, SUMMARY_FILE, ingest
from refinery.samples import DUPLICATE, MISSING, UNDECODABLE, SampleError


def write_item(root: Path, stem: str, *, seed: int = 0, head_yaw: float = 180.0) -> None:
    """imgs/<stem>.jpg (48x64) + imgs/<stem>.json in UnityEyes' layout (strings, y up)."""
    imgs = root / "imgs"
    imgs.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (48, 64), dtype=np.uint8), (0, 0), 1.5)
    cv2.imwrite(str(imgs / f"{stem}.jpg"), image)

    def pt(x: float, y: float) -> str:
        return f"({x:.4f}, {48 - y:.4f}, 9.0000)"

    xs = np.linspace(20, 44, 9)
    upper = [pt(x, 24 - 6 * math.sin(math.pi * i / 8)) for i, x in enumerate(xs)]
    lower = [pt(x, 24 + 4 * math.sin(math.pi * i / 8)) for i, x in enumerate(xs)]
    label = {
        "interior_margin_2d": upper + lower[::-1][1:-1],
        "caruncle_2d": [pt(18, 24), pt(19, 25)],
        "iris_2d": [pt(32 + 4 * math.cos(a), 24 + 4 * math.sin(a)) for a in range(6)],
        "eye_details": {"look_vec": f"({0.01 * seed:.4f}, 0.1000, -0.9900, 0.0000)"},
        "head_pose": f"(0.0000, {head_yaw:.4f}, 0.0000)",
    }
    (imgs / f"{stem}.json").write_text(json.dumps(label))


def tree(root: Path, count: int) -> Path:
    for i in range(count):
        write_item(root, str(i), seed=i)
    return root


def shard_files(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.tar"))


def keys(url) -> list[str]:
    return [s["__key__"] for s in S.shard_samples(str(url))]


def run(src, out, **kwargs):
    kwargs.setdefault("progress", False)
    return ingest("unityeyes", str(src), str(out), **kwargs)


def test_items_are_grouped_by_position_into_shards(tmp_path):
    src = tree(tmp_path / "src", 7)
    (src / "imgs" / "4.jpg").write_bytes(b"garbage")  # rejected: shards still group by position
    out = tmp_path / "out"
    summary = run(src, out, shard_size=3)
    assert shard_files(out) == [f"unityeyes-00000{i}.tar" for i in range(3)]
    assert keys(out / "unityeyes-000000.tar") == [f"unityeyes-0000000{i}" for i in range(3)]
    assert keys(out / "unityeyes-000001.tar") == ["unityeyes-00000003", "unityeyes-00000005"]
    assert keys(out / "unityeyes-000002.tar") == ["unityeyes-00000006"]
    stats = json.loads((out / "unityeyes-000001.stats.json").read_text())
    assert stats["format"] == "unityeyes"
    assert stats["options"] == {"size": [35, 55], "head_pose_range": None}
    assert stats["shard_size"] == 3
    assert (stats["items"], stats["items_converted"], stats["items_rejected"]) == (3, 2, 1)
    assert stats["samples_written"] == 2
    assert stats["rejected"] == {UNDECODABLE: 1}
    assert stats["rejects"][0]["url"].endswith("imgs/4.jpg")
    assert stats["rejects"][0]["key"] == "unityeyes-00000004"
    assert stats["keys"] == ["unityeyes-00000003", "unityeyes-00000005"]
    assert len(stats["item_hash"]) == 64
    assert summary.items == 7 and summary.samples_written == 6 and summary.total_rejected == 1
    whole = json.loads((out / SUMMARY_FILE).read_text())
    assert whole["shards"] == shard_files(out)
    assert whole["rejected"] == {UNDECODABLE: 1}
    lines = (out / REJECTS_FILE).read_text().splitlines()
    assert [json.loads(line)["key"] for line in lines] == ["unityeyes-00000004"]
    assert any("1 undecodable" in line for line in summary.lines())


def test_conservation_with_a_corrupt_image_and_missing_halves(tmp_path):
    src = tree(tmp_path / "src", 6)
    (src / "imgs" / "1.jpg").write_bytes(b"\xff\xd8 not really")
    (src / "imgs" / "2.json").unlink()
    (src / "imgs" / "3.jpg").unlink()
    out = tmp_path / "out"
    summary = run(src, out, shard_size=4)
    for stats_file in out.glob("*.stats.json"):
        stats = json.loads(stats_file.read_text())
        assert stats["items"] == (
            stats["items_converted"] + stats["items_rejected"] + stats["items_filtered"]
        )
        assert stats["samples_converted"] == stats["samples_written"] + stats["samples_rejected"]
        assert len(stats["rejects"]) == sum(stats["rejected"].values())
    assert summary.items == 6
    assert summary.samples_written == 3
    assert summary.rejected == {UNDECODABLE: 1, MISSING: 2}
    by_key = {r["key"]: r for r in summary.rejects}
    assert by_key["unityeyes-00000002"]["url"].endswith("imgs/2.json")
    assert by_key["unityeyes-00000003"]["url"].endswith("imgs/3.jpg")
    assert by_key["unityeyes-00000003"]["component"] == "png"
    written = [k for url in sorted(out.glob("*.tar")) for k in keys(url)]
    assert written == ["unityeyes-00000000", "unityeyes-00000004", "unityeyes-00000005"]


def test_filtered_items_are_counted_apart_and_do_not_fail_strict(tmp_path):
    src = tmp_path / "src"
    for i, yaw in enumerate((180.0, 210.0, 175.0, 150.0)):
        write_item(src, str(i), seed=i, head_yaw=yaw)
    summary = run(src, tmp_path / "out", strict=True, options={"head_pose_range": (20, 20)})
    assert summary.items == 4 and summary.items_filtered == 2
    assert summary.filtered == {"head-pose": 2}
    assert summary.samples_written == 2 and summary.total_rejected == 0
    assert (
        summary.items == summary.samples_written + summary.total_rejected + summary.items_filtered
    )
    stats = json.loads((tmp_path / "out" / "unityeyes-000000.stats.json").read_text())
    assert stats["options"] == {"size": [35, 55], "head_pose_range": [20, 20]}
    assert stats["filtered"] == {"head-pose": 2}
    assert any("filtered: 2 head-pose" in line for line in summary.lines())


def test_strict_stops_at_the_first_reject_without_a_partial_shard(tmp_path):
    src = tree(tmp_path / "src", 6)
    (src / "imgs" / "4.jpg").write_bytes(b"garbage")
    out = tmp_path / "out"
    with pytest.raises(SampleError) as caught:
        run(src, out, shard_size=3, strict=True)
    assert caught.value.reason == UNDECODABLE
    assert caught.value.url.endswith("imgs/4.jpg")
    assert sorted(p.name for p in out.iterdir()) == [
        "unityeyes-000000.stats.json",
        "unityeyes-000000.tar",
    ]


def test_duplicate_keys_across_the_ingest_are_rejects(tmp_path):
    src = tree(tmp_path / "src", 3)
    write_item(src, "0002", seed=9)  # file 0002 gives the key of file 2 and sorts before it
    out = tmp_path / "out"
    summary = run(src, out, shard_size=3)
    assert summary.rejected == {DUPLICATE: 1}
    (record,) = summary.rejects
    assert record["key"] == "unityeyes-00000002" and record["url"].endswith("imgs/2.jpg")
    assert "unityeyes-000000.tar" in record["detail"]
    assert summary.items_converted == 4 and summary.samples_rejected == 1
    assert summary.items == summary.samples_written + summary.total_rejected
    # Resuming with the second shard gone: the key is still written exactly once.
    (out / "unityeyes-000001.tar").unlink()
    again = run(src, out, shard_size=3)
    assert again.shards_skipped == 1 and again.rejected == {DUPLICATE: 1}
    written = [k for url in sorted(out.glob("*.tar")) for k in keys(url)]
    assert sorted(written) == [f"unityeyes-0000000{i}" for i in range(3)]
    assert keys(out / "unityeyes-000001.tar") == []


def test_rerun_skips_finished_shards_and_redoes_a_removed_one(tmp_path):
    src = tree(tmp_path / "src", 5)
    out = tmp_path / "out"
    run(src, out, shard_size=2)
    before = {name: (out / name).read_bytes() for name in shard_files(out)}
    stamps = {name: (out / name).stat().st_mtime_ns for name in before}
    (out / "unityeyes-000001.tar").unlink()
    summary = run(src, out, shard_size=2)
    assert summary.shards_skipped == 2
    assert summary.items == 5 and summary.samples_written == 5
    assert {name: (out / name).read_bytes() for name in shard_files(out)} == before
    for name in ("unityeyes-000000.tar", "unityeyes-000002.tar"):
        assert (out / name).stat().st_mtime_ns == stamps[name]


def test_resume_after_a_killed_run(tmp_path, monkeypatch):
    src = tree(tmp_path / "src", 7)
    clean = tmp_path / "clean"
    run(src, clean, shard_size=3)

    out = tmp_path / "out"
    convert = UnityEyes.convert

    def dies_at_item_4(self, item):
        if item.name == "imgs/4":
            raise KeyboardInterrupt
        return convert(self, item)

    monkeypatch.setattr(UnityEyes, "convert", dies_at_item_4)
    with pytest.raises(KeyboardInterrupt):
        run(src, out, shard_size=3)
    assert shard_files(out) == ["unityeyes-000000.tar"]  # no partial shard 1
    monkeypatch.undo()
    # What a SIGKILL leaves: temporary files of a dead process, a shard without its stats.
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid = int(dead.stdout)
    (out / f".unityeyes-000001.tar.tmp-{pid}-0123abcd").write_bytes(b"partial")
    (out / f".unityeyes-000002.stats.json.tmp-{pid}-89abcdef").write_text("{")
    (out / "unityeyes-000002.tar").write_bytes(b"half a shard")

    summary = run(src, out, shard_size=3)
    assert summary.shards_skipped == 1
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in clean.iterdir())
    for name in shard_files(clean):
        assert (out / name).read_bytes() == (clean / name).read_bytes()


def test_a_changed_source_tree_redoes_the_shards_it_touches(tmp_path):
    src = tree(tmp_path / "src", 4)
    out = tmp_path / "out"
    run(src, out, shard_size=2)
    write_item(src, "4", seed=4)
    summary = run(src, out, shard_size=2)
    assert summary.shards_skipped == 2  # shards 0 and 1 hold the same items as before
    assert keys(out / "unityeyes-000002.tar") == ["unityeyes-00000004"]
    (src / "imgs" / "0.jpg").unlink()
    (src / "imgs" / "0.json").unlink()
    with pytest.raises(ValueError, match=r"unityeyes-000002\.stats\.json.*past"):
        run(src, out, shard_size=2)  # shard 2 would hold item 4 a second time
    (out / "unityeyes-000002.tar").unlink()
    (out / "unityeyes-000002.stats.json").unlink()
    summary = run(src, out, shard_size=2)  # every shard's items moved
    assert summary.shards_skipped == 0
    assert keys(out / "unityeyes-000000.tar") == ["unityeyes-00000001", "unityeyes-00000002"]


def test_out_with_other_settings_or_stale_shards_is_refused(tmp_path):
    src = tree(tmp_path / "src", 4)
    out = tmp_path / "out"
    run(src, out, shard_size=2)
    assert run(src, out, shard_size=2, options={"size": (35, 55)}).shards_skipped == 2
    with pytest.raises(ValueError, match="other settings"):
        run(src, out, shard_size=2, options={"size": (36, 60)})
    with pytest.raises(ValueError, match=r"unityeyes-000001\.stats\.json.*past"):
        run(src, out, shard_size=4)
    run(src, out, shard_size=2, prefix="big")  # another prefix is another dataset
    assert "big-000001.tar" in shard_files(out)


def test_workers_give_byte_identical_shards(tmp_path):
    src = tree(tmp_path / "src", 9)
    (src / "imgs" / "5.json").unlink()
    one, two = tmp_path / "one", tmp_path / "two"
    first = run(src, one, shard_size=4)
    second = run(src, two, shard_size=4, workers=2)
    assert shard_files(one) == shard_files(two)
    for name in shard_files(one):
        assert (one / name).read_bytes() == (two / name).read_bytes()
    assert first.rejects == second.rejects


def test_output_reads_back_with_refinery_and_webdataset(tmp_path):
    src = tree(tmp_path / "src", 3)
    out = tmp_path / "out"
    run(src, out, shard_size=2)
    samples = list(S.read(str(out), "gaze"))
    assert [s["__key__"] for s in samples] == [f"unityeyes-0000000{i}" for i in range(3)]
    assert samples[0]["png"].shape == (35, 55)
    assert set(samples[0]["json"]) >= {"gaze", "look_vec", "head_pose", "landmarks", "source"}
    urls = [str(out / name) for name in shard_files(out)]
    theirs = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in theirs] == [s["__key__"] for s in samples]
    assert set(theirs[0]) >= {"png", "json"}


# -- the command ------------------------------------------------------------------------------


def test_cli_exit_status_and_summary(tmp_path, capsys):
    src = tree(tmp_path / "src", 3)
    assert main(["ingest", "unityeyes", str(src), "--out", str(tmp_path / "a")]) == 0
    assert "3 written" in capsys.readouterr().out
    (src / "imgs" / "1.jpg").unlink()
    assert main(["ingest", "unityeyes", str(src), "--out", str(tmp_path / "b")]) == 1
    printed = capsys.readouterr().out
    assert "missing-component" in printed and "imgs/1.jpg" in printed
    code = main(
        [
            "ingest", "unityeyes", str(src), "--out", str(tmp_path / "c"), "--strict",
            "--size", "36x60", "--head-pose-range", "20,20", "--shard-size", "1",
        ]
    )  # fmt: skip
    assert code == 1
    assert "error:" in capsys.readouterr().err
    assert shard_files(tmp_path / "c") == ["unityeyes-000000.tar"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--crop", "64"], "--crop does not apply to format 'unityeyes'"),
        (["--ontology", "cityscapes-19"], "--ontology does not apply"),
        (["--size", "35by55"], "expected HxW"),
        (["--head-pose-range", "20"], "PITCH,YAW"),
    ],
)
def test_cli_usage_errors(tmp_path, capsys, args, message):
    src = tree(tmp_path / "src", 1)
    with pytest.raises(SystemExit) as caught:
        main(["ingest", "unityeyes", str(src), "--out", str(tmp_path / "out"), *args])
    assert caught.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_cli_refuses_an_unknown_format(capsys):
    with pytest.raises(SystemExit) as caught:
        main(["ingest", "no-such-format", ".", "--out", "x"])
    assert caught.value.code == 2
    assert os.path.exists(".") and "invalid choice" in capsys.readouterr().err


def test_cli_scene_flags_reach_the_format_and_unlabeled_real_scenes_are_valid(tmp_path, capsys):
    city = tmp_path / "cs" / "leftImg8bit" / "val" / "aachen"
    city.mkdir(parents=True)
    for frame in ("000019", "000020"):
        image = np.random.default_rng(int(frame)).integers(0, 256, (16, 32, 3), dtype=np.uint8)
        cv2.imwrite(str(city / f"aachen_000000_{frame}_leftImg8bit.png"), image)
    out = tmp_path / "out"
    args = ["ingest", "cityscapes", str(tmp_path / "cs"), "--out", str(out), "--split", "val"]
    assert main([*args, "--labels", "none"]) == 0
    samples = list(S.read(str(out), "scene"))
    assert [s["__key__"] for s in samples] == [
        "cityscapes-aachen_000000_000019",
        "cityscapes-aachen_000000_000020",
    ]
    assert all(s["json"]["labeled"] is False and "seg.png" not in s for s in samples)
    # without gtFine the default (labelIds) cannot start, and says so
    assert main([*args[:-2], "--out", str(tmp_path / "o2")]) == 1
    assert "gtFine" in capsys.readouterr().err
    with pytest.raises(SystemExit) as caught:
        main(["ingest", "gta5", str(tmp_path), "--out", str(tmp_path / "o3"), "--no-depth"])
    assert caught.value.code == 2
    assert "--no-depth does not apply to format 'gta5'" in capsys.readouterr().err


def test_a_rerun_removes_temporaries_of_dead_writers_on_this_host_only(tmp_path):
    src = tree(tmp_path / "src", 4)
    out = tmp_path / "out"
    run(src, out, shard_size=2)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        text=True,
        capture_output=True,
        check=True,
    )
    pid, live = int(dead.stdout), os.getppid()
    host = S.temp_tag().rsplit("-", 1)[0]
    gone = [
        f".unityeyes-000001.tar.tmp-{host}-{pid}-0123abcd",  # a killed ShardWriter
        f".unityeyes-000000.stats.json.tmp-{pid}-89abcdef",  # a killed _write_text
        f".ingest.json.tmp-{pid}-12345678",
    ]
    kept = [
        f".unityeyes-000001.tar.tmp-other_node-{live}-0123abcd",  # another host's writer
        f".unityeyes-000001.tar.tmp-other_node-{pid}-0123abcd",  # its pid means nothing here
        f".unityeyes-000000.tar.tmp-{host}-{live}-fedcba98",  # a live writer on this host
        ".notes.tmp-1-0123abcd",  # not ingest's
    ]
    for name in gone + kept:
        (out / name).write_bytes(b"partial")
    summary = run(src, out, shard_size=2)
    assert summary.shards_skipped == 2
    left = {p.name for p in out.iterdir() if p.name.startswith(".")}
    assert left == set(kept)
