"""DALI's webdataset reader (CPU mode here) reads Refinery shards: keys, bytes and pixels agree."""

from __future__ import annotations

import numpy as np
import pytest

from refinery import samples as S
from refinery import shards as H

dali = pytest.importorskip("nvidia.dali")
from nvidia.dali import fn, pipeline_def, types  # noqa: E402


def _write(path, domain: str, n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    items = []
    for i in range(n):
        if domain == "hand":
            depth = rng.integers(0, 65536, (24, 20), dtype=np.uint16)
            items.append(
                {"__key__": f"h-{i:03d}", "depth.png": depth, "json": {"joints_uvd": [[1, 2, 3]]}}
            )
        else:
            eye = rng.integers(0, 256, (35, 55), dtype=np.uint8)
            label = {"gaze": {"pitch": 0.0, "yaw": 0.0}, "look_vec": [0, 0, -1]}
            items.append({"__key__": f"e-{i:03d}", "png": eye, "json": label})
    with H.ShardWriter(str(path)) as writer:
        for item in items:
            writer.write(S.encode_sample(item, domain))
    return items


@pytest.mark.parametrize("domain", ["gaze", "hand"])
def test_dali_cpu_reader_decodes_our_shards_exactly(tmp_path, domain):
    path = tmp_path / f"{domain}.tar"
    items = _write(path, domain, 6)
    image_ext = S.spec(domain).default_image

    @pipeline_def(batch_size=3, num_threads=1, device_id=None)
    def pipe():
        image, label = fn.readers.webdataset(
            paths=[str(path)],
            ext=[image_ext, "json"],
            missing_component_behavior="error",
            name="Reader",
        )
        if domain == "hand":
            decoded = fn.decoders.image(
                image, device="cpu", output_type=types.ANY_DATA, dtype=types.UINT16
            )
        else:
            decoded = fn.decoders.image(image, device="cpu", output_type=types.GRAY)
        return decoded, label, fn.get_property(image, key="source_info")

    p = pipe()
    p.build()
    assert p.epoch_size("Reader") == len(items)
    seen = []
    for _ in range(2):
        images, labels, sources = p.run()
        for j in range(len(images)):
            # source_info is "<shard>:<offset>:<key>.<ext>": the key survives DALI
            key = bytes(np.array(sources.at(j))).decode().rsplit(":", 1)[1].split(".")[0]
            item = next(it for it in items if it["__key__"] == key)
            np.testing.assert_array_equal(np.array(images.at(j))[..., 0], item[image_ext])
            assert S.decode_component("json", bytes(np.array(labels.at(j)))) == item["json"]
            seen.append(key)
    assert sorted(seen) == [it["__key__"] for it in items]


@pytest.mark.gpu("dali-gpu")
def test_dali_mixed_decode_of_scene_jpeg_matches_cpu(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)
    sample = {
        "__key__": "s-0",
        "jpg": image,
        "seg.png": np.zeros((64, 96), np.uint8),
        "json": {"ontology": "cityscapes-19"},
    }
    path = tmp_path / "scene.tar"
    with H.ShardWriter(str(path)) as writer:
        writer.write(S.encode_sample(sample, "scene"))

    @pipeline_def(batch_size=1, num_threads=1, device_id=0)
    def pipe():
        (jpeg,) = fn.readers.webdataset(
            paths=[str(path)], ext=["jpg"], missing_component_behavior="error"
        )
        return fn.decoders.image(jpeg, device="mixed", output_type=types.RGB)

    p = pipe()
    p.build()
    (gpu,) = p.run()
    decoded = np.array(gpu.as_cpu().at(0))
    cpu = S.decode_image(S.encode_image(image, S.RGB8, "jpg"), S.RGB8)
    assert np.abs(decoded.astype(int) - cpu).mean() < 2.0
