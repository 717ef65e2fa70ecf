"""Training data: triples (AA^{t-lag·k..t-lag}, CG^t, AA^t) from one or many all-atom trajectories.

Each triple is translated by the centroid of CG^t (so the AA^{t-1} → AA^t displacement is kept) and
rotated by one random rotation shared by all its frames, drawn afresh every time it is drawn.
Train/validation splits are by whole trajectories or by contiguous blocks, never by random frames.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler

from tcbm.balance import conformation_weights
from tcbm.geometry import random_rotations
from tcbm.io import expand_paths, load_trajectory
from tcbm.mapping import CGMapping
from tcbm.systems import MolecularSystem


@dataclass
class TrajectorySet:
    """All-atom trajectories concatenated: ``xyz`` (frames, atoms, 3) nm, with per-trajectory offsets."""

    xyz: np.ndarray
    lengths: list[int]
    sources: list[str]

    @property
    def offsets(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)


def load_aa_trajectories(
    paths: str | Sequence[str], system: MolecularSystem, topology: str | Path | None = None, stride: int = 1
) -> TrajectorySet:
    """Load all-atom trajectories (any mdtraj format; globs allowed) checked against ``system``."""
    files = expand_paths(paths)
    arrays, lengths = [], []
    for path in files:
        traj = load_trajectory(path, topology if topology is not None else system.topology, stride=stride)
        system.check_atoms(traj.topology, str(path))
        arrays.append(traj.xyz.astype(np.float32))
        lengths.append(traj.n_frames)
    return TrajectorySet(np.concatenate(arrays), lengths, [str(p) for p in files])


def split_triples(
    data: TrajectorySet, lag: int, history: int, split: str = "block", val_fraction: float = 0.1, n_blocks: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Global frame indices of triple targets for training and validation.

    ``split='trajectory'`` holds out the last trajectories; ``'block'`` cuts every trajectory into
    ``n_blocks`` contiguous blocks and holds out evenly spaced ones.  A triple belongs to a split only if
    all its frames do, so no validation frame is ever a training input or target.
    """
    span = lag * max(history, 1)
    for source, length in zip(data.sources, data.lengths, strict=False):
        if length < span + 1:
            raise ValueError(f"{source}: {length} frames, need at least lag*history+1 = {span + 1} for one triple")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    labels = []  # per frame: True if validation
    if split == "trajectory":
        n_val = int(round(val_fraction * len(data.lengths)))
        if val_fraction > 0 and (n_val == 0 or n_val == len(data.lengths)):
            raise ValueError(
                f"split='trajectory' with {len(data.lengths)} trajectories and val_fraction={val_fraction} leaves "
                "an empty split; give more trajectories or use split='block'"
            )
        for k, length in enumerate(data.lengths):
            labels.append(np.full(length, k >= len(data.lengths) - n_val))
    elif split == "block":
        n_val = int(round(val_fraction * n_blocks))
        val_blocks = set(np.linspace(0, n_blocks - 1, n_val + 2)[1:-1].round().astype(int)) if n_val else set()
        for length in data.lengths:
            label = np.zeros(length, dtype=bool)
            for b, block in enumerate(np.array_split(np.arange(length), n_blocks)):
                label[block] = b in val_blocks
            labels.append(label)
    else:
        raise ValueError(f"split must be 'block' or 'trajectory', got {split!r}")
    train, val = [], []
    for offset, label in zip(data.offsets, labels, strict=False):
        t = np.arange(span, len(label))
        same = np.ones_like(t, dtype=bool)
        for h in range(1, max(history, 1) + 1):
            same &= label[t - h * lag] == label[t]
        train.append(offset + t[same & ~label[t]])
        val.append(offset + t[same & label[t]])
    train_idx, val_idx = np.concatenate(train), np.concatenate(val)
    if train_idx.size == 0:
        raise ValueError("no training triples left after the split; lower val_fraction or give longer trajectories")
    return train_idx, val_idx


class TripleDataset(Dataset):
    """Triples around target frames ``targets`` (global indices into ``xyz``), batch-fetched.

    An item (or batch, via ``__getitems__``) is a dict of float32 tensors: ``aa`` (N, 3), ``cg`` (n, 3),
    ``aa_prev`` (history, N, 3) ordered t-lag, t-2·lag, ...; coordinates in nm, centred on CG^t.
    ``rotation_seed`` fixes each triple's rotation (reproducible validation); None draws a fresh one each time.
    """

    def __init__(self, xyz: np.ndarray, targets: np.ndarray, mapping: CGMapping, lag: int = 1, history: int = 1,
                 augment: bool = True, rotation_seed: int | None = None) -> None:
        self.xyz = torch.as_tensor(xyz, dtype=torch.float32)
        self.targets = torch.as_tensor(targets, dtype=torch.long)
        self.mapping, self.lag, self.history, self.augment = mapping, lag, history, augment
        self.fixed_rotations = None if rotation_seed is None else random_rotations(
            len(targets), generator=torch.Generator().manual_seed(rotation_seed))

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, items: Sequence[int]) -> dict[str, torch.Tensor]:
        items = torch.as_tensor(items, dtype=torch.long)
        t = self.targets[items]
        aa = self.xyz[t]
        prev = torch.stack([self.xyz[t - h * self.lag] for h in range(1, self.history + 1)], dim=1) if self.history \
            else aa.new_zeros((len(t), 0, *aa.shape[1:]))
        cg = self.mapping(aa)
        centre = cg.mean(dim=1, keepdim=True)
        aa, cg, prev = aa - centre, cg - centre, prev - centre[:, None]
        if self.augment:
            rot = (random_rotations(len(t)) if self.fixed_rotations is None else self.fixed_rotations[items])
            rot = rot.transpose(1, 2)
            aa, cg, prev = aa @ rot, cg @ rot, prev @ rot[:, None]
        return {"aa": aa, "cg": cg, "aa_prev": prev, "index": t}

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([item]).items()}


def keep_batch(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate function for batches that ``__getitems__`` already built."""
    return batch


def max_centred_radius(xyz: np.ndarray, mapping: CGMapping, lag: int, history: int) -> float:
    """Largest distance (nm) of any atom of a triple from the CG^t centroid (what the grid must hold)."""
    centre = mapping(xyz).mean(axis=1, keepdims=True)
    radius = np.linalg.norm(xyz - centre, axis=-1).max()
    for h in range(1, history + 1):
        shift = h * lag
        radius = max(radius, np.linalg.norm(xyz[:-shift] - centre[shift:], axis=-1).max())
    return float(radius)


class BackmapDataModule(pl.LightningDataModule):
    """Lightning data module over all-atom trajectories of one system."""

    def __init__(self, system: MolecularSystem, trajectories: str | Sequence[str], topology: str | None = None,
                 lag: int = 1, history: int = 1, stride: int = 1, split: str = "block", val_fraction: float = 0.1,
                 n_blocks: int = 10, batch_size: int = 32, num_workers: int = 0, max_radius: float | None = None,
                 balance: dict | None = None):
        """``balance``: keyword arguments of :func:`tcbm.balance.conformation_weights` (``power`` > 0: training
        triples are drawn, with replacement, with those weights of their CG^t; None or power 0: uniformly)."""
        super().__init__()
        if lag < 1 or history < 0 or batch_size < 1:
            raise ValueError(f"need lag >= 1, history >= 0, batch_size >= 1 (got {lag}, {history}, {batch_size})")
        self.system, self.lag, self.history = system, lag, history
        self.batch_size, self.num_workers = batch_size, num_workers
        self.data = load_aa_trajectories(trajectories, system, topology, stride)
        self.train_idx, self.val_idx = split_triples(self.data, lag, history, split, val_fraction, n_blocks)
        if max_radius is not None:
            radius = max_centred_radius(self.data.xyz, system.mapping, lag, history)
            if radius > max_radius:
                raise ValueError(
                    f"trajectories {self.data.sources}: atoms reach {radius:.3f} nm from the CG centroid, "
                    f"{radius - max_radius:.3f} nm beyond the voxel grid's usable half-width {max_radius:.3f} nm; "
                    f"increase model.grid.r_grid by at least {2 * (radius - max_radius):.2f} nm"
                )
        self.train_weights = None
        if balance and balance.get("power", 0) > 0:
            cg = [system.mapping(x) for x in np.split(self.data.xyz, self.data.offsets[1:])]
            self.train_weights = np.concatenate(conformation_weights(cg, **balance))[self.train_idx]

    def dataset(self, which: str, augment: bool = True) -> TripleDataset:
        """Training triples rotate afresh every draw; validation triples keep one seeded rotation each."""
        idx = self.train_idx if which == "train" else self.val_idx
        return TripleDataset(self.data.xyz, idx, self.system.mapping, self.lag, self.history, augment,
                             rotation_seed=None if which == "train" else 0)

    def _loader(self, which: str, shuffle: bool) -> DataLoader:
        dataset = self.dataset(which)
        sampler = None
        if shuffle and self.train_weights is not None:
            sampler, shuffle = WeightedRandomSampler(self.train_weights, len(dataset), replacement=True), False
        return DataLoader(dataset, batch_size=self.batch_size, shuffle=shuffle, sampler=sampler, collate_fn=keep_batch,
                          num_workers=self.num_workers, persistent_workers=self.num_workers > 0,
                          drop_last=which == "train" and len(dataset) > self.batch_size)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
