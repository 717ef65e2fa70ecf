"""The model artefact: one file with everything inference needs — network weights, latent GMM,
system (topology, mapping, force field), grid settings and the seed library of training frames."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcbm.fingerprint import digest
from tcbm.io import atomic_path
from tcbm.latent import LatentSampler
from tcbm.model import BackmapCVAE
from tcbm.systems import MolecularSystem
from tcbm.voxels import VoxelGrid

FORMAT = "tcbm-model-1"


@dataclass
class SeedLibrary:
    """Training frames for seeding rollouts and for the nearest-neighbour baseline (nm, uncentred):
    ``cg`` (L, n, 3) = f_cg(AA^t), ``aa`` (L, N, 3) = AA^t, ``aa_prev`` (L, k, N, 3) = AA^{t-lag..t-k·lag}."""

    cg: np.ndarray
    aa: np.ndarray
    aa_prev: np.ndarray

    @classmethod
    def from_frames(cls, xyz: np.ndarray, targets: np.ndarray, mapping, lag: int, history: int,
                    max_frames: int | None = None) -> SeedLibrary:
        """Library of the triples ending at global frame indices ``targets`` of ``xyz``, evenly thinned."""
        if max_frames is not None and len(targets) > max_frames:
            targets = targets[np.linspace(0, len(targets) - 1, max_frames).round().astype(int)]
        prev = np.stack([xyz[targets - h * lag] for h in range(1, max(history, 1) + 1)], axis=1)
        aa = xyz[targets]
        return cls(np.asarray(mapping(aa), dtype=np.float32), aa.astype(np.float32), prev.astype(np.float32))


class BackmapModel:
    """A trained backmapper: :class:`BackmapCVAE` + :class:`LatentSampler` + system + seed library."""

    def __init__(self, network: BackmapCVAE, network_config: dict, system: MolecularSystem, sampler: LatentSampler,
                 library: SeedLibrary, lag: int = 1, metadata: dict | None = None) -> None:
        self.network, self.network_config, self.system = network.eval(), network_config, system
        self.sampler, self.library, self.lag = sampler, library, lag
        self.metadata = metadata or {}

    @property
    def grid(self) -> VoxelGrid:
        return self.network.grid

    def fingerprint(self) -> str:
        """Content hash of everything that shapes a rollout: system, network (config and weights), latent
        sampler, seed library and lag; equal for a model and its saved-and-loaded copy."""
        weights = [(k, v.detach().cpu().numpy()) for k, v in sorted(self.network.state_dict().items())]
        sampler = {k: np.asarray(v) for k, v in sorted(self.sampler.to_dict().items())}
        return digest(self.system.to_dict(), self.network_config, self.lag, *[x for kv in weights for x in kv],
                      *[x for kv in sampler.items() for x in kv], self.library.cg, self.library.aa,
                      self.library.aa_prev)

    def save(self, path: str | Path) -> Path:
        state = {
            "format": FORMAT,
            "system": self.system.to_dict(),
            "grid": self.grid.to_dict(),
            "network_config": self.network_config,
            "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
            "sampler": self.sampler.to_dict(),
            "library": {"cg": self.library.cg, "aa": self.library.aa, "aa_prev": self.library.aa_prev},
            "lag": self.lag,
            "metadata": self.metadata,
        }
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> BackmapModel:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"model artefact {path} does not exist")
        try:
            state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as err:
            raise ValueError(f"{path} is not a readable tcbm model artefact: {err}") from err
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a tcbm model artefact (expected format {FORMAT!r})")
        system = MolecularSystem.from_dict(state["system"])
        network = BackmapCVAE.for_system(system, VoxelGrid(**state["grid"]), **state["network_config"])
        network.load_state_dict(state["state_dict"])
        return cls(network.to(device), state["network_config"], system, LatentSampler.from_dict(state["sampler"]),
                   SeedLibrary(**state["library"]), state["lag"], state.get("metadata"))
