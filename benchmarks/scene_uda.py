"""Scene adaptation on the procedural street domain, scored by mIoU on the real variant.

What is compared (the issue's benchmark), all at CPU scale (64×128 frames, small presets):

- T trained on synthetic only: the SPIGAN task network (``fcn8s-small``) trained with
  cross-entropy on synthetic frames alone (64×64 crops, SPIGAN's optimiser), once with as many
  updates as SPIGAN gives T (one per iteration) and once with the segmentation steps used for
  the SG-GAN comparison;
- SPIGAN without privileged information (γ = 0) and SPIGAN (γ = 0.1): their task network T;
- SG-GAN: the small preset trained on synthetic and unlabeled-for-the-task real frames (SG-GAN
  uses both domains' semantic maps), exported, and run through ``refinery refine`` over the
  synthetic shards; the same segmentation network trained on the refined shards versus on the
  synthetic shards.

Every T / segmentation network is scored on held-out labeled real frames (cityscapes-19 ids)
by mIoU over the classes present. VGG19 features are untrained here (no weights can be
downloaded), which the record states.

    python -m benchmarks.scene_uda [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import engines
from benchmarks.common import RESULTS, write_result
from deploy import RefineConfig, run
from refinery import ontology, sim
from refinery.registry import build_network
from refinery.samples import encode_sample
from refinery.shards import write_shards
from train import sggan, spigan
from train.data import SceneStream

SIZE = (64, 128)


def _shards(root: Path, variant: str, n: int, seed: int) -> str:
    made = sim.generate("scene", variant, n, seed=seed, height=SIZE[0], width=SIZE[1])
    urls = write_shards(
        (encode_sample(s, "scene") for s in made), str(root / "%03d.tar"), shard_size=200
    )
    return str(root / f"{{000..{len(urls) - 1:03d}}}.tar")


def train_segmentation(urls: str, *, steps: int, seed: int, config: spigan.SPIGANConfig):
    """The task network on labeled shards with cross-entropy alone (SPIGAN's T recipe)."""
    torch.manual_seed(seed)
    net = build_network(config.task, num_classes=config.num_classes)
    optimiser = torch.optim.Adam(
        net.parameters(), lr=config.task_optimiser.lr, betas=config.task_optimiser.betas
    )
    stream = SceneStream(urls, batch_size=config.batch_size, seed=seed, ontology=config.ontology,
                         crop=config.crop, shuffle_buffer=100)  # fmt: skip
    for _ in range(steps):
        batch = stream.next_batch()
        loss = F.cross_entropy(net(batch["image"]), batch["seg"], ignore_index=ontology.IGNORE)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return net


def _task_of(run_dir: Path, config: spigan.SPIGANConfig):
    net = build_network(config.task, num_classes=config.num_classes)
    latest = run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()
    net.load_state_dict(load_file(str(latest / "task.safetensors")))
    return net


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (tests)")
    parser.add_argument("--frames", type=int, default=400, help="synthetic and real frames")
    parser.add_argument("--test", type=int, default=200, help="real test frames")
    parser.add_argument("--spigan-steps", type=int, default=300)
    parser.add_argument("--sggan-steps", type=int, default=400)
    parser.add_argument("--seg-steps", type=int, default=600, help="steps of the seg networks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.quick:
        args.frames, args.test, args.spigan_steps, args.sggan_steps, args.seg_steps = 16, 8, 2, 2, 2
    seconds: dict[str, float] = {}
    figures: dict[str, dict] = {}
    warnings.filterwarnings("ignore", message=".*untrained.*")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        synthetic = _shards(root / "synthetic", "synthetic", args.frames, seed=101)
        real = _shards(root / "real", "real", args.frames, seed=102)
        test = _shards(root / "test", "real", args.test, seed=103)
        base = spigan.load_config(preset="small", steps=args.spigan_steps, seed=args.seed)

        def score(name: str, net, started: float) -> None:
            seconds[name] = time.perf_counter() - started
            result = spigan.evaluate_task(net, test, ontology=base.ontology)
            figures[name] = {"miou": result["miou"], "per_class": result["per_class"]}
            print(f"{name}: mIoU {result['miou']:.3f} ({seconds[name]:.0f} s)", flush=True)

        started = time.perf_counter()
        score("synthetic_only", train_segmentation(synthetic, steps=args.seg_steps, seed=args.seed,
                                                   config=base), started)  # fmt: skip
        # SPIGAN's T gets one update per iteration: its baseline gets as many
        started = time.perf_counter()
        score("synthetic_only_matched", train_segmentation(
            synthetic, steps=args.spigan_steps, seed=args.seed, config=base), started)  # fmt: skip
        for name, gamma in (("spigan_no_pi", 0.0), ("spigan", base.gamma)):
            started = time.perf_counter()
            config = spigan.load_config(preset="small", steps=args.spigan_steps, gamma=gamma,
                                        seed=args.seed)  # fmt: skip
            spigan.train(config, synthetic=synthetic, real=real, out=root / name)
            score(name, _task_of(root / name, config), started)

        started = time.perf_counter()
        config = sggan.load_config(preset="small", steps=args.sggan_steps, seed=args.seed)
        sggan.train(config, synthetic=synthetic, real=real, out=root / "sggan")
        engines.export_run(root / "sggan", root / "sggan-engine")
        summary = run(RefineConfig(engine=str(root / "sggan-engine"), output=str(root / "refined")),
                      synthetic)  # fmt: skip
        refined = str(root / "refined")
        seconds["sggan_train_and_refine"] = time.perf_counter() - started
        started = time.perf_counter()
        score("sggan_refined", train_segmentation(refined, steps=args.seg_steps, seed=args.seed,
                                                  config=base), started)  # fmt: skip
        refined_written = summary.written
    figures["gain_over_synthetic_only"] = {
        "spigan_no_pi": figures["spigan_no_pi"]["miou"] - figures["synthetic_only_matched"]["miou"],
        "spigan": figures["spigan"]["miou"] - figures["synthetic_only_matched"]["miou"],
        "sggan_refined": figures["sggan_refined"]["miou"] - figures["synthetic_only"]["miou"],
    }
    settings = {
        "domain": f"procedural streets, {SIZE[0]}x{SIZE[1]}, cityscapes-19 ids",
        "frames": {
            "synthetic": args.frames,
            "real_unlabeled_use": args.frames,
            "real_test": args.test,
        },
        "segmentation_network": base.task,
        "crop": list(base.crop),
        "steps": {
            "spigan": args.spigan_steps,
            "sggan": args.sggan_steps,
            "segmentation": args.seg_steps,
        },
        "spigan_weights": {
            "alpha": base.alpha,
            "beta": base.beta,
            "gamma": base.gamma,
            "delta": base.delta,
        },
        "vgg19": "untrained (random) features: no weights can be downloaded here",
        "refined_frames": refined_written,
        "seed": args.seed,
        "seconds": seconds,
        "note": "gain_over_synthetic_only: mIoU minus the synthetic-only network's trained with as "
        "many updates (SPIGAN's T: one per iteration; SG-GAN's segmenter: the segmentation steps)",
    }
    write_result("scene_uda", figures, settings, results=Path(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
