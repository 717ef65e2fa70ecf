"""Rebuild the packaged topologies ``tcbm/structures/adp.pdb`` and ``tcbm/structures/cln.pdb`` offline.

ADP (ACE-ALA-NME) is taken from the structure that the openmmtools wheel ships; chignolin
(GYDPETGTWG) is built from its sequence with PeptideBuilder, completed with pdbfixer
(heavy atoms, hydrogens at pH 7, charged termini) and energy-minimised with amber99sb-ildn in
vacuum.  Needs ``pip install openmmtools PeptideBuilder pdbfixer``.

    python scripts/build_structures.py
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import openmm
import openmm.app as app
import openmm.unit as u

OUT = Path(__file__).resolve().parents[1] / "tcbm" / "structures"


def write_pdb(topology: app.Topology, positions, path: Path) -> None:
    with open(path, "w") as handle:
        app.PDBFile.writeFile(topology, positions, handle, keepIds=False)


def minimise(topology: app.Topology, positions):
    forcefield = app.ForceField("amber99sbildn.xml")
    system = forcefield.createSystem(topology, nonbondedMethod=app.NoCutoff, constraints=None)
    context = openmm.Context(
        system, openmm.VerletIntegrator(1.0 * u.femtosecond), openmm.Platform.getPlatformByName("Reference")
    )
    context.setPositions(positions)
    openmm.LocalEnergyMinimizer.minimize(context, 1.0, 5000)
    state = context.getState(getPositions=True, getEnergy=True)
    print("minimised energy:", state.getPotentialEnergy())
    return state.getPositions()


def build_adp() -> None:
    import openmmtools

    source = Path(os.path.dirname(openmmtools.__file__)) / "data" / "alanine-dipeptide-gbsa" / "alanine-dipeptide.pdb"
    pdb = app.PDBFile(str(source))
    write_pdb(pdb.topology, minimise(pdb.topology, pdb.positions), OUT / "adp.pdb")


def build_cln() -> None:
    import PeptideBuilder
    from Bio.PDB import PDBIO
    from pdbfixer import PDBFixer

    structure = PeptideBuilder.make_extended_structure("GYDPETGTWG")
    buffer = io.StringIO()
    writer = PDBIO()
    writer.set_structure(structure)
    writer.save(buffer)
    fixer = PDBFixer(pdbfile=io.StringIO(buffer.getvalue()))
    fixer.findMissingResidues()
    fixer.findMissingAtoms()
    fixer.addMissingAtoms()
    fixer.addMissingHydrogens(7.0)
    write_pdb(fixer.topology, minimise(fixer.topology, fixer.positions), OUT / "cln.pdb")


if __name__ == "__main__":
    build_adp()
    build_cln()
