"""Shard write and read throughput (samples/s) for 35×55 gaze and 256×512 scene samples.

Measured side by side in one run, each figure the median of ``--repeats`` timed passes after a
warm-up pass:

- ``encode``: samples.encode_sample (PNG/JSON encoding), the CPU cost before writing;
- ``write``: ShardWriter on already-encoded samples (tar + atomic rename, local disk);
- ``read_raw``: refinery.shards.shard_samples (strict tar reading, grouping by key);
- ``read_raw_webdataset``: webdataset's own ``WebDataset(urls)`` over the same shards, as the
  reference for the ratio ``read_raw_vs_webdataset``;
- ``read_decoded``: refinery.shards.read(urls, domain): reading + decoding + validation.

Samples come from the procedural simulators (distinct renders, cycled with new keys), so PNG
sizes are those of real shards. Run: ``python -m benchmarks.shard_io [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import webdataset as wds

from benchmarks.common import RESULTS, write_result
from refinery import sim
from refinery.samples import encode_sample
from refinery.shards import read, shard_samples, write_shards

CASES = {
    # domain: (samples, distinct renders, shard size)
    "gaze": (20_000, 256, 2_000),
    "scene": (600, 24, 100),
}


def _timed(fn) -> tuple[float, int]:
    start = time.perf_counter()
    count = fn()
    return time.perf_counter() - start, count


def measure(domain: str, n: int, distinct: int, shard_size: int, repeats: int, workdir: Path):
    renders = [sim.render(domain, "synthetic", i, seed=0) for i in range(distinct)]
    encoded = [encode_sample(s, domain) for s in renders]
    samples = [dict(encoded[i % distinct], __key__=f"{domain}-{i:08d}") for i in range(n)]
    pattern = str(workdir / f"{domain}-%06d.tar")
    urls = str(workdir / f"{domain}-{{000000..{(n - 1) // shard_size:06d}}}.tar")

    def encode() -> int:
        for sample in renders:
            encode_sample(sample, domain)
        return distinct

    def write() -> int:
        write_shards(samples, pattern, shard_size=shard_size)
        return n

    def read_raw() -> int:
        return sum(1 for _ in shard_samples(urls))

    def read_raw_webdataset() -> int:
        return sum(1 for _ in wds.WebDataset(urls, shardshuffle=False, empty_check=False))

    def read_decoded() -> int:
        return sum(1 for _ in read(urls, domain))

    figures = {}
    for name, fn in [
        ("encode", encode),
        ("write", write),
        ("read_raw", read_raw),
        ("read_raw_webdataset", read_raw_webdataset),
        ("read_decoded", read_decoded),
    ]:
        fn()  # warm-up (and, for write, the shards the readers use)
        rates = []
        for _ in range(repeats):
            seconds, count = _timed(fn)
            assert count == (distinct if name == "encode" else n), (name, count)
            rates.append(count / seconds)
        figures[f"{name}_samples_per_s"] = round(statistics.median(rates), 1)
    shard_bytes = sum(p.stat().st_size for p in workdir.glob(f"{domain}-*.tar"))
    figures["bytes_per_sample"] = round(shard_bytes / n, 1)
    figures["write_MB_per_s"] = round(figures["write_samples_per_s"] * shard_bytes / n / 1e6, 1)
    figures["read_raw_vs_webdataset"] = round(
        figures["read_raw_samples_per_s"] / figures["read_raw_webdataset_samples_per_s"], 2
    )
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS, help="results directory")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results, settings = {}, {"repeats": args.repeats, "threads": 1, "disk": "local tmp dir"}
    for domain, (n, distinct, shard_size) in CASES.items():
        if args.quick:
            n, distinct, shard_size = n // 50, min(distinct, 8), max(shard_size // 50, 2)
        with tempfile.TemporaryDirectory() as tmp:
            results[domain] = measure(domain, n, distinct, shard_size, args.repeats, Path(tmp))
        settings[domain] = {"samples": n, "distinct_renders": distinct, "shard_size": shard_size}
        print(domain, results[domain])
    write_result("shard_io", results, settings, results=args.out)
    return results


if __name__ == "__main__":
    main()
