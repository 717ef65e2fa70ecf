"""Rotor hops: which staggered well each CH3/NH3 group's labelled hydrogens sit in, as a Markov chain.

With ``model.loss.symmetric_rotors`` the network learns every such group only up to a cyclic relabelling of
its three hydrogens (:mod:`tcbm.symmetry`), so the labels it outputs keep whatever rotamer they start in: a
deterministic decoder turns no methyl.  The discrete part is modelled here instead: per group, a three-state
Markov state model of the rotamer of its first hydrogen (:func:`rotamers`: states centred on the staggered
minima; the evaluation counts hops by the same rule), estimated with deeptime (reversible maximum likelihood) from
the rotamer changes between the previous and current frames of the training triples, i.e. at the data's lag.
Every rollout step draws the group's next state from its row of the transition matrix and relabels the decoded
hydrogens cyclically so that the first one lands in that well.  A cyclic relabelling is a 120° turn: geometry
and energy do not change, only the labelled kinetics (e.g. the C–H bond motions NMR relaxation sees).

Assumed: each rotor hops independently of the others and of the backbone state, with the training data's
rates.  Angles are in rad, coordinates in nm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import mdtraj as md
import numpy as np
import torch
from deeptime.markov import TransitionCountModel
from deeptime.markov.msm import MaximumLikelihoodMSM

from tcbm.energy import dihedrals
from tcbm.symmetry import rotor_hydrogen_groups
from tcbm.systems import bonded_neighbours

WELL = 2 * math.pi / 3  # spacing of a three-fold rotor's staggered minima (rad)


def rotor_axes(topology: md.Topology, groups: np.ndarray) -> np.ndarray:
    """For each hydrogen triple of ``groups`` (g, 3), the atoms (C, X, Y) of its dihedrals H–C–X–Y: the rotor
    atom C, its other neighbour X (the axis) and X's lowest-index heavy neighbour other than C (any other
    neighbour if X has no such heavy one).  Raises if a group's axis atom has no neighbour but C."""
    neighbours = bonded_neighbours(topology)
    axes = []
    for hydrogens in groups:
        centre = neighbours[int(hydrogens[0])][0].index
        axis = next(a.index for a in neighbours[centre] if a.index not in hydrogens)
        beyond = [a for a in neighbours[axis] if a.index != centre]
        if not beyond:
            raise ValueError(f"rotor {topology.atom(centre)}: its axis atom {topology.atom(axis)} has no other "
                             "neighbour to define a dihedral")
        heavy = [a.index for a in beyond if a.element.symbol != "H"]
        axes.append((centre, axis, min(heavy) if heavy else min(a.index for a in beyond)))
    return np.array(axes, dtype=np.int64).reshape(-1, 3)


def hydrogen_dihedrals(xyz: torch.Tensor, groups: torch.Tensor, axes: torch.Tensor) -> torch.Tensor:
    """Dihedrals H–C–X–Y (..., g, 3) rad of every hydrogen of every group in frames ``xyz`` (..., N, 3)."""
    centre, axis, beyond = (axes[:, k, None].expand_as(groups) for k in range(3))
    return dihedrals(xyz, groups, centre, axis, beyond)


def rotor_phases(angles: np.ndarray) -> np.ndarray:
    """Per rotor (columns of ``angles``, rad), the position of one staggered minimum: the phase of the
    three-fold density, arg⟨exp(3iφ)⟩ / 3."""
    return np.angle(np.exp(3j * angles).mean(axis=0)) / 3.0


def rotamers(angles: torch.Tensor, phases: torch.Tensor) -> torch.Tensor:
    """Rotamer (0, 1, 2) of dihedrals ``angles`` (..., g) rad, wells centred on ``phases`` (g,) + k·120°, so
    their boundaries lie on the eclipsed maxima and librations about a minimum are not hops."""
    return torch.round((angles - phases) / WELL).long() % 3


@dataclass(frozen=True)
class RotorHops:
    """The fitted rotor Markov chains: hydrogen triples ``groups`` (g, 3), their dihedral atoms ``axes`` (g, 3)
    (see :func:`rotor_axes`), the well-centre ``phases`` (g,) rad and row-stochastic ``transition_matrices``
    (g, 3, 3) per data lag (a state never left in training stays put)."""

    groups: np.ndarray
    axes: np.ndarray
    phases: np.ndarray
    transition_matrices: np.ndarray
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see _tensors

    def __post_init__(self) -> None:
        g = len(self.groups)
        shapes = {"groups": (g, 3), "axes": (g, 3), "phases": (g,), "transition_matrices": (g, 3, 3)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"RotorHops.{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        if not np.allclose(self.transition_matrices.sum(-1), 1.0, atol=1e-6) or (self.transition_matrices < 0).any():
            raise ValueError("RotorHops.transition_matrices must be row-stochastic")

    def states(self, xyz: torch.Tensor) -> torch.Tensor:
        """Rotamer (..., g) of each group's first hydrogen in frames ``xyz`` (..., N, 3) nm."""
        groups, axes, phases, _ = self._tensors(xyz.device, xyz.dtype)
        return rotamers(hydrogen_dihedrals(xyz, groups[:, :1], axes)[..., 0], phases)

    def step(self, frame: torch.Tensor, previous: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """``frame`` (B, N, 3) with each group's hydrogens cyclically relabelled so that the first one sits in
        the well drawn from the chain's row for its rotamer in ``previous`` (B, N, 3), using ``uniforms``
        (B, g) in [0, 1): the hydrogen nearest (in angle) to that well's centre becomes the first."""
        groups, axes, phases, matrices = self._tensors(frame.device, frame.dtype)
        if not len(groups):
            return frame
        now = self.states(previous)  # (B, g)
        rows = matrices[torch.arange(len(groups), device=frame.device), now]  # (B, g, 3)
        drawn = (uniforms[..., None].double() >= rows.cumsum(-1)).sum(-1).clamp(max=2)  # (B, g)
        centres = phases + WELL * drawn  # (B, g)
        offset = hydrogen_dihedrals(frame, groups, axes) - centres[..., None]  # (B, g, 3)
        first = torch.atan2(offset.sin(), offset.cos()).abs().argmin(-1)  # (B, g)
        order = (first[..., None] + torch.arange(3, device=frame.device)) % 3  # cyclic: no reflection
        relabelled = frame[:, groups].gather(2, order[..., None].expand(-1, -1, -1, 3))  # (B, g, 3, 3)
        return frame.index_copy(1, groups.flatten(), relabelled.flatten(1, 2))

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """Groups, axes, phases (in ``dtype``) and transition matrices (float64) on ``device``, made once per
        device and dtype: a rollout calls this every frame."""
        key = (device, dtype)
        if key not in self._on_device:
            self._on_device[key] = (
                torch.as_tensor(self.groups, device=device), torch.as_tensor(self.axes, device=device),
                torch.as_tensor(self.phases, device=device, dtype=dtype),
                torch.as_tensor(self.transition_matrices, device=device, dtype=torch.float64))
        return self._on_device[key]

    def to_dict(self) -> dict[str, list]:
        return {k: np.asarray(getattr(self, k)).tolist() for k in ("groups", "axes", "phases", "transition_matrices")}

    @classmethod
    def from_dict(cls, d: dict) -> RotorHops:
        return cls(np.asarray(d["groups"], dtype=np.int64).reshape(-1, 3),
                   np.asarray(d["axes"], dtype=np.int64).reshape(-1, 3),
                   np.asarray(d["phases"], dtype=np.float64), np.asarray(d["transition_matrices"]).reshape(-1, 3, 3))


class RotorHopEstimator:
    """Estimates :class:`RotorHops` from frame pairs: ``fit(xyz, pairs, topology)`` then ``fetch_model()``."""

    def __init__(self, batch: int = 4096) -> None:
        self.batch = batch
        self._model: RotorHops | None = None

    def fit(self, xyz: np.ndarray, pairs: np.ndarray, topology: md.Topology) -> RotorHopEstimator:
        """Count each group's rotamer transitions over the (previous, current) frame-index ``pairs`` (P, 2) of
        ``xyz`` (F, N, 3) nm and fit a reversible MSM per group on its largest connected set of rotamers."""
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        if not len(pairs):
            raise ValueError("no frame pairs to estimate rotor hops from")
        if np.shape(xyz)[1:] != (topology.n_atoms, 3):
            raise ValueError(f"frames of shape {np.shape(xyz)} do not fit the topology ({topology.n_atoms} atoms)")
        if pairs.min() < 0 or pairs.max() >= len(xyz):
            raise ValueError(f"frame pairs index frames {pairs.min()}..{pairs.max()}, but there are {len(xyz)}")
        groups = rotor_hydrogen_groups(topology)
        axes = rotor_axes(topology, groups)
        frames = np.unique(pairs)
        angles = self._first_hydrogen_dihedrals(xyz, frames, groups, axes)  # (frames, g)
        phases = rotor_phases(angles.numpy())
        states = rotamers(angles, torch.as_tensor(phases)).numpy()
        before, after = states[np.searchsorted(frames, pairs[:, 0])], states[np.searchsorted(frames, pairs[:, 1])]
        matrices = np.stack([self._chain(before[:, k], after[:, k]) for k in range(len(groups))]) \
            if len(groups) else np.zeros((0, 3, 3))
        self._model = RotorHops(groups, axes, phases, matrices)
        return self

    def _first_hydrogen_dihedrals(self, xyz: np.ndarray, frames: np.ndarray, groups: np.ndarray,
                                  axes: np.ndarray) -> torch.Tensor:
        """Dihedral (len(frames), g) rad of each group's first hydrogen in ``xyz[frames]``, in batches of frames,
        reading only the atoms the dihedrals need."""
        atoms = np.unique(np.concatenate([groups.ravel(), axes.ravel()]))
        local = torch.as_tensor(np.searchsorted(atoms, groups[:, :1])), torch.as_tensor(np.searchsorted(atoms, axes))
        batches = [hydrogen_dihedrals(torch.as_tensor(xyz[frames[s:s + self.batch]][:, atoms], dtype=torch.float64),
                                      *local)[..., 0] for s in range(0, len(frames), self.batch)]
        return torch.cat(batches) if len(groups) else torch.zeros(len(frames), 0, dtype=torch.float64)

    @staticmethod
    def _chain(before: np.ndarray, after: np.ndarray) -> np.ndarray:
        counts = np.zeros((3, 3))
        np.add.at(counts, (before, after), 1.0)
        largest = TransitionCountModel(counts).submodel_largest()
        matrix = np.eye(3)
        if largest.n_states > 1:
            msm = MaximumLikelihoodMSM(reversible=True).fit_fetch(largest)
            active = msm.count_model.state_symbols
            matrix[np.ix_(active, active)] = msm.transition_matrix
        return matrix

    def fetch_model(self) -> RotorHops:
        if self._model is None:
            raise RuntimeError("RotorHopEstimator.fit has not been called")
        return self._model
