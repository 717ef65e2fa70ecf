"""Per-frame observables of all-atom trajectories (nm, ps, kJ/mol)."""

from __future__ import annotations

from collections import defaultdict

import mdtraj as md
import numpy as np
import torch

from tcbm.energy import MMEnergy
from tcbm.geometry import superpose
from tcbm.mapping import CGMapping
from tcbm.rotor_hops import rotamers
from tcbm.rotor_hops import rotor_phases as rotor_phases  # re-exported: part of the analysis API
from tcbm.stereo import signed_volumes, stereocentres
from tcbm.systems import MolecularSystem, bonded_neighbours

#: Non-bonded pairs (more than 3 bonds apart) closer than this are counted as steric clashes (nm):
#: below the closest hydrogen-bond H···O contacts (~0.17 nm) seen in equilibrium MD.
CLASH_THRESHOLD_NM = 0.15


def potential_energies(xyz: np.ndarray, system: MolecularSystem, batch: int = 4096) -> np.ndarray:
    """Exact vacuum force-field energies (kJ/mol) of frames (T, N, 3) nm."""
    energy = MMEnergy(system.openmm_system())
    with torch.inference_mode():
        return np.concatenate([energy(torch.as_tensor(xyz[i:i + batch], dtype=torch.float64)).numpy()
                               for i in range(0, len(xyz), batch)])


def _element_key(atoms) -> str:
    return "-".join(a.element.symbol for a in atoms)


def bond_lengths(traj: md.Trajectory) -> dict[str, np.ndarray]:
    """Bond lengths (nm) grouped by element pair type (e.g. ``C-H``), from the topology's bonds."""
    pairs = defaultdict(list)
    for a, b in traj.topology.bonds:
        first, second = sorted([a, b], key=lambda atom: atom.element.symbol)
        pairs[_element_key((first, second))].append((a.index, b.index))
    return {k: md.compute_distances(traj, np.array(v)).ravel() for k, v in sorted(pairs.items())}


def bond_angles(traj: md.Trajectory) -> dict[str, np.ndarray]:
    """Bond angles (rad) grouped by element triple type (e.g. ``H-C-H``)."""
    atoms = list(traj.topology.atoms)
    triples = defaultdict(list)
    for centre, neighbours in bonded_neighbours(traj.topology).items():
        ordered = sorted(n.index for n in neighbours)
        for i, a in enumerate(ordered):
            for b in ordered[i + 1:]:
                ends = sorted([atoms[a], atoms[b]], key=lambda atom: atom.element.symbol)
                triples[_element_key((ends[0], atoms[centre], ends[1]))].append((a, centre, b))
    return {k: md.compute_angles(traj, np.array(v)).ravel() for k, v in sorted(triples.items())}


def chirality_signs(traj: md.Trajectory) -> np.ndarray:
    """Sign (frames, residues with CB) of the volume (N−CA)·((C−CA)×(CB−CA)); +1 is L, −1 is D."""
    quads = []
    for residue in traj.topology.residues:
        names = {a.name: a.index for a in residue.atoms}
        if all(k in names for k in ("N", "CA", "C", "CB")):
            quads.append([names["N"], names["CA"], names["C"], names["CB"]])
    if not quads:
        return np.zeros((traj.n_frames, 0))
    q = np.array(quads)
    x = traj.xyz
    n, ca, c, cb = (x[:, q[:, k]] for k in range(4))
    return np.sign(np.einsum("tri,tri->tr", n - ca, np.cross(c - ca, cb - ca)))


def l_chiral_fraction(traj: md.Trajectory) -> float:
    """Fraction of frames in which every chiral Cα has the L configuration."""
    signs = chirality_signs(traj)
    return float((signs > 0).all(axis=1).mean()) if signs.size else float("nan")


def stereo_fraction(traj: md.Trajectory, reference: md.Trajectory, min_volume: float = 0.0) -> float:
    """Fraction of frames in which every stereocentre (:mod:`tcbm.stereo`) has the handedness it has in most
    of the ``reference`` frames (Cα and e.g. Thr Cβ; nan for a molecule without stereocentres) and a signed
    volume of at least ``min_volume`` times the reference's median for that centre (0: the sign alone; 0.5
    also fails centres flattened to less than half their tetrahedral volume, which the sign does not see)."""
    centres = stereocentres(traj.topology)
    if not len(centres):
        return float("nan")
    reference_volumes = signed_volumes(reference.xyz, centres)
    expected = np.sign(np.median(reference_volumes, axis=0))
    volumes = signed_volumes(traj.xyz, centres) * expected  # positive: the reference's handedness
    return float((volumes > min_volume * np.median(np.abs(reference_volumes), axis=0)).all(axis=1).mean())


def peptide_omegas(topology: md.Topology) -> np.ndarray:
    """Dihedral quadruples X–C–N–Y (k, 4) of every peptide bond: C bonded to an O and to the next residue's N;
    X is C's other heavy neighbour (CA, or CH3 of a cap), Y the N's heavy neighbour named CA if it has one
    (proline's CD is not), else its first (e.g. NME's C)."""
    neighbours = bonded_neighbours(topology)
    quads = []
    for c in topology.atoms:
        if c.element.symbol != "C" or not any(n.element.symbol == "O" for n in neighbours[c.index]):
            continue
        for n in (a for a in neighbours[c.index] if a.element.symbol == "N" and a.residue != c.residue):
            x = [a for a in neighbours[c.index] if a.element.symbol not in ("H", "O") and a != n]
            y = sorted((a for a in neighbours[n.index] if a.element.symbol != "H" and a != c),
                       key=lambda a: (a.name != "CA", a.index))
            if x and y:
                quads.append([x[0].index, c.index, n.index, y[0].index])
    return np.array(quads, dtype=np.int64).reshape(-1, 4)


def cis_peptides_per_frame(traj: md.Trajectory) -> np.ndarray:
    """Number of cis peptide bonds (|ω| < 90°) in each frame."""
    quads = peptide_omegas(traj.topology)
    if not len(quads):
        return np.zeros(traj.n_frames)
    return (np.abs(md.compute_dihedrals(traj, quads)) < np.pi / 2).sum(axis=1).astype(float)


def nonbonded_pairs(topology: md.Topology, min_separation: int = 4) -> np.ndarray:
    """Atom pairs at least ``min_separation`` bonds apart (or unconnected)."""
    n = topology.n_atoms
    hops = np.full((n, n), np.inf)
    np.fill_diagonal(hops, 0)
    for a, b in topology.bonds:
        hops[a.index, b.index] = hops[b.index, a.index] = 1
    for k in range(n):  # Floyd–Warshall; molecules here are small
        hops = np.minimum(hops, hops[:, k:k + 1] + hops[k:k + 1, :])
    i, j = np.triu_indices(n, 1)
    keep = hops[i, j] >= min_separation
    return np.stack([i[keep], j[keep]], axis=1)


def clashes_per_frame(traj: md.Trajectory, threshold: float = CLASH_THRESHOLD_NM) -> np.ndarray:
    """Number of non-bonded pairs (≥ 4 bonds apart) closer than ``threshold`` nm, per frame."""
    pairs = nonbonded_pairs(traj.topology)
    return (md.compute_distances(traj, pairs) < threshold).sum(axis=1)


def cg_rmsd(xyz: np.ndarray, cg: np.ndarray, mapping: CGMapping) -> np.ndarray:
    """Per-frame RMSD (nm, no superposition) between f_cg of all-atom frames and the given CG frames."""
    return np.sqrt(((mapping(xyz) - cg) ** 2).sum(-1).mean(-1))


def frame_speeds(xyz: np.ndarray, dt_ps: float, rescale: float = 1.0) -> np.ndarray:
    """Per-atom finite-difference speeds |x_{t+1} − x_t| / dt (nm/ps) between consecutive frames,
    flattened; ``rescale`` multiplies them (e.g. to undo a CG model's faster dynamics)."""
    return rescale * np.linalg.norm(np.diff(xyz, axis=0), axis=-1).ravel() / dt_ps


def methyl_rotors(topology: md.Topology) -> dict[str, list[int]]:
    """Dihedral quadruples H–C–X–Y of every methyl group (a carbon with three hydrogens), named
    ``<residue>:<carbon>``: H is the methyl's first hydrogen, X the carbon's heavy neighbour and Y a heavy
    neighbour of X.  These rotors are not fixed by a backbone CG, so they show what a backmapper invents."""
    neighbours = bonded_neighbours(topology)
    rotors = {}
    for atom in topology.atoms:
        if atom.element.symbol != "C":
            continue
        hydrogens = [n for n in neighbours[atom.index] if n.element.symbol == "H"]
        heavy = [n for n in neighbours[atom.index] if n.element.symbol != "H"]
        if len(hydrogens) != 3 or len(heavy) != 1:
            continue
        beyond = [n for n in neighbours[heavy[0].index] if n.element.symbol != "H" and n.index != atom.index]
        if beyond:
            rotors[f"{atom.residue.name}{atom.residue.resSeq}:{atom.name}"] = [
                hydrogens[0].index, atom.index, heavy[0].index, min(beyond, key=lambda n: n.index).index]
    return rotors


def sidechain_rotors(topology: md.Topology) -> dict[str, list[int]]:
    """Side-chain dihedrals χ1 (N–CA–CB–XG) and χ2 (CA–CB–CG–XD) about bonds between two four-bonded atoms
    outside rings (three staggered rotamers each, like methyls), named ``<residue>:chi1`` / ``:chi2``; X is the
    far atom's first heavy neighbour.  Proline's ring bonds and bonds to sp² atoms (aromatic χ2) are left out."""
    neighbours = bonded_neighbours(topology)

    def in_ring(a: int, b: int) -> bool:  # is b reachable from a without the bond a–b?
        seen, frontier = {a}, [n.index for n in neighbours[a] if n.index != b]
        while frontier:
            if b in frontier:
                return True
            seen.update(frontier)
            frontier = [n.index for i in frontier for n in neighbours[i] if n.index not in seen]
        return False

    rotors = {}
    for residue in topology.residues:
        atoms = {a.name: a.index for a in residue.atoms}
        chain = [atoms.get(name) for name in ("N", "CA", "CB")]
        for k in (1, 2):
            if None in chain:
                break
            near, far = chain[-2], chain[-1]
            heavy = sorted(n.index for n in neighbours[far] if n.element.symbol != "H" and n.index != near)
            if len(neighbours[near]) != 4 or len(neighbours[far]) != 4 or not heavy or in_ring(near, far):
                break
            rotors[f"{residue.name}{residue.resSeq}:chi{k}"] = [chain[-3], near, far, heavy[0]]
            chain = chain[1:] + [heavy[0]]
    return rotors


def rotors(topology: md.Topology) -> dict[str, list[int]]:
    """Every three-fold rotor the evaluation follows: methyl groups, then side-chain χ1/χ2."""
    return {**methyl_rotors(topology), **sidechain_rotors(topology)}


def dihedral_autocorrelation(angles: np.ndarray, lags: list[int]) -> np.ndarray:
    """⟨cos(φ(t+τ) − φ(t))⟩ of dihedral time series ``angles`` (frames, k) rad at frame lags ``lags``
    (k values per lag, shape (len(lags), k)); 1 for a frozen rotor, −0.5 after a 120° methyl hop."""
    return np.array([np.cos(angles[lag:] - angles[:-lag]).mean(axis=0) if lag < len(angles)
                     else np.full(angles.shape[1], np.nan) for lag in lags])


def rotor_autocorrelations(trajs: md.Trajectory | list[md.Trajectory], lags_ps: list[float], dt_ps: float
                           ) -> dict[str, list[float]]:
    """Rotor (methyl and side-chain χ) dihedral autocorrelation at ``lags_ps`` (ps) per rotor, over the frame pairs of one
    trajectory or of several (frames ``dt_ps`` apart; pairs never span two trajectories)."""
    trajs = [trajs] if isinstance(trajs, md.Trajectory) else list(trajs)
    names = list(rotors(trajs[0].topology))
    return pooled_rotor_autocorrelations(names, [rotor_dihedrals(t)[1] for t in trajs], lags_ps, dt_ps)


def pooled_rotor_autocorrelations(names: list[str], angles: list[np.ndarray], lags_ps: list[float], dt_ps: float
                                  ) -> dict[str, list[float]]:
    """:func:`dihedral_autocorrelation` per rotor ``names`` at ``lags_ps`` (ps), averaged over the frame pairs
    of several dihedral series ``angles`` (frames, rotors) rad, none spanning two of them."""
    if not names:
        return {}
    lags = [max(1, int(round(lag / dt_ps))) for lag in lags_ps]
    sums, counts = np.zeros((len(lags), len(names))), np.zeros(len(lags))
    for series in angles:
        pairs = np.array([max(len(series) - lag, 0) for lag in lags])
        sums += np.nan_to_num(dihedral_autocorrelation(series, lags)) * pairs[:, None]
        counts += pairs
    with np.errstate(invalid="ignore"):
        values = sums / counts[:, None]
    return {name: [float(v) for v in values[:, k]] for k, name in enumerate(names)}


def free_atoms(mapping: CGMapping) -> np.ndarray:
    """Indices of the atoms the CG leaves free: every atom except those that form a bead on their own."""
    fixed = np.flatnonzero(np.isclose(mapping.weights, 1.0).any(axis=0))
    return np.setdiff1d(np.arange(mapping.n_atoms), fixed)


def rotamer_states(angles: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Rotamer (0, 1, 2) of each rotor dihedral ``angles`` (..., rotors) rad: :func:`tcbm.rotor_hops.rotamers`
    (the rule the rotor-hop chains use) on arrays; ``phases`` from :func:`rotor_phases`, fitted on the reference
    and used for every data set."""
    return rotamers(torch.as_tensor(angles), torch.as_tensor(phases)).numpy()


def hop_rates(angles: np.ndarray | list[np.ndarray], phases: np.ndarray, dt_ps: float) -> np.ndarray:
    """Rotamer changes per ps between consecutive frames, per rotor, of one dihedral series (frames, rotors)
    rad or pooled over several (no pair spans two of them)."""
    series = [angles] if isinstance(angles, np.ndarray) else list(angles)
    return state_hop_rates([rotamer_states(a, phases) for a in series], dt_ps)


def state_hop_rates(states: list[np.ndarray], dt_ps: float) -> np.ndarray:
    """:func:`hop_rates` of rotamer series ``states`` (frames, rotors) already assigned."""
    hops = sum((s[1:] != s[:-1]).sum(axis=0) for s in states)
    pairs = sum(max(len(s) - 1, 0) for s in states)
    return np.asarray(hops, dtype=float) / (dt_ps * max(pairs, 1))


def rotor_dihedrals(traj: md.Trajectory) -> tuple[list[str], np.ndarray]:
    """Names and dihedral time series (frames, rotors) rad of the :func:`rotors` of ``traj``."""
    quads = rotors(traj.topology)
    if not quads:
        return [], np.zeros((traj.n_frames, 0))
    return list(quads), md.compute_dihedrals(traj, np.array(list(quads.values())))


def free_atom_motion(xyz: np.ndarray, mapping: CGMapping, atoms: np.ndarray, batch: int = 4096
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Frame-to-frame motion of the CG-free ``atoms`` in the frame of the CG: frame t+1 superposed onto frame
    t through their CG beads, then per atom and frame pair the displacement (nm) of each free atom,
    (frames − 1, len(atoms)), and the RMSD (nm) of the free atoms, (frames − 1,)."""
    x = torch.as_tensor(np.asarray(xyz, dtype=np.float64))
    cg = mapping(x)
    displacements = []
    for start in range(0, len(x) - 1, batch):
        stop = min(start + batch, len(x) - 1)
        moved = superpose(cg[start + 1:stop + 1], cg[start:stop], carry=x[start + 1:stop + 1])
        displacements.append((moved[:, atoms] - x[start:stop, atoms]).norm(dim=-1))
    d = torch.cat(displacements).numpy() if displacements else np.zeros((0, len(atoms)))
    return d, np.sqrt((d ** 2).mean(axis=1))
