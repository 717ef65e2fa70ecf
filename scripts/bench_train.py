"""Training throughput (samples/s) of the cVAE: real ``trainer.fit`` steps with the real data pipeline
(triples, random rotations, on-the-fly voxelisation), timed AFTER the warm-ups: the energy term and the
pushforward unroll are on from step 0, so every timed step pays for them.

    python scripts/bench_train.py                     # default CPU config (conf/model/small.yaml)
    python scripts/bench_train.py --model paper --batch-size 64 --device cuda --precision bf16-mixed \
        --num-workers 8 --out benchmarks/gpu/train_paper.json

The data is a fresh OpenMM trajectory of alanine dipeptide (``--data`` reuses one), at least four batches
long.  Each memory format (``--channels-last`` both | on | off) is timed in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf

from tcbm.benchmark import command_line
from tcbm.constraints import resolve_network
from tcbm.data import BackmapDataModule
from tcbm.lightning import CVAEModule
from tcbm.simulate import simulate
from tcbm.systems import load_system


class StepTimer(pl.Callback):
    """Wall time of training steps ``skip`` .. end (the device synchronised at both ends)."""

    def __init__(self, skip: int) -> None:
        self.skip, self.started, self.samples = skip, None, 0

    def _sync(self, module: pl.LightningModule) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize(module.device)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if trainer.global_step == self.skip:
            self._sync(module)
            self.started = time.perf_counter()
        if trainer.global_step >= self.skip:
            self.samples += batch["aa"].shape[0]

    def on_train_end(self, trainer, module) -> None:
        self._sync(module)
        self.elapsed = time.perf_counter() - self.started


def measure(cfg, system, data: BackmapDataModule, channels_last: bool, args) -> float:
    network = {**OmegaConf.to_container(cfg.model.network, resolve=True), "channels_last": channels_last}
    network = resolve_network(network, system, cfg.model.temperature_K, data.data.xyz)
    energy = {**OmegaConf.to_container(cfg.model.loss.energy), "warmup_steps": 0, "tau_steps": 1.0}
    energy["final"] = energy["final"] if args.energy else 0.0
    unroll = {**OmegaConf.to_container(cfg.model.unroll), "start_step": 0, "ramp_steps": 0}
    unroll["steps"] = unroll["steps"] if args.unroll else 0
    module = CVAEModule(system.to_dict(), dict(cfg.model.grid), network,
                        weights=OmegaConf.to_container(cfg.model.loss.weights), energy_weight=energy, unroll=unroll,
                        kl_weight=OmegaConf.to_container(cfg.model.loss.kl, resolve=True),
                        symmetric_rotors=cfg.model.loss.symmetric_rotors)
    timer = StepTimer(args.warmup_steps)
    trainer = pl.Trainer(accelerator="gpu" if args.device == "cuda" else "cpu", devices=1,
                         precision=args.precision, max_steps=args.warmup_steps + args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, limit_val_batches=0,
                         callbacks=[timer], enable_model_summary=False)
    trainer.fit(module, datamodule=data)
    return timer.samples / timer.elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small", help="model config group (conf/model/)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=30, help="timed steps")
    parser.add_argument("--warmup-steps", type=int, default=5, help="untimed steps first")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="32-true", help="Lightning precision: 32-true, bf16-mixed, ...")
    parser.add_argument("--num-workers", type=int, default=0)
    parser.add_argument("--channels-last", default="both", choices=["both", "on", "off"])
    parser.add_argument("--energy", action=argparse.BooleanOptionalAction, default=True,
                        help="time the energy term (on from step 0); --no-energy leaves it out")
    parser.add_argument("--unroll", action=argparse.BooleanOptionalAction, default=True,
                        help="time the pushforward unroll (on from step 0); --no-unroll leaves it out")
    parser.add_argument("--data", default=None, help="all-atom ADP trajectory to train on (default: simulate)")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the train config, e.g. model.grid.d=8")
    args = parser.parse_args()
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"model={args.model}", *args.overrides])
    system = load_system("adp")
    history = cfg.model.network.history
    context = history + (cfg.model.unroll.steps if history else 0)
    results = {"command": command_line(), "torch": torch.__version__,
               "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or platform.machine(),
               "overrides": args.overrides,
               "threads": torch.get_num_threads(), "model": args.model, "batch_size": args.batch_size,
               "precision": args.precision, "num_workers": args.num_workers, "timed_steps": args.steps,
               "energy_term": args.energy, "unroll": args.unroll,
               "samples_per_s": {}}
    with tempfile.TemporaryDirectory() as work:
        path = args.data or simulate(system, work, "bench", length_ps=max(200, 4 * args.batch_size + context + 1),
                                     progress=False)
        data = BackmapDataModule(system, str(path), batch_size=args.batch_size, val_fraction=0.0, history=context,
                                 num_workers=args.num_workers)
        layouts = {"both": (False, True), "on": (True,), "off": (False,)}[args.channels_last]
        for channels_last in layouts:
            rate = measure(cfg, system, data, channels_last, args)
            results["samples_per_s"][f"channels_last={channels_last}"] = rate
            print(f"model={args.model} batch={args.batch_size} precision={args.precision} energy={args.energy} "
                  f"unroll={args.unroll} channels_last={channels_last}: {rate:.1f} samples/s", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
