"""``tcbm train``: fit the cVAE with Lightning, then fit the latent GMM and write the model artefact."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.loggers import CSVLogger
from tqdm.auto import tqdm

from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.data import BackmapDataModule, TripleDataset
from tcbm.latent import LatentSampler
from tcbm.lightning import CVAEModule
from tcbm.systems import MolecularSystem, load_system
from tcbm.voxels import VoxelGrid


def check_checkpoint(path: str | Path, system: MolecularSystem, grid: VoxelGrid, network: dict) -> None:
    """Raise if the Lightning checkpoint at ``path`` was trained for another system, grid or network."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    hparams = torch.load(path, map_location="cpu", weights_only=False).get("hyper_parameters", {})
    theirs = MolecularSystem.from_dict(hparams["system"])
    problems = []
    if theirs.name != system.name or theirs.n_atoms != system.n_atoms:
        problems.append(f"system {theirs.name!r} ({theirs.n_atoms} atoms) vs {system.name!r} ({system.n_atoms} atoms)")
    elif not np.allclose(theirs.mapping.weights, system.mapping.weights):
        problems.append(f"CG mapping {theirs.mapping.bead_names} vs {system.mapping.bead_names}")
    if VoxelGrid(**hparams["grid"]) != grid:
        problems.append(f"grid {hparams['grid']} vs {grid.to_dict()}")
    for key, value in network.items():
        if hparams["network"].get(key) != value:
            problems.append(f"model.{key} {hparams['network'].get(key)} vs {value}")
    if problems:
        raise ValueError(f"checkpoint {path} does not match this run: " + "; ".join(problems))


@torch.inference_mode()
def encode_posterior_means(module: CVAEModule, dataset: TripleDataset, max_samples: int, batch_size: int,
                           seed: int = 0) -> np.ndarray:
    """Posterior means of (up to ``max_samples``) training triples, randomly rotated as in training."""
    rng = np.random.default_rng(seed)
    items = rng.permutation(len(dataset))[:max_samples]
    module.eval()
    means = []
    for start in tqdm(range(0, len(items), batch_size), desc="encode posterior", unit="batch"):
        batch = {k: v.to(module.device) for k, v in dataset.__getitems__(items[start:start + batch_size]).items()}
        cond = module.model.condition(batch["cg"], batch["aa_prev"])
        means.append(module.model.encode(batch["aa"], cond)[0].double().cpu().numpy())
    return np.concatenate(means)


def _loggers(out: Path) -> list:
    loggers = [CSVLogger(str(out), name="logs")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out), name="tensorboard"))
    except ImportError:
        pass
    return loggers


def train(cfg: DictConfig) -> Path:
    """Train a model from a ``conf/train.yaml``-shaped config; returns the artefact path."""
    started = time.perf_counter()
    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.out)
    system = load_system(OmegaConf.to_container(cfg.system, resolve=True))
    grid = VoxelGrid(**cfg.model.grid)
    network = OmegaConf.to_container(cfg.model.network, resolve=True)
    trajectories = cfg.data.trajectories
    if OmegaConf.is_list(trajectories):
        trajectories = OmegaConf.to_container(trajectories, resolve=True)
    data = BackmapDataModule(system, trajectories, topology=cfg.data.topology, lag=cfg.data.lag, history=network["history"],
                             stride=cfg.data.stride, split=cfg.data.split, val_fraction=cfg.data.val_fraction,
                             n_blocks=cfg.data.n_blocks, batch_size=cfg.data.batch_size,
                             num_workers=cfg.data.num_workers, max_radius=grid.max_radius)
    if cfg.ckpt_path:
        check_checkpoint(cfg.ckpt_path, system, grid, network)
    loss = cfg.model.loss
    module = CVAEModule(
        system.to_dict(), grid.to_dict(), network, weights=OmegaConf.to_container(loss.weights),
        energy_weight=OmegaConf.to_container(loss.energy), kl_weight=OmegaConf.to_container(loss.kl, resolve=True),
        lr=cfg.model.optim.lr, weight_decay=cfg.model.optim.weight_decay, lr_schedule=cfg.model.optim.lr_schedule,
        temperature=cfg.model.temperature_K, lag=cfg.data.lag, compile=cfg.model.compile,
        prev_noise_nm=cfg.model.prev_noise_nm,
    )
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor="val/loss" if len(
        data.val_idx) else None, save_last=True, save_top_k=1)
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), default_root_dir=str(out),
                         callbacks=[checkpoints], logger=_loggers(out), limit_val_batches=None if len(data.val_idx)
                         else 0)
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    if trainer.fast_dev_run:
        return out
    if checkpoints.best_model_path:
        module = CVAEModule.load_from_checkpoint(checkpoints.best_model_path, map_location="cpu")
    train_set = data.dataset("train")
    sampler = LatentSampler.fit(
        encode_posterior_means(module, train_set, cfg.model.gmm.max_samples, cfg.data.batch_size, cfg.seed),
        cfg.model.gmm.components, cfg.seed,
    )
    library = SeedLibrary.from_frames(data.data.xyz, data.train_idx, system.mapping, cfg.data.lag,
                                      network["history"], cfg.model.seed_library_size)
    metadata = {"train_wall_s": time.perf_counter() - started, "steps": trainer.global_step,
                "trajectories": data.data.sources, "config": OmegaConf.to_container(cfg, resolve=True)}
    model = BackmapModel(module.model.cpu(), network, system, sampler, library, cfg.data.lag, metadata)
    return model.save(out / "model.pt")
