"""Rotor hops: where each CH3/NH3 group's labelled hydrogens turn to, as a Markov chain of its dihedral.

With ``model.loss.symmetric_rotors`` the network learns every such group only up to a cyclic relabelling of
its three hydrogens (:mod:`tcbm.symmetry`), so the labels it outputs keep whatever rotamer they start in: a
deterministic decoder turns no methyl.  The discrete part is modelled here instead: per group, a three-state
Markov state model of the rotamer of its first hydrogen (:func:`rotamers`: states centred on the staggered
minima; the evaluation counts hops by the same rule), estimated with deeptime (reversible maximum likelihood) from
the rotamer changes between the previous and current frames of the training triples, i.e. at the data's lag.
Every rollout step draws the group's next state from its row of the transition matrix and relabels the decoded
hydrogens cyclically so that the first one lands in that well.  A cyclic relabelling is a 120° turn: geometry
and energy do not change, only the labelled kinetics (e.g. the C–H bond motions NMR relaxation sees).

With ``model.loss.symmetric_rotors: continuous`` the network learns a group's geometry but not its dihedral at
all, and the chain carries the whole turn: its states are ``states_per_well`` bins per well (the 120° period
cut into equal bins centred so that the wells' minima are bin centres), and a step turns the decoded hydrogens
rigidly about the group's C–X axis (``turn``) so that the first one's dihedral lies at a uniformly drawn angle
inside the drawn bin (the position of the same uniform number within the drawn row's interval: no extra draw).
A rigid turn keeps the group's bond lengths and angles.

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
from tcbm.geometry import wrapped
from tcbm.symmetry import rotor_hydrogen_groups, turn_groups
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


def rotamers(angles: torch.Tensor, phases: torch.Tensor, states_per_well: int = 1) -> torch.Tensor:
    """Rotamer (0, 1, 2) of dihedrals ``angles`` (..., g) rad, wells centred on ``phases`` (g,) + k·120°, so
    their boundaries lie on the eclipsed maxima and librations about a minimum are not hops; with
    ``states_per_well`` > 1 the bin (0 .. 3·states_per_well − 1) of width 120°/states_per_well centred on
    ``phases`` + k·(that width)."""
    return torch.round((angles - phases) * (states_per_well / WELL)).long() % (3 * states_per_well)


@dataclass(frozen=True)
class RotorHops:
    """The fitted rotor Markov chains: hydrogen triples ``groups`` (g, 3), their dihedral atoms ``axes`` (g, 3)
    (see :func:`rotor_axes`), the well-centre ``phases`` (g,) rad and row-stochastic ``transition_matrices``
    (g, S, S) per data lag over S = 3·``states_per_well`` states (:func:`rotamers`); a step relabels the
    hydrogens into the drawn well or, with ``turn``, turns them into the drawn bin (see the module's text)."""

    groups: np.ndarray
    axes: np.ndarray
    phases: np.ndarray
    transition_matrices: np.ndarray
    states_per_well: int = 1
    turn: bool = False
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)  # see _tensors

    def __post_init__(self) -> None:
        g, n = len(self.groups), 3 * self.states_per_well
        if self.states_per_well < 1 or (self.states_per_well > 1 and not self.turn):
            raise ValueError(f"RotorHops: states_per_well must be >= 1, and 1 unless the chain turns the groups "
                             f"(a relabelling only reaches whole wells); got {self.states_per_well}, turn={self.turn}")
        shapes = {"groups": (g, 3), "axes": (g, 3), "phases": (g,), "transition_matrices": (g, n, n)}
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"RotorHops.{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        if not np.allclose(self.transition_matrices.sum(-1), 1.0, atol=1e-6) or (self.transition_matrices < 0).any():
            raise ValueError("RotorHops.transition_matrices must be row-stochastic")

    def states(self, xyz: torch.Tensor) -> torch.Tensor:
        """State (..., g) of each group's first hydrogen in frames ``xyz`` (..., N, 3) nm (:func:`rotamers`)."""
        groups, axes, phases, _ = self._tensors(xyz.device, xyz.dtype)
        return rotamers(hydrogen_dihedrals(xyz, groups[:, :1], axes)[..., 0], phases, self.states_per_well)

    def step(self, frame: torch.Tensor, previous: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
        """``frame`` (B, N, 3) with each group's first hydrogen put into the state drawn from the chain's row
        for its state in ``previous`` (B, N, 3), using ``uniforms`` (B, g) in [0, 1): by a cyclic relabelling
        (the hydrogen nearest, in angle, to the drawn well's centre becomes the first) or, with ``turn``, by a
        rigid turn of the group about its C–X axis to a uniform angle inside the drawn bin."""
        groups, axes, phases, matrices = self._tensors(frame.device, frame.dtype)
        if not len(groups):
            return frame
        now = self.states(previous)  # (B, g)
        rows = matrices[torch.arange(len(groups), device=frame.device), now]  # (B, g, S)
        upper = rows.cumsum(-1)
        u = uniforms.double()
        drawn = (u[..., None] >= upper).sum(-1).clamp(max=matrices.shape[-1] - 1)  # (B, g)
        if self.turn:
            width, top = (x.gather(-1, drawn[..., None])[..., 0] for x in (rows, upper))  # the drawn interval
            within = ((u - (top - width)) / width.clamp_min(1e-300)).clamp(0.0, 1.0)  # uniform in [0, 1]
            angle = phases + (drawn + within.to(frame.dtype) - 0.5) * (WELL / self.states_per_well)  # (B, g)
            return turn_groups(frame, groups, axes[:, :2], angle - hydrogen_dihedrals(frame, groups[:, :1], axes)[..., 0])
        centres = phases + WELL * drawn  # (B, g)
        offset = hydrogen_dihedrals(frame, groups, axes) - centres[..., None]  # (B, g, 3)
        first = wrapped(offset).abs().argmin(-1)  # (B, g)
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

    def to_dict(self) -> dict:
        arrays = {k: np.asarray(getattr(self, k)).tolist() for k in ("groups", "axes", "phases", "transition_matrices")}
        return {**arrays, "states_per_well": self.states_per_well, "turn": self.turn}

    @classmethod
    def from_dict(cls, d: dict) -> RotorHops:
        """Inverse of :meth:`to_dict` (chains stored before ``turn`` existed: three relabelled wells)."""
        n = 3 * d.get("states_per_well", 1)
        return cls(np.asarray(d["groups"], dtype=np.int64).reshape(-1, 3),
                   np.asarray(d["axes"], dtype=np.int64).reshape(-1, 3),
                   np.asarray(d["phases"], dtype=np.float64), np.asarray(d["transition_matrices"]).reshape(-1, n, n),
                   d.get("states_per_well", 1), d.get("turn", False))


class RotorHopEstimator:
    """Estimates :class:`RotorHops` from frame pairs: ``fit(xyz, pairs, topology)`` then ``fetch_model()``;
    ``states_per_well`` and ``turn`` as in :class:`RotorHops`."""

    def __init__(self, states_per_well: int = 1, turn: bool = False, batch: int = 4096) -> None:
        self.states_per_well, self.turn, self.batch = states_per_well, turn, batch
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
        n = 3 * self.states_per_well
        states = rotamers(angles, torch.as_tensor(phases), self.states_per_well).numpy()
        before, after = states[np.searchsorted(frames, pairs[:, 0])], states[np.searchsorted(frames, pairs[:, 1])]
        matrices = np.stack([self._chain(before[:, k], after[:, k], n) for k in range(len(groups))]) \
            if len(groups) else np.zeros((0, n, n))
        self._model = RotorHops(groups, axes, phases, matrices, self.states_per_well, self.turn)
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
    def _chain(before: np.ndarray, after: np.ndarray, n: int) -> np.ndarray:
        """Reversible MLE transition matrix (n, n) on the largest connected set of states; a state outside it
        moves as the nearest one inside (circularly; an unvisited barrier bin like its neighbour), and if that
        set is a single state (a rotor never seen turning) every state stays put."""
        counts = np.zeros((n, n))
        np.add.at(counts, (before, after), 1.0)
        largest = TransitionCountModel(counts).submodel_largest()
        matrix = np.eye(n)
        if largest.n_states > 1:
            msm = MaximumLikelihoodMSM(reversible=True).fit_fetch(largest)
            active = msm.count_model.state_symbols
            matrix[np.ix_(active, active)] = msm.transition_matrix
            distance = np.abs(np.arange(n)[:, None] - active[None])
            nearest = active[np.minimum(distance, n - distance).argmin(1)]
            matrix = matrix[nearest]
        return matrix

    def fetch_model(self) -> RotorHops:
        if self._model is None:
            raise RuntimeError("RotorHopEstimator.fit has not been called")
        return self._model
