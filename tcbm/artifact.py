"""The model artefact: one file with everything inference needs — network weights, latent GMM,
system (topology, mapping, force field), grid settings, the seed library of training frames and, for models
that learn rotor groups up to relabelling, the rotor-hop Markov chains.  The stiff-coordinate model
(:mod:`tcbm.stiff_coordinates`) is not stored: it is fitted from the library when a rollout first needs it."""

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
from tcbm.rotor_hops import RotorHops
from tcbm.stiff_coordinates import StiffCoordinates, fit_stiff_coordinates
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
    """A trained backmapper: :class:`BackmapCVAE` + :class:`LatentSampler` + system + seed library, and the
    :class:`RotorHops` its rollouts draw rotor hops from (None: the network's labels are kept)."""

    def __init__(self, network: BackmapCVAE, network_config: dict, system: MolecularSystem, sampler: LatentSampler,
                 library: SeedLibrary, lag: int = 1, metadata: dict | None = None,
                 rotor_hops: RotorHops | None = None) -> None:
        self.network, self.network_config, self.system = network.eval(), network_config, system
        self.sampler, self.library, self.lag = sampler, library, lag
        self.metadata = metadata or {}
        self.rotor_hops = rotor_hops
        self._stiff_coordinates: StiffCoordinates | None = None

    def stiff_coordinates(self) -> StiffCoordinates:
        """The model's stiff-coordinate processes (:func:`~tcbm.stiff_coordinates.fit_stiff_coordinates` on its
        library, seeded: the same for every load of the same artefact), fitted on the first call.  Rotor
        hydrogens' dihedrals are drawn within their wells unless the rotor chains turn them (``turn``)."""
        if self._stiff_coordinates is None:
            turned = self.rotor_hops is not None and self.rotor_hops.turn
            self._stiff_coordinates = fit_stiff_coordinates(self.network, self.sampler, self.library,
                                                            self.system.topology, self.system.mapping.weights.any(0),
                                                            np.zeros((0, 3), dtype=np.int64) if turned else None)
        return self._stiff_coordinates

    @property
    def grid(self) -> VoxelGrid:
        return self.network.grid

    def fingerprint(self) -> str:
        """Content hash of everything that shapes a rollout: system, network (config and weights), latent
        sampler, seed library, lag and rotor hops; equal for a model and its saved-and-loaded copy."""
        weights = [(k, v.detach().cpu().numpy()) for k, v in sorted(self.network.state_dict().items())]
        sampler = {k: np.asarray(v) for k, v in sorted(self.sampler.to_dict().items())}
        return digest(self.system.to_dict(), self.network_config, self.lag, *[x for kv in weights for x in kv],
                      *[x for kv in sampler.items() for x in kv], self.library.cg, self.library.aa,
                      self.library.aa_prev, *([] if self.rotor_hops is None else [self.rotor_hops.to_dict()]))

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
            "rotor_hops": None if self.rotor_hops is None else self.rotor_hops.to_dict(),
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
        hops = state.get("rotor_hops")  # absent from artefacts written before rotor hops existed
        return cls(network.to(device), state["network_config"], system, LatentSampler.from_dict(state["sampler"]),
                   SeedLibrary(**state["library"]), state["lag"], state.get("metadata"),
                   None if hops is None else RotorHops.from_dict(hops))
