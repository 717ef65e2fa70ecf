"""Hydrogen angle bounds applied after the fact: energy W1 of saved rollouts against their reference, as they
are and with every hydrogen's X–C–H angles bounded (:class:`tcbm.constraints.AngleBounds`) at several
energies, to choose ``model.network.hydrogen_angle_max_kT`` before training with it.

    python scripts/ab_angle_bounds.py --out <benchmark out> --rows backmapped_history1 backmapped_history0 \
        [--system adp] [--temperature 300] [--runs 16] [--frames 2000] [--max-kt 3.125 4.5 6.125 8]

Reads ``<out>/data/test_<i>.xtc`` (the reference) and ``<out>/runs/<row>/test_<i>.xtc`` (a benchmark's
rollouts), the first ``--frames`` frames of each of ``--runs`` runs.  The bound is also applied to the
reference itself, to show how much of its thermal angle energy a bound would take away.  Units: kJ/mol, K.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mdtraj as md
import numpy as np
import torch

from tcbm.analysis.observables import potential_energies
from tcbm.analysis.scores import wasserstein1
from tcbm.benchmark import command_line
from tcbm.constraints import AngleBounds, hydrogen_angles
from tcbm.energy import KB
from tcbm.systems import load_system


def bounded(xyz: np.ndarray, bounds: AngleBounds) -> np.ndarray:
    with torch.no_grad():
        return bounds(torch.as_tensor(xyz, dtype=torch.float64)).float().numpy()


def load_runs(folder: Path, top: md.Topology, runs: int, frames: int) -> np.ndarray:
    paths = [folder / f"test_{i}.xtc" for i in range(runs)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"rollouts missing: {', '.join(missing)}")
    return np.concatenate([md.load(str(p), top=top).xyz[:frames] for p in paths])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="a benchmark's output folder")
    parser.add_argument("--rows", nargs="+", required=True, help="folders under <out>/runs holding rollouts")
    parser.add_argument("--system", default="adp")
    parser.add_argument("--temperature", type=float, default=300.0, help="the data's temperature (K)")
    parser.add_argument("--runs", type=int, default=16)
    parser.add_argument("--frames", type=int, default=2000, help="frames read from the start of each run")
    parser.add_argument("--max-kt", type=float, nargs="+", default=[3.125, 4.5, 6.125, 8.0],
                        help="bounds in kT (n sigma of an angle's thermal spread is n^2/2 kT)")
    args = parser.parse_args()
    system = load_system(args.system)
    top = md.load(str(args.out / "data" / "test_0.pdb")).topology
    kt = KB * args.temperature
    omm_system = system.openmm_system()  # one System for every bound's angle table
    bounds = {m: AngleBounds(*hydrogen_angles(system, m * kt, omm_system)) for m in args.max_kt}
    reference = load_runs(args.out / "data", top, args.runs, args.frames)
    e_ref = potential_energies(reference, system)
    print(command_line())
    print(f"{len(reference)} frames; energy W1 (kJ/mol) against the reference, and % of frames > +100 kJ/mol "
          f"above their reference frame\n")
    print("| rollouts | as they are | " + " | ".join(f"bounded at {m:g} kT" for m in args.max_kt) + " |")
    print("|---" * (len(args.max_kt) + 2) + "|")
    rows = {"reference itself": reference}
    rows.update({row: load_runs(args.out / "runs" / row, top, args.runs, args.frames) for row in args.rows})
    for label, xyz in rows.items():
        cells = []
        for max_kt in [None, *args.max_kt]:
            energies = potential_energies(xyz if max_kt is None else bounded(xyz, bounds[max_kt]), system)
            cells.append(f"{wasserstein1(e_ref, energies):.2f} ({np.mean(energies - e_ref > 100) * 100:.2f} %)")
        print(f"| {label} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
