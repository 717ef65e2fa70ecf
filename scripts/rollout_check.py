"""Quick same-weights rollout check: a trained model's rollouts of a benchmark's held-out CG, with the stiff
coordinates drawn and as decoded, scored on what the stiff step touches.

    python scripts/rollout_check.py --model <out>/runs/history1/model.pt --data <out>/data --frames 1000

Backmaps the CG of every ``<data>/test_*.xtc`` (its first ``--frames`` frames; topology ``test_0.pdb``) with
``tcbm.backmap.Backmapper`` as ``tcbm backmap`` does (seed 0), once with ``stiff_coordinates`` on and once off,
and prints per row: energy W1 and mean excess over the reference (kJ/mol, vacuum force field), clashes per
frame and L-chiral frames (the evaluation's rules), the CG-free atoms' frame-to-frame RMSD in the CG frame (nm)
and the rotamer hops per ps of every rotor (reference alongside). For comparing the rollout code of two
revisions on the same weights (run it at each); the benchmarks remain the measurements of record.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import mdtraj as md
import numpy as np

from tcbm.analysis import observables as obs
from tcbm.analysis.scores import wasserstein1
from tcbm.artifact import BackmapModel
from tcbm.backmap import ROLLOUT_RECIPE, Backmapper, RolloutSettings


def scores(trajectories: list[md.Trajectory], model: BackmapModel, phases: np.ndarray, dt_ps: float) -> dict:
    """Energies (kJ/mol), clashes, L-chiral fraction, CG-free RMSD (nm) and hop rates (per ps) of ``trajectories``."""
    energies = np.concatenate([obs.potential_energies(t.xyz, model.system) for t in trajectories])
    free = obs.free_atoms(model.system.mapping)
    rmsd = np.concatenate([obs.free_atom_motion(t.xyz, model.system.mapping, free)[1] for t in trajectories])
    angles = [obs.rotor_dihedrals(t)[1] for t in trajectories]
    return {"energies": energies,
            "clashes": float(np.mean(np.concatenate([obs.clashes_per_frame(t) for t in trajectories]))),
            "l_chiral": float(np.mean([obs.l_chiral_fraction(t) for t in trajectories])),
            "free_rmsd_nm": float(rmsd.mean()), "hops": obs.hop_rates(angles, phases, dt_ps)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="model.pt of a trained tcbm model")
    parser.add_argument("--data", required=True, help="a benchmark's data folder (test_*.xtc, test_0.pdb)")
    parser.add_argument("--frames", type=int, default=1000, help="first frames of each held-out run")
    args = parser.parse_args()
    data = Path(args.data)
    paths = sorted(data.glob("test_*.xtc"), key=lambda p: int(p.stem.split("_")[1]))
    if not paths:
        raise SystemExit(f"no test_*.xtc in {data}")
    references = [md.load(str(p), top=str(data / "test_0.pdb"))[:args.frames] for p in paths]
    model = BackmapModel.load(args.model)
    weights = np.asarray(model.system.mapping.weights)
    cgs = [np.einsum("bn,tnk->tbk", weights, r.xyz).astype(np.float32) for r in references]
    names, _ = obs.rotor_dihedrals(references[0])
    phases = obs.rotor_phases(np.concatenate([obs.rotor_dihedrals(r)[1] for r in references]))  # as the evaluation
    dt_ps = float(references[0].timestep) if references[0].n_frames > 1 else 1.0
    reference = scores(references, model, phases, dt_ps)
    print(f"{args.model}: {len(paths)} held-out runs x {references[0].n_frames} frames, "
          f"tcbm.backmap.ROLLOUT_RECIPE {ROLLOUT_RECIPE}")
    for stiff in (True, False):
        frames = Backmapper(model, RolloutSettings(seed=0, stiff_coordinates=stiff, progress=False)).backmap(cgs)
        own = scores([md.Trajectory(x, references[0].topology) for x in frames], model, phases, dt_ps)
        print(f"stiff_coordinates={str(stiff).lower()}: energy W1 {wasserstein1(own['energies'], reference['energies']):.2f}"
              f" (mean excess {own['energies'].mean() - reference['energies'].mean():+.2f}), clashes "
              f"{own['clashes']:.1f} (reference {reference['clashes']:.1f}), L-chiral {100 * own['l_chiral']:.1f} %, "
              f"CG-free RMSD {own['free_rmsd_nm']:.4f} (reference {reference['free_rmsd_nm']:.4f}), hops per ps "
              + ", ".join(f"{n} {h:.2f} ({r:.2f})" for n, h, r in zip(names, own["hops"], reference["hops"])))


if __name__ == "__main__":
    main()
