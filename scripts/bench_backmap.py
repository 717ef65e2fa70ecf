"""Backmapping throughput: many trajectories advanced as one batch vs a one-at-a-time loop, in one run.

    python scripts/bench_backmap.py                       # 64 trajectories x 40 frames, default CPU model
    python scripts/bench_backmap.py --device cuda --trajectories 1024 --frames 200

Weights are random (speed does not depend on them); the network is the default CPU config
(conf/model/small.yaml) unless --model names another.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.backmap import Backmapper, RolloutSettings
from tcbm.latent import LatentSampler
from tcbm.model import BackmapCVAE
from tcbm.systems import load_system
from tcbm.voxels import VoxelGrid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small")
    parser.add_argument("--trajectories", type=int, default=64)
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default=None, choices=[None, "bf16", "fp16"])
    args = parser.parse_args()
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    system = load_system("adp")
    network_config = OmegaConf.to_container(cfg.model.network)
    network = BackmapCVAE(system.n_atoms, system.n_beads, VoxelGrid(**cfg.model.grid), **network_config)
    rng = np.random.default_rng(0)
    xyz = (system.reference_xyz[None] + rng.normal(0, 0.01, (200, system.n_atoms, 3))).astype(np.float32)
    library = SeedLibrary.from_frames(xyz, np.arange(1, 200), system.mapping, 1, max(network.history, 1))
    model = BackmapModel(network, network_config, system, LatentSampler.prior(network.latent_dim), library)
    cg = [system.mapping(xyz[:args.frames] + rng.normal(0, 0.01, (args.frames, system.n_atoms, 3)).astype(np.float32))
          for _ in range(args.trajectories)]
    total = args.trajectories * args.frames
    print(f"config: model={args.model} grid={dict(cfg.model.grid)} network={network_config} device={args.device} "
          f"autocast={args.autocast} threads={torch.get_num_threads()}; {args.trajectories} trajectories x "
          f"{args.frames} frames")
    rates = {}
    for label, batch in (("batched", args.trajectories), ("one-at-a-time", 1)):
        backmapper = Backmapper(model, RolloutSettings(batch_size=batch, progress=False, autocast=args.autocast),
                                args.device)
        backmapper.backmap(cg[:1])  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        started = time.perf_counter()
        backmapper.backmap(cg)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        rates[label] = total / (time.perf_counter() - started)
        print(f"{label}: {rates[label]:.1f} frames/s")
    print(f"ratio batched / one-at-a-time: {rates['batched'] / rates['one-at-a-time']:.1f}x")


if __name__ == "__main__":
    main()
