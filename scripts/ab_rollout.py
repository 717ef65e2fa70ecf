"""A/B of training options, judged on autoregressive rollouts of a held-out trajectory.

    python scripts/ab_rollout.py --data /path/to/data --out benchmarks/ab --steps 1500 \
        --variant "teacher forcing=" --variant "unroll 2=model.unroll.steps=2 model.unroll.start_step=500"

Every variant is ``tcbm train experiment=adp_quick`` on ``<data>/train*.xtc`` with its overrides (``--workers``
of them at a time, in processes sharing the cores), then
``tcbm backmap`` of the CG of ``<data>/test.xtc`` (seed frame from the library, GMM latents, the model's
own previous frames) and scores against the held-out reference: energy W1 and median |ΔU| (kJ/mol), its
drift over the rollout, bond-length MAE and CG RMSD (nm), frames more than 200 kJ/mol above the reference's
median energy, and the methyl-rotor dihedral autocorrelation ⟨cos Δφ⟩ at 1/20/100 ps (reference alongside).
With ``--rotor-hops-ablation`` every model with rotor-hop chains is also backmapped with ``rotor_hops=false``
(same weights), as a row of its own.
Writes ``<out>/results.md`` and ``<out>/results.json``; models and rollouts go to ``<out>/runs``.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import time
from pathlib import Path

import mdtraj as md
import numpy as np
import torch
from hydra import initialize_config_module

from tcbm.analysis.observables import (
    hop_rates,
    methyl_rotors,
    potential_energies,
    rotamer_states,
    rotor_autocorrelations,
    rotor_phases,
)
from tcbm.artifact import BackmapModel
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.benchmark import command_line
from tcbm.data import TripleDataset
from tcbm.energy import MMEnergy, bonded_pairs
from tcbm.pipeline import parse_variant, train_configs, training_config, variant_folder
from tcbm.rollout import step
from tcbm.validation import rollout_scores

LAGS_PS = [1.0, 20.0, 100.0]


def last_logged(run: Path, key: str) -> float | None:
    """Last value of ``key`` in the run's CSV log."""
    rows = [r for f in sorted((run / "logs").glob("version_*/metrics.csv")) for r in csv.DictReader(f.open())]
    values = [float(r[key]) for r in rows if r.get(key)]
    return values[-1] if values else None


def no_hop_fraction(reference: md.Trajectory) -> dict[str, float]:
    """Per methyl rotor, the fraction of consecutive frame pairs of ``reference`` without a rotamer hop."""
    quads = methyl_rotors(reference.topology)
    angles = md.compute_dihedrals(reference, np.array(list(quads.values())))
    return {name: 1.0 - float(rate) for name, rate in zip(quads, hop_rates(angles, rotor_phases(angles), 1.0))}


@torch.inference_mode()
def one_step_rotamers(model: BackmapModel, reference: md.Trajectory, seed: int = 0, batch: int = 256
                      ) -> dict[str, float]:
    """Per methyl rotor, the fraction of held-out frames whose rotamer one shared rollout step (sampler ``z``)
    gets right from the true previous frame.  Chance is 1/3; a model that keeps the previous rotamer scores the
    reference's fraction of frames without a hop; below that, the model does not follow the previous frame."""
    network, first = model.network, max(model.network.history, 1)
    quads = methyl_rotors(reference.topology)
    index = np.array(list(quads.values()))
    angles = md.compute_dihedrals(reference, index)
    phases = rotor_phases(angles)
    triples = TripleDataset(reference.xyz, np.arange(first, reference.n_frames), model.system.mapping,
                            history=network.history, augment=False)
    generator = torch.Generator().manual_seed(seed)
    frames = []
    for start in range(0, len(triples), batch):
        items = triples.__getitems__(range(start, min(start + batch, len(triples))))
        z = model.sampler.sample(len(items["aa"]), generator).float()
        frames.append(step(network, items["cg"], items["aa_prev"], z))
    decoded = md.Trajectory(torch.cat(frames).numpy(), reference.topology)
    right = rotamer_states(md.compute_dihedrals(decoded, index), phases) == rotamer_states(angles[first:], phases)
    return {name: float(r) for name, r in zip(quads, right.mean(axis=0))}


def score(model: BackmapModel, rollout: md.Trajectory, reference: md.Trajectory, dt_ps: float) -> dict:
    system = model.system
    omm = system.openmm_system()
    scores = rollout_scores(rollout.xyz[None], reference.xyz[None], MMEnergy(omm), bonded_pairs(omm), system.mapping)
    u_ref = potential_energies(reference.xyz, system)
    u = potential_energies(rollout.xyz, system)
    scores["frames_over_200_kJmol"] = int((u - np.median(u_ref) > 200).sum())
    scores["rotor_autocorrelation"] = rotor_autocorrelations(rollout, LAGS_PS, dt_ps)
    scores["one_step_rotamers"] = one_step_rotamers(model, reference)
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True,
                        help="folder with the training run(s) train*.xtc and test.xtc/.pdb (e.g. a tcbm demo's data/)")
    parser.add_argument("--out", default="benchmarks/ab")
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--variant", action="append", required=True,
                        help="'label=override override ...' (history=0 makes the frame-based cVAE)")
    parser.add_argument("--workers", type=int, default=1, help="variants trained at a time (tcbm.processes)")
    parser.add_argument("--rotor-hops-ablation", action="store_true",
                        help="also backmap every model that has rotor-hop chains without them (same weights)")
    args = parser.parse_args()
    data, out = Path(args.data), Path(args.out)
    reference = md.load(str(data / "test.xtc"), top=str(data / "test.pdb"))
    dt_ps = float(np.median(np.diff(reference.time)))
    results = {"command": command_line(), "machine": f"{platform.processor() or platform.machine()}, "
               f"{torch.get_num_threads()} threads, torch {torch.__version__}", "steps": args.steps,
               "data": {name: json.loads((data / f"{name}_settings.json").read_text()) for name in ("train", "test")
                        if (data / f"{name}_settings.json").exists()},
               "reference": {"rotor_autocorrelation": rotor_autocorrelations(reference, LAGS_PS, dt_ps),
                             "no_hop_fraction": no_hop_fraction(reference)},
               "variants": {}}
    train_runs = sorted(data.glob("train*.xtc"))
    if not train_runs:
        raise SystemExit(f"no training trajectory train*.xtc in {data}")
    variants = {}
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        for spec in args.variant:
            label, overrides = parse_variant(spec)
            history = 0 if "history=0" in overrides else 1
            overrides = [o for o in overrides if o != "history=0"] + [f"trainer.max_steps={args.steps}"]
            run = out / "runs" / variant_folder(label)
            variants[label] = (run, history, overrides,
                               training_config(run, "adp_quick", history, train_runs, overrides))
    started = time.perf_counter()
    train_configs([cfg for *_, cfg in variants.values()], args.workers)
    results["train_stage_wall_s"] = time.perf_counter() - started
    for label, (run, history, overrides, _) in variants.items():
        model = BackmapModel.load(run / "model.pt")
        rollouts = {label: (run / "backmapped", True)}
        if args.rotor_hops_ablation and model.rotor_hops is not None:
            rollouts[f"{label}, rotor hops off"] = (run / "backmapped_no_rotor_hops", False)
        for row, (folder, hops) in rollouts.items():
            result = backmap_paths(model, [data / "test.xtc"], folder,
                                   RolloutSettings(progress=False, rotor_hops=hops), input_is_aa=True)[0]
            rollout = md.load(str(result), top=str(data / "test.pdb"))
            entry = score(model, rollout, reference, dt_ps)
            entry.update(overrides=overrides, history=history, train_s=model.metadata["train_wall_s"],
                         weights_step=model.metadata.get("weights_step"), rotor_hops=hops and model.rotor_hops is not None,
                         kl_nats=last_logged(run, "val/kl_nats"), active_units=last_logged(run, "val/active_units"))
            results["variants"][row] = entry
            print(row, json.dumps({k: v for k, v in entry.items() if k != "overrides"}), flush=True)
            out.mkdir(parents=True, exist_ok=True)
            (out / "results.json").write_text(json.dumps(results, indent=1))
    (out / "results.md").write_text(table(results))


def table(results: dict) -> str:
    ref = results["reference"]["rotor_autocorrelation"]
    rotors = list(ref)
    head = ("| variant | energy W1 (kJ/mol) | median abs dU (kJ/mol) | dU drift (kJ/mol) | bond MAE (nm) | "
            "CG RMSD (nm) | frames > +200 kJ/mol | weights step | KL (nats) | active units | "
            + " | ".join(f"{r} <cos dphi> 1/20/100 ps" for r in rotors) + " | one-step rotamers "
            + " / ".join(rotors) + " |")
    data = "; ".join(f"{name} {d['length_ps'] / 1000:g} ns (seed {d['seed']}, {d['implicit_solvent']}, "
                     f"{d['save_interval_ps']:g} ps frames)" for name, d in results.get("data", {}).items())
    lines = [f"Command: `{results['command']}`", f"Machine: {results['machine']}", f"Data: {data}",
             f"Training: `experiment=adp_quick`, {results['steps']} steps per variant", "", head,
             "|" + "---|" * (11 + len(rotors))]

    def rot(values: dict) -> str:
        return " | ".join("/".join(f"{v:.2f}" for v in values.get(r, [])) for r in rotors)

    no_hop = results["reference"].get("no_hop_fraction", {})
    lines.append("| reference |  |  |  |  |  |  |  |  |  | " + rot(ref) + " | "
                 + " / ".join(f"{no_hop[r]:.2f}" for r in rotors if r in no_hop) + " (no-hop fraction) |")
    for label, e in results["variants"].items():
        fmt = (lambda v, f: "" if v is None else f.format(v))  # noqa: E731
        lines.append(f"| {label} | {e['energy_w1_kJmol']:.1f} | {e['energy_median_abs_diff_kJmol']:.1f} | "
                     f"{e['energy_drift_kJmol']:.1f} | {e['bond_mae_nm']:.4f} | {e['cg_rmsd_nm']:.4f} | "
                     f"{e['frames_over_200_kJmol']} | {e['weights_step']} | {fmt(e['kl_nats'], '{:.3f}')} | "
                     f"{fmt(e['active_units'], '{:.0f}')} | {rot(e['rotor_autocorrelation'])} | "
                     + " / ".join(f"{v:.2f}" for v in e.get("one_step_rotamers", {}).values()) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
