"""Training throughput (samples/s) of the cVAE at a model config, measured on a short simulated ADP
trajectory with the real data pipeline (triples, random rotations, on-the-fly voxelisation).

    python scripts/bench_train.py                     # default CPU config (conf/model/small.yaml)
    python scripts/bench_train.py --model paper --batch-size 64 --device cuda --amp bf16
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tcbm.data import BackmapDataModule
from tcbm.lightning import CVAEModule
from tcbm.simulate import simulate
from tcbm.systems import load_system
from tcbm.voxels import VoxelGrid


def measure(module: CVAEModule, loader, device: str, steps: int, amp: str | None) -> float:
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp or "")
    batches = iter(loader)
    n = 0
    for step in range(steps + 3):
        if step == 3:
            if device == "cuda":
                torch.cuda.synchronize()
            started, n = time.perf_counter(), 0
        batch = {k: v.to(device) for k, v in next(batches).items()}
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            loss = module._total(module._terms(batch, sample=True)[0])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        n += batch["aa"].shape[0]
    if device == "cuda":
        torch.cuda.synchronize()
    return n / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="model config group (conf/model/)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--amp", default=None, choices=[None, "bf16", "fp16"])
    args = parser.parse_args()
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}"])
    system = load_system("adp")
    grid = VoxelGrid(**cfg.model.grid)
    network = OmegaConf.to_container(cfg.model.network)
    with tempfile.TemporaryDirectory() as work:
        path = simulate(system, work, "bench", length_ps=200, progress=False)
        data = BackmapDataModule(system, str(path), batch_size=args.batch_size, val_fraction=0.0,
                                 history=network["history"])
        loader = torch.utils.data.DataLoader(data.dataset("train"), batch_size=args.batch_size, shuffle=True,
                                             collate_fn=lambda b: b, drop_last=True)
        repeated = (batch for _ in range(1000) for batch in loader)
        print(f"config: model={args.model} grid={grid.to_dict()} network={network} batch={args.batch_size} "
              f"device={args.device} amp={args.amp} threads={torch.get_num_threads()}")
        for channels_last in (False, True):
            network["channels_last"] = channels_last
            module = CVAEModule(system.to_dict(), grid.to_dict(), network).to(args.device)
            rate = measure(module, repeated, args.device, args.steps, args.amp)
            print(f"channels_last={channels_last}: {rate:.1f} samples/s")


if __name__ == "__main__":
    main()
