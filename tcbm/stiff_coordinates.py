"""Stiff coordinates: the fast vibrations of the CG-free atoms, drawn afresh every frame.

At the data's lag (1 ps in the benchmarks) a bond length, a bond angle or a planar or tetrahedral dihedral has
long forgotten its earlier value: it vibrates on a 10-100 fs time scale.  The reference's CG-free atoms therefore
jitter from frame to frame about where the slow coordinates put them; a deterministic decoder outputs the
conditional mean and moves them too little (``benchmarks/adp/free_atom_displacements.md``).

The model: every CG-free atom that hangs off the rest of the molecule — the bond to the atom it is placed from is
a bridge of the bond graph whose far side holds no CG-mapped atom — is placed in internal coordinates relative to
three atoms placed before it (a Z-matrix row ``i, a, b, c``: ``a`` its bonded parent, ``b`` bonded to ``a``, ``c``
bonded to ``a`` (an improper, preferred) or to ``b``): the bond length r = |i − a|, the angle θ = ∠(i, a, b) and
the dihedral φ(i, a, b, c). r and θ are always stiff (a bond the reference holds fixed, a constraint, is set to
its length without noise: its spread in the data is the trajectory file's rounding, not a vibration), φ where its
reference distribution is narrow (circular standard deviation below ``max_dihedral_sd``: planar and tetrahedral
arrangements, not rotors or rotamers). The soft dihedral of a CH3/NH3 group's hydrogen is stiff modulo the group's
three-fold symmetry: its offset from the nearest staggered minimum (within ±60°) is drawn, its well is kept (which
well is the rotor chain's, :mod:`tcbm.rotor_hops`, or the decoder's): the libration inside a well is as fast as
any angle's, and a nearly free rotor's decoded offset is no better than a guess. The stiff coordinates y of a
frame are drawn from a linear-Gaussian regression on their decoded values and, for a temporal model, on the
previous frame's, y = b + B x + L ξ, fitted on training triples decoded from their true previous frames: the drawn
values keep what the decoder knows about the condition, have the reference's covariance (the angles about one
centre stay consistent with one another), and the residual part is new every frame. Other soft dihedrals keep the
decoded value; atoms beyond a placed atom (its branch) move rigidly with it before they are placed in turn.

Assumed: stiff coordinates Gaussian and linear in their decoded values.  Atoms with any weight in the CG mapping
never move, so the CG is kept exactly.  Lengths in nm, angles in rad.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import mdtraj as md
import numpy as np
import torch

from tcbm.energy import angles, dihedrals
from tcbm.geometry import wrapped
from tcbm.latent import LatentSampler
from tcbm.model import BackmapCVAE
from tcbm.rollout import step
from tcbm.symmetry import rotor_hydrogen_groups
from tcbm.systems import bonded_neighbours

if TYPE_CHECKING:
    from tcbm.artifact import SeedLibrary


def placement_plan(topology: md.Topology, anchored: np.ndarray) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """The Z-matrix of the hanging atoms (see the module's text) of ``topology``, given the ``anchored`` atoms
    (bool, N: those with CG weight): rows ``(i, a, b, c)`` (m, 4) in placement order, per row the atoms of i's
    branch (beyond i, carried along rigidly when i is placed), and the context pairs ``(row, p)`` (K, 2): every
    neighbour p of a row's parent a other than i and b that never moves (not hanging), whose direction from a
    in the row's frame tells where the atom belongs (e.g. Halpha's place depends on where the Calpha's C is)."""
    neighbours = {k: sorted(a.index for a in v) for k, v in bonded_neighbours(topology).items()}
    anchored = np.asarray(anchored, dtype=bool)
    parent, depth, order = {}, {}, []
    queue = deque(int(i) for i in np.flatnonzero(anchored))
    for i in queue:
        depth[i] = 0
    while queue:  # breadth first from the anchored atoms: every free atom's parent is one step nearer to them
        atom = queue.popleft()
        for other in neighbours.get(atom, []):
            if other not in depth:
                depth[other], parent[other] = depth[atom] + 1, atom
                order.append(other)
                queue.append(other)
    hanging = {}  # atom -> its side of the bond to its parent, for every atom whose side holds no anchored atom
    for i in order:
        side = _side(neighbours, i, parent[i])
        if parent[i] not in side and not anchored[list(side)].any():
            hanging[i] = side
    rows, branches, context = [], [], []
    for i, side in hanging.items():
        a = parent[i]
        done = {row[0] for row in rows}
        placed = [n for n in neighbours[a] if n != i and (n not in hanging or n in done)]
        if not placed:
            continue
        b = parent[a] if a in parent and parent[a] in placed else min(placed, key=lambda n: (not anchored[n], n))
        improper = [n for n in placed if n != b]
        proper = [n for n in neighbours[b] if n not in (a, i) and (n not in hanging or n in done)]
        if not improper + proper:
            continue
        c = min(improper or proper, key=lambda n: (not anchored[n], n))
        context.extend((len(rows), n) for n in neighbours[a] if n not in (i, b) and n not in hanging)
        rows.append((i, a, b, c))
        branches.append(np.array(sorted(side - {i}), dtype=np.int64))
    return np.array(rows, dtype=np.int64).reshape(-1, 4), branches, np.array(context, dtype=np.int64).reshape(-1, 2)


def _side(neighbours: dict[int, list[int]], start: int, across: int) -> set[int]:
    """The atoms reachable from ``start`` without using its bond to ``across``."""
    seen, stack = {start}, [start]
    while stack:
        atom = stack.pop()
        for other in neighbours.get(atom, []):
            if (atom, other) != (start, across) and other not in seen:
                seen.add(other)
                stack.append(other)
    return seen


def internal_coordinates(xyz: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """(r nm, θ rad, φ rad) (..., m, 3) of the Z-matrix ``rows`` (m, 4) in frames ``xyz`` (..., N, 3)."""
    i, a, b, c = rows.unbind(-1)
    r = (xyz[..., i, :] - xyz[..., a, :]).norm(dim=-1)
    return torch.stack([r, angles(xyz, i, a, b), dihedrals(xyz, i, a, b, c)], dim=-1)


def place(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The position (..., 3) at bond length, angle and dihedral ``q`` (..., 3) from atoms ``a, b, c`` (..., 3):
    |x − a| = r, ∠(x, a, b) = θ, dihedral(x, a, b, c) = φ."""
    r, theta, phi = q.unbind(-1)
    u, w, v = row_axes(a, b, c).unbind(-2)
    radial = theta.cos()[..., None] * u + theta.sin()[..., None] * (phi.cos()[..., None] * w - phi.sin()[..., None] * v)
    return a + r[..., None] * radial


def row_axes(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """The axes (..., 3, 3) (rows: u, w, v) of a Z-matrix row's frame from atoms ``a, b, c`` (..., 3): u along
    a → b, w the part of b → c perpendicular to u, v = u × w (see :func:`place`)."""
    u = b - a
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w = c - b
    w = w - (w * u).sum(-1, keepdim=True) * u
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return torch.stack([u, w, torch.linalg.cross(u, w)], dim=-2)


def context_values(xyz: torch.Tensor, rows: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Direction cosines (..., 3K) of each context pair's atom p as seen from its row's parent a, in the row's
    frame (:func:`row_axes`), in frames ``xyz`` (..., N, 3)."""
    row = rows[context[:, 0]]
    a, b, c, p = (xyz[..., k, :] for k in (row[:, 1], row[:, 2], row[:, 3], context[:, 1]))
    direction = p - a
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return (row_axes(a, b, c) @ direction[..., None])[..., 0].flatten(-2)


def stiff_values(xyz: torch.Tensor, rows: torch.Tensor, stiff: torch.Tensor, centre: torch.Tensor,
                 periods: torch.Tensor) -> torch.Tensor:
    """The stiff coordinates (..., D) of the Z-matrix ``rows`` in frames ``xyz`` (..., N, 3) as deviations from
    ``centre`` (D,), a row's dihedral deviation wrapped into (−π/p, π/p] for its period p (``periods`` (m,))."""
    deviation = internal_coordinates(xyz, rows)[..., stiff] - centre
    period = torch.ones(stiff.shape, dtype=deviation.dtype, device=deviation.device)
    period[:, 2] = periods
    angular = torch.zeros_like(stiff)
    angular[:, 2] = True
    period = period[stiff]
    return torch.where(angular[stiff], wrapped(deviation * period) / period, deviation)


@dataclass(frozen=True)
class StiffCoordinates:
    """The fitted stiff-coordinate model: Z-matrix ``rows`` (m, 4) and ``branches`` (per row, the atoms carried
    with it; see :func:`placement_plan`), which of each row's (r, θ, φ) are ``stiff`` (m, 3) — D in all — and
    the ``periods`` (m,) of the rows' dihedrals (3: a rotor hydrogen's, stiff within its well; else 1), and
    the linear-Gaussian regression of their reference values y on the regressors x: the decoded frame's stiff
    coordinates, if ``temporal`` the previous frame's, both as deviations from ``centre`` (D,) nm/rad (the
    reference's means, circular for dihedrals, modulo 2π/period; see :func:`stiff_values`), and the decoded
    frame's :func:`context_values` of the ``context`` pairs (K, 2) (see :func:`placement_plan`):
    y = ``intercept`` + ``coefficients`` · x + ``noise`` · ξ with
    ``intercept`` (D,), ``coefficients`` (D, R), ``noise`` (D, D) lower-triangular (the residuals' covariance is
    noise · noiseᵀ) and ξ standard normal.  Each regressor is first clipped to the range (``low``, ``high``) (R,)
    it had in the fit: a linear model says nothing beyond its data, and a decoded frame far outside them (a
    mirrored centre, a drifting rollout) must not be extrapolated into it.  A frame's stiff coordinates become
    its decoded ones minus their deviations plus the drawn deviations: a periodic dihedral keeps its well."""

    rows: np.ndarray
    branches: list[np.ndarray]
    context: np.ndarray
    stiff: np.ndarray
    periods: np.ndarray
    centre: np.ndarray
    intercept: np.ndarray
    coefficients: np.ndarray
    noise: np.ndarray
    low: np.ndarray
    high: np.ndarray
    temporal: bool
    _on_device: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        shapes = self.shapes(len(self.rows), int(np.sum(self.stiff)), len(self.context), self.temporal)
        for name, shape in shapes.items():
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"StiffCoordinates.{name} must have shape {shape}, got {np.shape(getattr(self, name))}")
        if len(self.branches) != len(self.rows):
            raise ValueError(f"StiffCoordinates: {len(self.rows)} rows but {len(self.branches)} branches")

    @staticmethod
    def shapes(m: int, d: int, k: int, temporal: bool) -> dict[str, tuple[int, ...]]:
        """The arrays' shapes for m rows, d stiff coordinates and k context pairs."""
        r = d * (2 if temporal else 1) + 3 * k
        return {"rows": (m, 4), "context": (k, 2), "stiff": (m, 3), "periods": (m,), "centre": (d,), "intercept": (d,),
                "coefficients": (d, r), "noise": (d, d), "low": (r,), "high": (r,)}

    def regressors(self, frame: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """The regressors x (B, R) of decoded frames ``frame`` (B, N, 3) decoded from ``previous`` (B, N, 3)."""
        return self._regressors(self.deviations(frame), frame, previous)

    def deviations(self, frame: torch.Tensor) -> torch.Tensor:
        """The stiff coordinates (B, D) of frames ``frame`` (B, N, 3) as deviations (:func:`stiff_values`)."""
        t = self._tensors(frame.device, frame.dtype)
        return stiff_values(frame, t["rows"], t["stiff"], t["centre"], t["periods"])

    def _regressors(self, own: torch.Tensor, frame: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """:meth:`regressors` given ``frame``'s own :meth:`deviations` ``own``."""
        t = self._tensors(frame.device, frame.dtype)
        values = [own, *([self.deviations(previous)] if self.temporal else []),
                  context_values(frame, t["rows"], t["context"])]
        return torch.maximum(torch.minimum(torch.cat(values, dim=-1), t["high"]), t["low"])

    @property
    def n_draws(self) -> int:
        """Standard-normal draws per frame: one per stiff coordinate."""
        return int(np.sum(self.stiff))

    def step(self, frame: torch.Tensor, previous: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
        """``frame`` (B, N, 3) nm with its stiff coordinates drawn from the regression on their decoded values in
        ``frame`` (and, if temporal, in ``previous`` (B, N, 3)), using standard ``normals`` (B, D), and its soft
        ones kept; placed row by row, each row's branch turned rigidly with it."""
        if not len(self.rows):
            return frame
        t = self._tensors(frame.device, frame.dtype)
        own = self.deviations(frame)
        drawn = (t["intercept"] + self._regressors(own, frame, previous) @ t["coefficients"].T
                 + normals.to(frame.dtype) @ t["noise"].T)
        q = internal_coordinates(frame, t["rows"])
        q[:, t["stiff"]] += drawn - own
        out = frame.clone()
        for k, (i, a, b, c) in enumerate(self.rows.tolist()):
            new = place(out[:, a], out[:, b], out[:, c], q[:, k])
            branch = self.branches[k]
            if len(branch):
                # the rigid motion that takes i's frame (i, a, b) before to after: its branch keeps its place in it
                turn = row_axes(new, out[:, a], out[:, b]).transpose(-1, -2) @ row_axes(out[:, i], out[:, a], out[:, b])
                out[:, branch] = (out[:, branch] - out[:, i, None]) @ turn.transpose(-1, -2) + new[:, None]
            out[:, i] = new
        return out

    def _tensors(self, device: torch.device, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The fitted arrays by name as tensors on ``device`` (floats in ``dtype``), made once per device and
        dtype: a rollout calls this every frame."""
        key = (device, dtype)
        if key not in self._on_device:
            indices = ("rows", "context", "stiff")
            self._on_device[key] = {n: torch.as_tensor(getattr(self, n), device=device,
                                                       dtype=None if n in indices else dtype)
                                    for n in (*indices, "periods", "centre", "intercept", "coefficients", "noise",
                                              "low", "high")}
        return self._on_device[key]

    def to_dict(self) -> dict:
        arrays = ("rows", "context", "stiff", "periods", "centre", "intercept", "coefficients", "noise", "low", "high")
        return {**{n: np.asarray(getattr(self, n)).tolist() for n in arrays},
                "branches": [b.tolist() for b in self.branches], "temporal": self.temporal}

    @classmethod
    def from_dict(cls, d: dict) -> StiffCoordinates:
        """Inverse of :meth:`to_dict`; shapes are checked as on construction."""
        shapes = cls.shapes(len(d["rows"]), int(np.sum(d["stiff"])), len(d["context"]), bool(d["temporal"]))
        types = {"rows": np.int64, "context": np.int64, "stiff": bool, "periods": np.int64}
        arrays = {n: np.asarray(d[n], dtype=types.get(n, np.float64)) for n in shapes}
        arrays = {n: a.reshape(shapes[n]) if a.size == 0 else a for n, a in arrays.items()}  # empty lists lose shape
        return cls(branches=[np.asarray(b, dtype=np.int64) for b in d["branches"]], temporal=bool(d["temporal"]),
                   **arrays)


class StiffCoordinateEstimator:
    """Estimates :class:`StiffCoordinates`: ``fit(reference, decoded, previous, topology, anchored, rotors)`` then
    ``fetch_model()``.  A dihedral is stiff if its circular standard deviation in the reference frames is below
    ``max_dihedral_sd`` rad, a rotor hydrogen's always (modulo 120°); a bond length whose standard deviation is
    below ``min_bond_sd`` nm is held by the reference (a vibrating bond at 300 K: ~0.002-0.003 nm; a constrained
    one stored in an XTC file, 0.001 nm precision: ~0.0004) and is set to its mean length, without noise.  The
    regression is a ridge regression on standardised regressors; ``ridge`` fixes its penalty, None (the default)
    chooses it from ``RIDGES`` by ``folds``-fold cross-validation over contiguous blocks of the frames (the
    held-out squared error of every stiff coordinate, each relative to its variance): a large molecule has hundreds of regressors, and an unpenalised fit on a few thousand frames
    predicts wildly on new ones (a 400-step chignolin model: methyl offsets predicted across ±130°)."""

    #: the penalties cross-validation chooses from (on regressors standardised to unit variance)
    RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e4)

    def __init__(self, max_dihedral_sd: float = 0.5, min_bond_sd: float = 0.001, ridge: float | None = None,
                 folds: int = 5) -> None:
        if not max_dihedral_sd > 0 or min_bond_sd < 0 or (ridge is not None and ridge < 0) or folds < 2:
            raise ValueError(f"max_dihedral_sd must be > 0 rad, min_bond_sd >= 0 nm, ridge >= 0 or None and folds "
                             f">= 2, got {max_dihedral_sd}, {min_bond_sd}, {ridge} and {folds}")
        self.max_dihedral_sd, self.min_bond_sd, self.ridge, self.folds = max_dihedral_sd, min_bond_sd, ridge, folds
        self.ridge_: float | None = None  # the penalty the last fit used
        self._model: StiffCoordinates | None = None

    def fit(self, reference: np.ndarray, decoded: np.ndarray, previous: np.ndarray | None, topology: md.Topology,
            anchored: np.ndarray, rotors: np.ndarray | None = None) -> StiffCoordinateEstimator:
        """Fit on matched frames (F, N, 3) nm: ``reference`` (the truth), ``decoded`` (the model's output for the
        same condition) and, for a temporal model, ``previous`` (the frame each was decoded from; None for a
        frame-based one); ``anchored`` (N,) bool: the atoms with CG weight, which never move; ``rotors`` (g, 3):
        the hydrogens of the three-fold rotor groups whose soft dihedrals are stiff within their wells (None:
        every CH3/NH3 group, :func:`tcbm.symmetry.rotor_hydrogen_groups`; empty: none)."""
        frames = [np.asarray(x, dtype=np.float64) for x in (reference, decoded) + (() if previous is None else (previous,))]
        if len(frames[0]) < 2:
            raise ValueError(f"need at least 2 frames to estimate stiff coordinates from, got {len(frames[0])}")
        if any(np.shape(x) != (len(frames[0]), topology.n_atoms, 3) for x in frames) or \
                np.shape(anchored) != (topology.n_atoms,):
            raise ValueError(f"frames {[np.shape(x) for x in frames]} and anchored atoms {np.shape(anchored)} do not "
                             f"fit the topology ({topology.n_atoms} atoms) or one another")
        rows, branches, context = placement_plan(topology, anchored)
        table = torch.as_tensor(rows)
        q = internal_coordinates(torch.as_tensor(frames[0]), table).numpy()
        mean = q.mean(0)
        resultant = np.exp(1j * q[..., 2]).mean(0)
        stiff = np.ones_like(mean, dtype=bool)
        fixed = np.zeros_like(stiff)
        fixed[:, 0] = q[..., 0].std(0) < self.min_bond_sd
        stiff[:, 2] = np.sqrt(-2 * np.log(np.clip(np.abs(resultant), 1e-300, 1.0))) < self.max_dihedral_sd
        rotors = rotor_hydrogen_groups(topology) if rotors is None else np.asarray(rotors, dtype=np.int64)
        periods = np.where(~stiff[:, 2] & np.isin(rows[:, 0], rotors), 3, 1)
        stiff[:, 2] |= periods == 3
        mean[:, 2] = np.angle(np.exp(1j * periods * q[..., 2]).mean(0)) / periods
        centre = torch.as_tensor(mean[stiff])
        y, *xs = (stiff_values(torch.as_tensor(x), table, torch.as_tensor(stiff), centre, torch.as_tensor(periods)).numpy()
                  for x in frames)
        x = np.concatenate([*xs, context_values(torch.as_tensor(frames[1]), table, torch.as_tensor(context)).numpy()],
                           axis=1)
        self.ridge_ = self.ridge if self.ridge is not None else self._cross_validated_ridge(x, y)
        coefficients, intercept = _ridge_regression(x, y, self.ridge_)
        held = fixed[stiff]  # set to the reference's mean length, no regression and no noise
        coefficients[held], intercept[held] = 0.0, y[:, held].mean(0)
        residual = y - intercept - x @ coefficients.T
        residual[:, held] = 0.0
        covariance = residual.T @ residual / len(x)
        noise = np.linalg.cholesky(covariance + 1e-12 * max(float(np.trace(covariance)), 1e-300) * np.eye(len(covariance)))
        noise[held] = 0.0
        self._model = StiffCoordinates(rows, branches, context, stiff, periods, mean[stiff], intercept, coefficients,
                                       noise, x.min(0), x.max(0), previous is not None)
        return self

    def _cross_validated_ridge(self, x: np.ndarray, y: np.ndarray) -> float:
        """The penalty of :data:`RIDGES` with the least held-out error over contiguous folds (see the class)."""
        folds = np.array_split(np.arange(len(x)), min(self.folds, len(x)))
        scale = np.maximum(y.var(0), 1e-300)
        errors = []
        for ridge in self.RIDGES:
            error = 0.0
            for held in folds:
                kept = np.setdiff1d(np.arange(len(x)), held)
                coefficients, intercept = _ridge_regression(x[kept], y[kept], ridge)
                error += float((((y[held] - intercept - x[held] @ coefficients.T) ** 2) / scale).sum())
            errors.append(error)
        return self.RIDGES[int(np.argmin(errors))]

    def fetch_model(self) -> StiffCoordinates:
        if self._model is None:
            raise RuntimeError("StiffCoordinateEstimator.fit has not been called")
        return self._model


#: regressors varying less than this (nm, rad or direction cosine) carry no information: thermal spreads are
#: ~0.002 nm for a bond, ~0.05 rad for an angle
NOISE_FLOOR = 1e-4


def _ridge_regression(x: np.ndarray, y: np.ndarray, ridge: float) -> tuple[np.ndarray, np.ndarray]:
    """Coefficients (D, R) and intercept (D,) of y (F, D) on x (F, R) with penalty ``ridge`` on the regressors
    standardised to unit variance.  A regressor whose standard deviation is below ``NOISE_FLOOR`` gets no
    weight: it is float rounding (e.g. a decoded length the read-out constrains), and standardising would blow
    the next frame's rounding up into the prediction."""
    x_mean, y_mean = x.mean(0), y.mean(0)
    sd = x.std(0)
    scale = np.where(sd > NOISE_FLOOR, 1.0 / np.maximum(sd, 1e-300), 0.0)
    xs = (x - x_mean) * scale
    gram = xs.T @ xs / len(x) + ridge * np.eye(x.shape[1])
    coefficients = np.linalg.solve(gram + (scale == 0) * np.eye(x.shape[1]), xs.T @ (y - y_mean) / len(x)).T * scale
    return coefficients, y_mean - coefficients @ x_mean


#: how many seed-library triples a model's stiff coordinates are fitted on (evenly thinned)
FIT_FRAMES = 4096


@torch.inference_mode()
def fit_stiff_coordinates(network: BackmapCVAE, sampler: LatentSampler, library: SeedLibrary, topology: md.Topology,
                          anchored: np.ndarray, rotors: np.ndarray | None = None, frames: int = FIT_FRAMES,
                          seed: int = 0, batch: int = 256) -> StiffCoordinates:
    """The stiff-coordinate model of a trained ``network``: its library's training triples (up to ``frames``,
    evenly thinned) decoded by the shared rollout step from their true previous frames with latents from
    ``sampler`` (seeded), regressed against their true frames; temporal (the previous frame a regressor) for a
    network with history; ``rotors`` as in :meth:`StiffCoordinateEstimator.fit`."""
    keep = np.unique(np.linspace(0, len(library.aa) - 1, min(frames, len(library.aa))).round().astype(int))
    device = next(network.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    decoded = []
    for start in range(0, len(keep), batch):
        rows = keep[start:start + batch]
        z = sampler.sample(len(rows), generator).to(device, torch.float32)
        cg, previous = (torch.as_tensor(x[rows], device=device, dtype=torch.float32) for x in (library.cg, library.aa_prev))
        decoded.append(step(network, cg, previous[:, :max(network.history, 1)], z).cpu().numpy())
    previous = library.aa_prev[keep, 0] if network.history else None
    estimator = StiffCoordinateEstimator().fit(library.aa[keep], np.concatenate(decoded), previous, topology, anchored,
                                               rotors)
    return estimator.fetch_model()
