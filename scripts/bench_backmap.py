"""Backmapping throughput of `tcbm backmap`'s rollout path (``Backmapper.backmap``), in one run:

- batched: ``--trajectories`` trajectories of ``--frames`` frames advanced as one batch;
- one-at-a-time: the same trajectories, batch size 1 (what batching buys);
- single trajectory: one trajectory of ``--long-frames`` frames (the paper's use case: latency per step);

each with the step replayed as a CUDA graph and eagerly (on CUDA devices; on a CPU only eager exists), and
the largest coordinate difference between the two.

    python scripts/bench_backmap.py                       # 64 trajectories x 40 frames, default CPU model
    python scripts/bench_backmap.py --device cuda --model paper --trajectories 1024 --frames 30 \
        --long-frames 3000 --out benchmarks/gpu/backmap_paper.json

Weights are random (speed does not depend on them); the network is the default CPU config
(conf/model/small.yaml) unless --model names another.  Frames/s count frames actually produced.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.backmap import Backmapper, RolloutSettings
from tcbm.benchmark import command_line
from tcbm.constraints import resolve_network
from tcbm.latent import LatentSampler
from tcbm.model import BackmapCVAE
from tcbm.systems import load_system
from tcbm.voxels import VoxelGrid


def build_model(name: str) -> BackmapModel:
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={name}"])
    system = load_system("adp")
    # no training data: bonds to hydrogen as `tcbm simulate` makes them (constrained)
    network_config = resolve_network(OmegaConf.to_container(cfg.model.network), system, cfg.model.temperature_K)
    torch.manual_seed(0)
    network = BackmapCVAE.for_system(system, VoxelGrid(**cfg.model.grid), **network_config)
    rng = np.random.default_rng(0)
    xyz = (system.reference_xyz[None] + rng.normal(0, 0.01, (200, system.n_atoms, 3))).astype(np.float32)
    library = SeedLibrary.from_frames(xyz, np.arange(1, 200), system.mapping, 1, max(network.history, 1))
    return BackmapModel(network, network_config, system, LatentSampler.prior(network.latent_dim), library)


def cg_trajectories(model: BackmapModel, count: int, frames: int, seed: int) -> list[np.ndarray]:
    """``count`` CG trajectories of ``frames`` frames: the reference structure with 0.01 nm noise."""
    system, rng = model.system, np.random.default_rng(seed)
    return [system.mapping((system.reference_xyz[None] + rng.normal(0, 0.01, (frames, system.n_atoms, 3)))
                           .astype(np.float32)) for _ in range(count)]


def timed(backmapper: Backmapper, cg: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """Frames/s of backmapping ``cg`` in steady state (timed after one untimed pass over the same input,
    which pays for CUDA graph capture and cuDNN autotuning), and the output."""
    backmapper.backmap(cg)
    if backmapper.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = backmapper.backmap(cg)
    if backmapper.device.type == "cuda":
        torch.cuda.synchronize()
    return sum(len(t) for t in out) / (time.perf_counter() - started), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--long-frames", type=int, default=200, help="length of the single-trajectory case")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default=None, choices=[None, "bf16", "fp16"])
    parser.add_argument("--skip-one-at-a-time", action="store_true")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    model = build_model(args.model)
    cuda = args.device.startswith("cuda")
    many = cg_trajectories(model, args.trajectories, args.frames, 1)
    long = cg_trajectories(model, 1, args.long_frames, 2)
    results = {"command": command_line(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "model": args.model, "autocast": args.autocast,
               "frames_per_s": {}, "graph_vs_eager_max_abs_nm": {}}
    print(f"model={args.model} device={results['device']} autocast={args.autocast} torch={torch.__version__}")
    cases = [("batched", many, args.trajectories), ("single trajectory", long, 1)]
    if not args.skip_one_at_a_time:
        cases.insert(1, ("one-at-a-time", many, 1))
    for label, cg, batch in cases:
        outputs = {}
        for graph in ((True, False) if cuda else (False,)):
            settings = RolloutSettings(batch_size=batch, progress=False, autocast=args.autocast, cuda_graph=graph,
                                       chunk_frames=min(256, max(len(t) for t in cg)))
            name = f"{label}, {'CUDA graph' if graph else 'eager'}"
            rate, outputs[graph] = timed(Backmapper(model, settings, args.device), cg)
            results["frames_per_s"][name] = rate
            print(f"{name}: {rate:,.0f} frames/s", flush=True)
        if len(outputs) == 2:
            diff = max(float(np.abs(a - b).max()) for a, b in zip(outputs[True], outputs[False]))
            results["graph_vs_eager_max_abs_nm"][label] = diff
            print(f"{label}: max |graph - eager| = {diff:.2e} nm")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
