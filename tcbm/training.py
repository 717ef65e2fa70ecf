"""``tcbm train``: fit the cVAE with Lightning, then fit the latent GMM and write the model artefact."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, TQDMProgressBar
from pytorch_lightning.loggers import CSVLogger

from tcbm import backmap
from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.constraints import resolve_network
from tcbm.data import BackmapDataModule, TripleDataset
from tcbm.fingerprint import digest, file_digest
from tcbm.io import expand_paths
from tcbm.latent import fit_sampler
from tcbm.lightning import CVAEModule
from tcbm.rotor_hops import RotorHopEstimator, RotorHops
from tcbm.symmetry import resolve_symmetry
from tcbm.systems import MolecularSystem, load_system
from tcbm.validation import RolloutValidation, RolloutValidationSettings, rollout_windows
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


def _loggers(out: Path) -> list:
    loggers = [CSVLogger(str(out), name="logs")]
    try:
        import tensorboard  # noqa: F401
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(str(out), name="tensorboard"))
    except ImportError:
        pass
    return loggers


def _rollout_validation(cfg: DictConfig, data: BackmapDataModule, system: MolecularSystem, network: dict,
                        library: SeedLibrary, rotor_hops: RotorHops | None) -> RolloutValidation | None:
    """The rollout-validation callback over windows of the validation split (None without one)."""
    settings = RolloutValidationSettings(**OmegaConf.to_container(cfg.rollout_validation, resolve=True))
    windows = rollout_windows(data.val_idx, settings.frames, settings.windows, data.data.offsets)
    if not windows:
        return None
    posterior_set = TripleDataset(data.data.xyz, data.train_idx, system.mapping, cfg.data.lag, network["history"],
                                  rotation_seed=settings.seed)
    return RolloutValidation(data.data.xyz[np.stack(windows)], library, posterior_set, settings, network,
                             cfg.data.lag, rotor_hops)


def _rotor_symmetry(cfg: DictConfig, history: int) -> str:
    """``model.loss.symmetric_rotors`` resolved (:func:`tcbm.symmetry.resolve_symmetry`); ``continuous`` leaves the
    dihedral to a rotor chain, which the frame-based model (history 0) has no previous frame for: it trains
    with ``cyclic`` instead."""
    symmetry = resolve_symmetry(cfg.model.loss.symmetric_rotors)
    return "cyclic" if symmetry == "continuous" and not history else symmetry


def _rotor_chains(cfg: DictConfig, data: BackmapDataModule, system: MolecularSystem, history: int
                  ) -> RotorHops | None:
    """The rotor Markov chains of a network trained up to rotor symmetry (:mod:`tcbm.rotor_hops`), estimated
    from the training pairs (previous, current frame) at the data's lag; None for ``symmetric_rotors: none``
    and for the frame-based model (history 0), which has no previous frame to turn from."""
    symmetry = _rotor_symmetry(cfg, history)
    if symmetry == "none" or not history:
        return None
    turn = symmetry == "continuous"
    estimator = RotorHopEstimator(cfg.model.rotor_chain.states_per_well if turn else 1, turn)
    pairs = np.stack([data.train_idx - cfg.data.lag, data.train_idx], axis=1)
    return estimator.fit(data.data.xyz, pairs, system.topology).fetch_model()


def _selected_checkpoint(cfg: DictConfig, best: ModelCheckpoint, last: Path) -> Path:
    """The checkpoint whose weights ``model.pt`` gets: the best by ``selection.monitor`` or the last."""
    if cfg.selection.weights == "best" and best.best_model_path:
        return Path(best.best_model_path)
    return last


#: what ``tcbm train`` writes beyond the config's say: raised when the same config and data start making a
#: different artefact, so reruns retrain older ones (2: the rotor-hop Markov chains; 3: rollout validation,
#: and so model selection, turns the rotors with them as ``tcbm backmap`` does; 4: ... and keeps its
#: stereocentres' handedness; 5: ... and draws the stiff coordinates, :mod:`tcbm.stiff_coordinates`).  What
#: rollouts do is :data:`tcbm.backmap.ROLLOUT_RECIPE`, also in the fingerprint: model selection rolls out.
RECIPE = 5


#: config keys added after artefacts had been made without them, each with the value that makes what was made
#: before it (the option off): at that value a key is left out of the fingerprint, so adding an option does not
#: make reruns retrain every older artefact.  Register every new key whose value can reproduce older artefacts.
ADDED_KEYS = {"model.loss.chirality_margin": 0.0, "model.loss.energy_max_pull": None,
              "model.network.hydrogen_angle_max_kT": None}


def training_fingerprint(cfg: DictConfig) -> dict:
    """What a trained model depends on: the resolved config (its output folder aside, and each of
    :data:`ADDED_KEYS` at its value from before it existed), the contents of the training trajectories, the
    :data:`RECIPE` and the :data:`~tcbm.backmap.ROLLOUT_RECIPE` (model selection rolls out as ``tcbm backmap``
    does).  Stored in the artefact's metadata; reruns compare it before reusing one."""
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("out", None)
    for dotted, before in ADDED_KEYS.items():
        *parents, key = dotted.split(".")
        section = config
        for name in parents:
            section = section.get(name, {}) if isinstance(section, dict) else {}
        if isinstance(section, dict) and key in section and section[key] == before:
            del section[key]
    trajectories = config["data"]["trajectories"]
    return {"config": digest(config), "recipe": RECIPE, "rollout_recipe": backmap.ROLLOUT_RECIPE,
            "trajectories": [file_digest(p) for p in expand_paths(trajectories)]}


def train(cfg: DictConfig, progress_position: int = 0) -> Path | None:
    """Train a model from a ``conf/train.yaml``-shaped config; returns the artefact path (None on the
    other ranks of a distributed run).  ``progress_position``: the line of the progress bar (for trainings
    side by side).

    ``checkpoints/last.ckpt`` always holds the final weights; ``model.pt`` holds those chosen by
    ``selection`` (by default the validation with the lowest rollout energy W1), and its metadata records
    which step they are from."""
    started = time.perf_counter()
    if cfg.selection.weights not in ("best", "last") or cfg.selection.mode not in ("min", "max"):
        raise ValueError(f"selection.weights must be 'best' or 'last' and selection.mode 'min' or 'max', got "
                         f"{cfg.selection.weights!r} and {cfg.selection.mode!r}")
    pl.seed_everything(cfg.seed, workers=True)
    out = Path(cfg.out)
    system = load_system(OmegaConf.to_container(cfg.system, resolve=True))
    grid = VoxelGrid(**cfg.model.grid)
    network = OmegaConf.to_container(cfg.model.network, resolve=True)
    unroll = OmegaConf.to_container(cfg.model.unroll, resolve=True)
    trajectories = cfg.data.trajectories
    if OmegaConf.is_list(trajectories):
        trajectories = OmegaConf.to_container(trajectories, resolve=True)
    # unrolled training needs the frames it starts from: history + unroll.steps previous frames per triple
    context = network["history"] + (unroll["steps"] if network["history"] else 0)
    data = BackmapDataModule(system, trajectories, topology=cfg.data.topology, lag=cfg.data.lag, history=context,
                             stride=cfg.data.stride, split=cfg.data.split, val_fraction=cfg.data.val_fraction,
                             n_blocks=cfg.data.n_blocks, batch_size=cfg.data.batch_size,
                             num_workers=cfg.data.num_workers, max_radius=grid.max_radius,
                             balance=OmegaConf.to_container(cfg.data.balance))
    network = resolve_network(network, system, cfg.model.temperature_K, data.data.xyz, data.train_idx)
    if cfg.ckpt_path:
        check_checkpoint(cfg.ckpt_path, system, grid, network)
    loss = cfg.model.loss
    module = CVAEModule(
        system.to_dict(), grid.to_dict(), network, weights=OmegaConf.to_container(loss.weights),
        energy_weight=OmegaConf.to_container(loss.energy), kl_weight=OmegaConf.to_container(loss.kl, resolve=True),
        lr=cfg.model.optim.lr, weight_decay=cfg.model.optim.weight_decay, lr_schedule=cfg.model.optim.lr_schedule,
        temperature=cfg.model.temperature_K, lag=cfg.data.lag, compile=cfg.model.compile,
        prev_noise_nm=cfg.model.prev_noise_nm, unroll=unroll, free_bits=loss.free_bits,
        symmetric_rotors=_rotor_symmetry(cfg, network["history"]), chirality_margin=loss.chirality_margin,
        energy_max_pull=loss.energy_max_pull,
    )
    library = SeedLibrary.from_frames(data.data.xyz, data.train_idx, system.mapping, cfg.data.lag,
                                      network["history"], cfg.model.seed_library_size)
    has_val = len(data.val_idx) > 0
    rotor_hops = _rotor_chains(cfg, data, system, network["history"])
    rollout_validation = _rollout_validation(cfg, data, system, network, library, rotor_hops) if has_val else None
    monitor = cfg.selection.monitor
    if monitor.startswith("val/rollout/") and rollout_validation is None:
        monitor = "val/bond_mae_nm"  # validation split too short to roll out
    checkpoints = ModelCheckpoint(dirpath=str(out / "checkpoints"), filename="best", monitor=monitor if has_val
                                  else None, mode=cfg.selection.mode, save_last=True, save_top_k=1)
    progress_bar = TQDMProgressBar(process_position=progress_position) if cfg.trainer.enable_progress_bar else None
    callbacks = [c for c in (rollout_validation, checkpoints, progress_bar) if c is not None]
    trainer = pl.Trainer(**OmegaConf.to_container(cfg.trainer, resolve=True), default_root_dir=str(out),
                         callbacks=callbacks, logger=_loggers(out), limit_val_batches=None if has_val else 0)
    trainer.fit(module, datamodule=data, ckpt_path=cfg.ckpt_path)
    if trainer.fast_dev_run:
        return out
    last = out / "checkpoints" / "last.ckpt"
    trainer.save_checkpoint(last)  # the final weights, whatever the last validation was
    if not trainer.is_global_zero:  # rank 0 alone selects, encodes and writes the artefact
        return None
    selected = _selected_checkpoint(cfg, checkpoints, last)
    module.to(trainer.strategy.root_device)  # Lightning's teardown left it on the CPU: encode on the GPU
    state = torch.load(selected, map_location=module.device, weights_only=False)
    module.load_state_dict(state["state_dict"])
    sampler = fit_sampler(module.model, data.dataset("train"), cfg.model.gmm.max_samples, cfg.data.batch_size,
                          cfg.model.gmm.components, cfg.seed)
    metadata = {"train_wall_s": time.perf_counter() - started, "steps": trainer.global_step,
                "weights_step": state["global_step"], "weights_checkpoint": selected.name,
                "selection": {"monitor": monitor, "mode": cfg.selection.mode, "weights": cfg.selection.weights,
                              "best_score": None if checkpoints.best_model_score is None
                              else float(checkpoints.best_model_score)},
                "trajectories": data.data.sources, "config": OmegaConf.to_container(cfg, resolve=True),
                "fingerprint": training_fingerprint(cfg)}
    model = BackmapModel(module.model.cpu(), network, system, sampler, library, cfg.data.lag, metadata, rotor_hops)
    return model.save(out / "model.pt")
