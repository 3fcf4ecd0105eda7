"""Large JPEG frames left for the GPU (train/jpeg.py): the worker checks them as decoding does,
their size read from the header; on CUDA a batch decodes with nvJPEG in one call."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refinery import sim
from refinery.samples import SampleError, decode_draws, encode_sample
from refinery.shards import tar_samples, write_shards
from train.data import SceneStream
from train.jpeg import EncodedImage, decode_draws_deferred, jpeg_size


def _jpeg_frames(root, count=4, height=64, width=128) -> str:
    frames = []
    for frame in sim.generate("scene", "synthetic", count, seed=7, height=height, width=width):
        frame["jpg"] = frame.pop("png")
        frames.append(frame)
    write_shards((encode_sample(f, "scene") for f in frames), str(root / "frames-%03d.tar"),
                 shard_size=count)  # fmt: skip
    return str(root / "frames-000.tar")


def test_the_header_gives_the_size_decoding_would(tmp_path):
    raw = next(tar_samples(_jpeg_frames(tmp_path)))
    assert jpeg_size(raw["jpg"]) == (64, 128, 3)
    assert jpeg_size(raw["seg.png"]) is None and jpeg_size(b"\xff\xd8\xff") is None


def test_a_deferred_jpeg_is_checked_like_a_decoded_one(tmp_path):
    raws = list(tar_samples(_jpeg_frames(tmp_path)))
    bad = dict(raws[1])  # a seg map of another size than the frame
    bad["seg.png"] = encode_sample({"__key__": "x", "seg.png": np.zeros((8, 8), np.uint8)},
                                   "scene")["seg.png"]  # fmt: skip
    draws = list(enumerate([raws[0], bad]))
    deferred = decode_draws_deferred(draws, "scene")
    decoded = decode_draws(draws, "scene")
    image = deferred[0][1]["jpg"]
    assert isinstance(image, EncodedImage) and image.shape == decoded[0][1]["jpg"].shape
    assert np.array_equal(deferred[0][1]["seg.png"], decoded[0][1]["seg.png"])  # PNG: exact
    assert isinstance(deferred[1][1], SampleError) and isinstance(decoded[1][1], SampleError)
    assert str(deferred[1][1]) == str(decoded[1][1])


@pytest.mark.gpu("torchvision")
def test_scene_batches_decoded_on_the_gpu_match_the_cpu_pool(tmp_path):
    urls = _jpeg_frames(tmp_path, count=6)

    def stream(**extra):
        return SceneStream(urls, batch_size=3, seed=1, ontology="sggan-8", shuffle_buffer=4,
                           crop=(32, 64), **extra)  # fmt: skip

    cpu, gpu = stream(), stream(decode_device="cuda")
    assert gpu.images.decode_device is not None
    for step in range(3):
        torch.manual_seed(step)
        a = cpu.next_batch()
        torch.manual_seed(step)
        b = gpu.next_batch()
        assert b["image"].device.type == "cuda" and a.keys() == b.keys()
        # nvJPEG and libjpeg may round the IDCT apart by a grey level; labels stay exact
        assert (b["image"].cpu() - a["image"]).abs().max() <= 4 / 127.5
        assert torch.equal(a["seg"], b["seg"].cpu())
