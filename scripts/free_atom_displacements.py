"""Per CG-free atom, how far it moves between consecutive frames (in the CG's frame), reference against data sets.

    python scripts/free_atom_displacements.py --system adp --reference '<out>/data/test_*.xtc' \
        --top <out>/data/test_0.pdb --dataset 'tcbm=<out>/runs/backmapped_history1' \
        --dataset 'frame-based cVAE=<out>/runs/backmapped_history0' > free_atom_displacements.md

Each data set folder holds one backmapped file per reference run, named as the run (``test_0.xtc`` ...).  The
displacements are the evaluation's (:func:`tcbm.analysis.observables.free_atom_motion`: frame t + 1 superposed
onto frame t through the CG beads); the table gives their 5 / 50 / 95 % quantiles in nm per atom, pooled over
runs, so one sees which atoms a backmapper moves too little or too much (the report's displacement JS pools
them by element).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mdtraj as md
import numpy as np

from tcbm.analysis.observables import free_atom_motion, free_atoms
from tcbm.benchmark import command_line
from tcbm.io import expand_paths
from tcbm.systems import load_system

QUANTILES = (5, 50, 95)


def displacements(paths: list[Path], top: str, system, atoms: np.ndarray) -> np.ndarray:
    """Pooled displacements (pairs, atoms) nm of ``atoms`` over the trajectories ``paths``."""
    return np.concatenate([free_atom_motion(md.load(str(p), top=top).xyz, system.mapping, atoms)[0] for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--system", default="adp")
    parser.add_argument("--reference", required=True, help="reference runs (glob)")
    parser.add_argument("--top", required=True, help="topology of every trajectory")
    parser.add_argument("--dataset", action="append", default=[], help="'label=folder' of backmapped runs")
    args = parser.parse_args()
    system = load_system(args.system)
    atoms = free_atoms(system.mapping)
    runs = expand_paths(args.reference)
    sets = {"reference": runs}
    for spec in args.dataset:
        label, folder = spec.split("=", 1)
        sets[label] = [Path(folder) / run.name for run in runs]
        missing = [str(p) for p in sets[label] if not p.exists()]
        if missing:
            raise SystemExit(f"data set {label!r}: no backmapped run {missing[0]} for reference {runs[0].name}")
    values = {label: np.percentile(displacements(paths, args.top, system, atoms), QUANTILES, axis=0)
              for label, paths in sets.items()}
    print(f"Command: `{command_line()}`\n")
    print("| CG-free atom | " + " | ".join(f"{label}: {'/'.join(map(str, QUANTILES))} % (nm)" for label in sets) + " |")
    print("|---" * (len(sets) + 1) + "|")
    for k, atom in enumerate(atoms):
        cells = ["/".join(f"{v:.3f}" for v in values[label][:, k]) for label in sets]
        print(f"| {system.topology.atom(int(atom))} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
