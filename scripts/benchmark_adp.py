"""ADP quality benchmark: tcbm vs the frame-based cVAE (history 0) vs the nearest-neighbour library
baseline, on a held-out alanine-dipeptide trajectory.

    python scripts/benchmark_adp.py --out benchmarks/adp --workers 2

By default 12 ns of training in 4 runs (2 started in alphaL) and 320 ns held-out in 16 runs (8 in alphaL),
enough for the held-out MSM to resolve the phi process (3 re-entries into alphaL); ~1.2 h on 2 CPU cores
(held-out simulation ~35 min, two trainings side by side ~11 min, backmapping ~3 min per model, evaluation
~5 min).

Simulates (cached) training and held-out runs with fixed seeds (1 ps frames), trains both cVAEs with
`experiment=adp_benchmark` (a fixed number of steps), backmaps the held-out CG trajectories
autoregressively, evaluates everything against the held-out reference (with the reference shuffled in time
as a control row: exact frames, no dynamics) and writes
``<out>/results.md`` (table, targets, timings, figures) and ``<out>/metrics.json``.
Models, data and backmapped trajectories go to ``<out>/data`` and ``<out>/runs`` (not committed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from hydra import initialize_config_module

from tcbm.analysis.baselines import time_shuffled
from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
from tcbm.analysis.uncertainty import PairedBlockBootstrap
from tcbm.backmap import RolloutSettings
from tcbm.benchmark import add_model_row_arguments, compared, results_page, target_row
from tcbm.pipeline import backmap_with_baseline, parse_rollout_variant, parse_variant, simulate_runs, train_models
from tcbm.refine import RefinementSettings
from tcbm.systems import load_system

KT = 0.0083144626 * 300.0


def rotor_errors(metrics: dict, name: str, min_lag_ps: float) -> list[float]:
    """|<cos dphi>| differences to the reference of data set ``name``, every rotor and lag >= ``min_lag_ps``."""
    lags = metrics["settings"]["rotor_lags_ps"]
    ref, own = (metrics["datasets"][k]["rotor_autocorrelation"] for k in ("reference", name))
    return [abs(own[r][k] - ref[r][k]) for r in ref for k, lag in enumerate(lags) if lag >= min_lag_ps]


def temporal_errors(metrics: dict, name: str) -> dict[str, float]:
    """Distance to the reference of data set ``name`` on every temporal measure of the report."""
    d, ref = metrics["datasets"][name], metrics["datasets"]["reference"]
    return {"velocity JS": d["velocity_js"],
            "rotor <cos dphi> max error": d["rotor_autocorrelation_max_error"],
            "rotor hops per ps, max error": max(abs(d["rotor_hops_per_ps"][r] - v)
                                                for r, v in ref["rotor_hops_per_ps"].items()),
            "CG-free frame-to-frame RMSD error (nm)": abs(d["free_rmsd_nm"] - ref["free_rmsd_nm"]),
            **{f"CG-free {element} displacement JS": js for element, js in d["free_displacement_js"].items()}}


def targets(metrics: dict, bootstrap: PairedBlockBootstrap | None) -> list[str]:
    """The paper's claims and the model issue's bar as pass/fail lines for tcbm (``bootstrap``: the evaluation's
    paired block bootstrap, for the intervals of the "closer than" differences)."""
    d = metrics["datasets"]
    tcbm = d["tcbm"]
    resolved = d["reference"]["msm"].get("resolved", [])
    rel = [r for r, ok in zip(tcbm["msm"]["relative_error"], resolved) if ok]  # timescales resolved at the lag
    others = [d[k]["velocity_js"] for k in ("frame-based cVAE", "nearest-neighbour")]
    rotor_error = max(rotor_errors(metrics, "tcbm", min_lag_ps=20.0), default=None)
    texts, worse = compared(temporal_errors, metrics, bootstrap, "tcbm", "frame-based cVAE")
    cg_fixed = " (phi/psi are CG atoms: any CG-consistent backmapper passes)"
    return [
        target_row(f"energy W1 < kT ({KT:.2f} kJ/mol)", tcbm["energy_w1_kJmol"] < KT, f"{tcbm['energy_w1_kJmol']:.2f}"),
        target_row("bond-length MAE <= 0.002 nm", tcbm["bond_mae_nm"] <= 0.002, f"{tcbm['bond_mae_nm']:.4f}"),
        target_row("all frames L-chiral", tcbm["l_chiral_fraction"] == 1.0, f"{100 * tcbm['l_chiral_fraction']:.1f} %"),
        target_row("methyl-rotor <cos dphi> at 20 and 100 ps within 0.1 of the reference", rotor_error is not None
                   and rotor_error < 0.1, "n/a" if rotor_error is None else
                   f"max error {rotor_error:.2f} (1 ps included: {tcbm['rotor_autocorrelation_max_error']:.2f})"),
        target_row("closer to the reference than the frame-based cVAE on every temporal measure", not worse,
                   "; ".join(texts) + (f" (not closer: {', '.join(worse)})" if worse else "")),
        target_row("FES JS < 0.02" + cg_fixed, tcbm["fes_js"] < 0.02, f"{tcbm['fes_js']:.4f}"),
        target_row(f"resolved MSM timescales ({len(rel)}) within 10 %" + cg_fixed, bool(rel) and max(rel) < 0.1,
                   ", ".join(f"{100 * r:.0f} %" for r in rel) or "none resolved"),
        target_row("velocity JS < 0.02", tcbm["velocity_js"] < 0.02, f"{tcbm['velocity_js']:.4f}"),
        target_row("velocity JS better than both frame-based baselines", tcbm["velocity_js"] < min(others),
                   f"{tcbm['velocity_js']:.4f} vs {min(others):.4f}"),
    ]


SHUFFLED = "reference shuffled in time"
ALPHA_L = [{"atoms": [4, 6, 8, 14], "angle_deg": 60.0}, {"atoms": [6, 8, 14, 16], "angle_deg": 40.0}]


def simulate_split(system, data: Path, name: str, total_ps: float, runs: int, alpha_l_runs: int, seed: int,
                   workers: int = 1) -> list[Path]:
    """``runs`` independent trajectories ``<name>_<k>`` of ``total_ps / runs`` ps each (seeds seed + k),
    ``workers`` at a time; the first ``alpha_l_runs`` start in alphaL (restrained during equilibration only)."""
    return simulate_runs(system, data, name, [total_ps / runs] * runs, seed,
                         [ALPHA_L if k < alpha_l_runs else [] for k in range(runs)], workers, chunk_frames=10_000)


def phi_summary(trajectories, macrostates=None) -> str:
    """Fraction of frames with phi > 0, the number of phi sign changes (runs pooled) and, given the reference's
    per-frame macrostates (Evaluation.frame_macrostates), the share of phi > 0 frames in each: when the
    slowest process is phi's, one macrostate holds the phi > 0 frames."""
    import mdtraj as md
    import numpy as np

    phi = [md.compute_phi(t)[1][:, 0] for t in trajectories]
    positive = np.concatenate([p > 0 for p in phi])
    crossings = sum(int((np.diff((p > 0).astype(int)) != 0).sum()) for p in phi)
    line = f"{100 * positive.mean():.1f} % of frames at phi > 0, {crossings} phi sign changes"
    if macrostates is not None and macrostates.max() >= 0:
        line += "; MSM macrostates (PCCA+): " + ", ".join(
            f"{k + 1}: {100 * np.mean(macrostates == k):.1f} % of the frames, {100 * positive[macrostates == k].mean():.1f} "
            "% of them at phi > 0" for k in range(macrostates.max() + 1) if np.any(macrostates == k))
    return line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/adp")
    parser.add_argument("--train-ps", type=float, default=12_000.0)
    parser.add_argument("--test-ps", type=float, default=320_000.0)
    parser.add_argument("--runs", type=int, default=4,
                        help="split the training time into this many independent runs")
    parser.add_argument("--alpha-l-runs", type=int, default=2,
                        help="of those runs, how many start in alphaL (phi +60, psi +40 deg) instead of the "
                             "minimised reference structure (beta), so the data hold the slow phi process")
    parser.add_argument("--test-runs", type=int, default=16,
                        help="independent held-out runs; more runs, more phi transitions")
    parser.add_argument("--test-alpha-l-runs", type=int, default=8,
                        help="of the held-out runs, how many start in alphaL")
    parser.add_argument("--overrides", nargs="*", default=[], help="extra tcbm train overrides")
    parser.add_argument("--device", default=None)
    parser.add_argument("--workers", type=int, default=1,
                        help="simulations and CPU trainings run this many at a time (tcbm.processes); the models' "
                             "own training times are then those of a share of the cores")
    add_model_row_arguments(parser, RefinementSettings().temperature_K)
    args = parser.parse_args()
    out = Path(args.out)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    system = load_system("adp")

    data = out / "data"
    test_runs, test_alpha_l = args.test_runs, args.test_alpha_l_runs
    for runs, alpha_l, flag in ((args.runs, args.alpha_l_runs, ""), (test_runs, test_alpha_l, "test-")):
        if runs < 1 or not 0 <= alpha_l <= runs:
            raise SystemExit(f"--{flag}runs must be >= 1 and --{flag}alpha-l-runs between 0 and it "
                             f"(got {runs} and {alpha_l})")
    train_runs = simulate_split(system, data, "train", args.train_ps, args.runs, args.alpha_l_runs, seed=1,
                                workers=args.workers)
    test_paths = simulate_split(system, data, "test", args.test_ps, test_runs, test_alpha_l, seed=1001,
                                workers=args.workers)
    overrides = [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}", *args.overrides]
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        paths, timings = train_models(out / "runs", "adp_benchmark", train_runs, overrides, args.workers,
                                      variants=dict(map(parse_variant, args.variant)))
    reference, datasets, backmap_timings = backmap_with_baseline(paths, test_paths, data / "test_0.pdb", out / "runs",
                                                                 RolloutSettings(seed=0, refinement=RefinementSettings(
                                                                     steps=args.refine_steps,
                                                                     minimize_steps=args.refine_minimize_steps)),
                                                                 device, refine="tcbm",
        rollout_variants=[parse_rollout_variant(spec) for spec in args.rollout_variant])
    timings.update(backmap_timings)
    datasets[SHUFFLED] = [time_shuffled(run, seed=k) for k, run in enumerate(reference)]

    evaluation = Evaluation(EvaluationSettings()).fit(reference, datasets, system)
    evaluation.metrics["timings"] = timings
    evaluation.write(out)
    (out / "report.md").unlink()
    data_line = (f"{args.train_ps / 1000:g} ns training in {args.runs} independent run(s), {args.alpha_l_runs} of "
                 f"them started in alphaL; {args.test_ps / 1000:g} ns held-out in {test_runs}, {test_alpha_l} started "
                 f"in alphaL; OBC implicit solvent, 300 K, 1 ps frames. Held-out reference: "
                 f"{phi_summary(reference, evaluation.frame_macrostates.get('reference'))}. Control row '{SHUFFLED}': the held-out frames in random order "
                 "(every per-frame score exact, no dynamics; its CG is shuffled too).")
    page = results_page("ADP quality benchmark", data_line, evaluation.metrics,
                        targets(evaluation.metrics, evaluation.bootstrap), timings, device)
    (out / "results.md").write_text(page)
    print(json.dumps(timings, indent=1))
    print(f"results: {out / 'results.md'}")


if __name__ == "__main__":
    main()
