"""Molecular systems: all-atom topology + CG mapping + force field.

Built in: ``adp`` (alanine dipeptide, ACE-ALA-NME, 22 atoms, CG = C, N, CA, CB, C, N) and ``cln``
(chignolin GYDPETGTWG, CG = the 10 Cα).  Custom systems come from any topology mdtraj reads plus an
mdtraj selection (slice map) or atom groups per bead (centre-of-mass or centroid map).
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import mdtraj as md
import numpy as np
import openmm
import openmm.app as app

from tcbm.mapping import CGMapping

BUILTIN = {
    "adp": {
        "pdb": "adp.pdb",
        "selection": "(resname ACE and name C) or (resname ALA and name N CA CB C) or (resname NME and name N)",
        "n_beads": 6,
    },
    "cln": {"pdb": "cln.pdb", "selection": "name CA", "n_beads": 10},
}
DEFAULT_FORCEFIELD = ("amber99sbildn.xml",)
IMPLICIT_SOLVENTS = {"obc": "amber99_obc.xml", "obc2": "implicit/obc2.xml", "gbn2": "implicit/gbn2.xml"}


@dataclass
class MolecularSystem:
    """An all-atom molecule with its CG mapping and force field (OpenMM XML files)."""

    name: str
    topology: md.Topology
    reference_xyz: np.ndarray  # (n_atoms, 3) nm
    mapping: CGMapping
    forcefield: tuple[str, ...] = DEFAULT_FORCEFIELD
    mapping_spec: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.mapping.n_atoms != self.topology.n_atoms:
            raise ValueError(
                f"system {self.name!r}: mapping is over {self.mapping.n_atoms} atoms, topology has {self.topology.n_atoms}"
            )

    @property
    def n_atoms(self) -> int:
        return self.topology.n_atoms

    @property
    def n_beads(self) -> int:
        return self.mapping.n_beads

    @property
    def masses(self) -> np.ndarray:
        return np.array([a.element.mass for a in self.topology.atoms])

    def reference_trajectory(self) -> md.Trajectory:
        return md.Trajectory(self.reference_xyz[None], self.topology)

    def cg_topology(self) -> md.Topology:
        """A topology with one carbon-like atom per bead (for writing CG trajectories)."""
        top = md.Topology()
        chain = top.add_chain()
        residue = top.add_residue("CG", chain)
        for name in self.mapping.bead_names:
            top.add_atom(name.split("-")[-1][:4] or "B", md.element.carbon, residue)
        return top

    def openmm_system(self, implicit_solvent: str | None = None, constrain_hbonds: bool = False) -> openmm.System:
        """OpenMM ``System`` from the force field, no cutoff.  The default (vacuum, no constraints) is
        the potential the torch energy reproduces; simulations add implicit solvent and may constrain
        bonds to hydrogen."""
        files = list(self.forcefield)
        if implicit_solvent is not None:
            if implicit_solvent not in IMPLICIT_SOLVENTS:
                raise ValueError(f"unknown implicit solvent {implicit_solvent!r}; choose from {sorted(IMPLICIT_SOLVENTS)}")
            files.append(IMPLICIT_SOLVENTS[implicit_solvent])
        forcefield = app.ForceField(*files)
        try:
            return forcefield.createSystem(
                self.topology.to_openmm(),
                nonbondedMethod=app.NoCutoff,
                constraints=app.HBonds if constrain_hbonds else None,
            )
        except ValueError as err:
            raise ValueError(
                f"system {self.name!r}: force field {files} cannot parametrise the topology: {err}. "
                "Check residue and atom names (hydrogens included) or pass other force-field XML files."
            ) from err

    def to_dict(self) -> dict[str, Any]:
        """Serialisable description (used inside model artefacts)."""
        buffer = io.StringIO()
        app.PDBFile.writeFile(self.topology.to_openmm(), self.reference_xyz * 10.0 * openmm.unit.angstrom, buffer)
        return {
            "name": self.name,
            "pdb_text": buffer.getvalue(),
            "mapping": self.mapping.to_dict(),
            "forcefield": list(self.forcefield),
        }

    @classmethod
    def from_dict(cls, state: Mapping[str, Any]) -> MolecularSystem:
        pdb = app.PDBFile(io.StringIO(state["pdb_text"]))
        topology = md.Topology.from_openmm(pdb.topology)
        xyz = np.array(pdb.getPositions(asNumpy=True).value_in_unit(openmm.unit.nanometer))
        return cls(state["name"], topology, xyz, CGMapping.from_dict(state["mapping"]), tuple(state["forcefield"]))

    def check_atoms(self, topology: md.Topology, source: str) -> None:
        """Raise if ``topology`` (read from ``source``) does not have this system's atoms in order."""
        if topology.n_atoms != self.n_atoms:
            raise ValueError(
                f"{source}: {topology.n_atoms} atoms, but system {self.name!r} has {self.n_atoms} atoms"
            )
        for mine, theirs in zip(self.topology.atoms, topology.atoms, strict=False):
            if mine.element != theirs.element:
                raise ValueError(f"{source}: atom {theirs.index} is {theirs}, system {self.name!r} expects {mine}")


def bonded_neighbours(topology: md.Topology) -> dict[int, list[md.core.topology.Atom]]:
    """The bond graph of ``topology``: for every bonded atom's index, the atoms bonded to it."""
    neighbours: dict[int, list[md.core.topology.Atom]] = defaultdict(list)
    for a, b in topology.bonds:
        neighbours[a.index].append(b)
        neighbours[b.index].append(a)
    return neighbours


def _load_topology(path: str | Path) -> md.Trajectory:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"topology file {path} does not exist")
    try:
        return md.load_frame(str(path), 0)
    except Exception as err:
        raise ValueError(f"cannot read topology {path}: {err}") from err


def make_system(
    name: str,
    pdb: str | Path,
    selection: str | None = None,
    groups: Sequence[Sequence[int]] | None = None,
    weighting: str = "mass",
    n_beads: int | None = None,
    forcefield: Sequence[str] = DEFAULT_FORCEFIELD,
) -> MolecularSystem:
    """A system from a topology file and a CG map: a ``selection`` (slice) or atom ``groups`` per bead."""
    if (selection is None) == (groups is None):
        raise ValueError(f"system {name!r}: give exactly one of a CG selection or CG atom groups")
    frame = _load_topology(pdb)
    if selection is not None:
        mapping = CGMapping.from_selection(frame.topology, selection, n_beads)
    else:
        mapping = CGMapping.from_groups(frame.topology, groups, weighting)
        if n_beads is not None and mapping.n_beads != n_beads:
            raise ValueError(f"system {name!r}: {mapping.n_beads} CG groups given, expected {n_beads} beads")
    spec = {"selection": selection, "groups": groups, "weighting": weighting}
    return MolecularSystem(name, frame.topology, frame.xyz[0].astype(np.float64), mapping, tuple(forcefield), spec)


def builtin_pdb(name: str) -> Path:
    return Path(str(resources.files("tcbm") / "structures" / BUILTIN[name]["pdb"]))


def load_system(spec: str | Mapping[str, Any]) -> MolecularSystem:
    """A system by built-in name (``'adp'``, ``'cln'``) or from a config mapping with keys
    ``name``, ``pdb`` (null for built-ins), ``selection`` or ``groups`` (+ ``weighting``),
    ``n_beads`` and ``forcefield``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.get("name")
    if spec.get("pdb") is None:
        if name not in BUILTIN:
            raise ValueError(f"unknown built-in system {name!r}; built in: {sorted(BUILTIN)} (or give a pdb)")
        builtin = BUILTIN[name]
        if spec.get("selection") is None and spec.get("groups") is None:
            spec["selection"] = builtin["selection"]
            spec.setdefault("n_beads", builtin["n_beads"])
        spec["pdb"] = builtin_pdb(name)
    groups = spec.get("groups")
    return make_system(
        name=name or Path(spec["pdb"]).stem,
        pdb=spec["pdb"],
        selection=spec.get("selection"),
        groups=[list(g) for g in groups] if groups is not None else None,
        weighting=spec.get("weighting", "mass"),
        n_beads=spec.get("n_beads"),
        forcefield=tuple(spec.get("forcefield") or DEFAULT_FORCEFIELD),
    )
