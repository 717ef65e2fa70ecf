"""The one-page ``report.md`` of an evaluation, and the ``tcbm evaluate`` entry point."""

from __future__ import annotations

from pathlib import Path

from tcbm.io import atomic_path

ROWS = [
    ("energy W1 (kJ/mol)", "energy_w1_kJmol", "{:.2f}"),
    ("energy JS", "energy_js", "{:.4f}"),
    ("bond-length MAE (nm)", "bond_mae_nm", "{:.4f}"),
    ("L-chiral frames (%)", "l_chiral_fraction", "pct"),
    ("frames with every stereocentre as in the reference (%)", "stereo_fraction", "pct"),
    ("... and none flattened below half the reference's volume (%)", "stereo_intact_fraction", "pct"),
    ("clashes per frame", "clashes_per_frame", "{:.3f}"),
    ("cis peptide bonds per frame", "cis_peptides_per_frame", "{:.3f}"),
    ("FES JS", "fes_js", "{:.4f}"),
    ("velocity W1 (nm/ps)", "velocity_w1_nm_per_ps", "{:.4f}"),
    ("velocity JS", "velocity_js", "{:.4f}"),
    ("CG-consistency RMSD (nm)", "cg_rmsd_nm", "{:.4f}"),
    ("rotor <cos dphi> max abs. error", "rotor_autocorrelation_max_error", "{:.2f}"),
    ("CG-free atoms: frame-to-frame RMSD in the CG frame (nm)", "free_rmsd_nm", "{:.4f}"),
]


def _fmt(value, spec: str) -> str:
    if value is None:
        return "–"
    return f"{100 * value:.1f}" if spec == "pct" else spec.format(value)


def metrics_table(metrics: dict) -> str:
    """Markdown table: one column per data set, one row per score, plus timescale rows."""
    names = list(metrics["datasets"])
    lines = ["| score | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for label, key, spec in ROWS:
        lines.append(f"| {label} | " + " | ".join(_fmt(metrics["datasets"][n].get(key), spec) for n in names) + " |")
    lags = "/".join(f"{lag:g}" for lag in metrics["settings"]["rotor_lags_ps"])
    for rotor in metrics["datasets"]["reference"].get("rotor_autocorrelation", {}):
        cells = ["/".join(f"{v:.2f}" for v in metrics["datasets"][n]["rotor_autocorrelation"][rotor]) for n in names]
        lines.append(f"| {rotor} rotor <cos dphi> at {lags} ps | " + " | ".join(cells) + " |")
    reference = metrics["datasets"]["reference"]
    for rotor in reference.get("rotor_hops_per_ps", {}):
        cells = [f"{metrics['datasets'][n]['rotor_hops_per_ps'][rotor]:.3f}" for n in names]
        lines.append(f"| {rotor} rotamer hops per ps | " + " | ".join(cells) + " |")
    for k in range(len(reference.get("macrostate_fractions", []))):
        cells = [_macrostate_cell(metrics["datasets"][n], k) for n in names]
        lines.append(f"| energy W1 in macrostate {k + 1} (kJ/mol; % of frames) | " + " | ".join(cells) + " |")
    for element in reference.get("free_displacement_js", {}):
        cells = [f"{metrics['datasets'][n]['free_displacement_js'][element]:.4f}" for n in names]
        lines.append(f"| CG-free {element}: frame-to-frame displacement JS | " + " | ".join(cells) + " |")
    return "\n".join(lines + interval_rows(metrics) + timescale_rows(metrics))


INTERVAL_ROWS = [("energy W1 (kJ/mol)", "energy_w1_kJmol", "{:.2f}"), ("velocity JS", "velocity_js", "{:.4f}"),
                 ("rotor <cos dphi> max abs. error", "rotor_autocorrelation_max_error", "{:.2f}"),
                 ("CG-free frame-to-frame RMSD (nm)", "free_rmsd_nm", "{:.4f}")]


def interval_rows(metrics: dict) -> list[str]:
    """Rows of the bootstrap's 95 % intervals (:mod:`tcbm.analysis.uncertainty`), for the data sets that have
    them ("–" for the others), of the scalar scores and the CG-free displacement JS per element."""
    entries = [metrics["datasets"][n].get("intervals_95") for n in metrics["datasets"]]
    if not any(entries):
        return []
    keys = [*INTERVAL_ROWS, *[(f"CG-free {k.split(':')[1]}: displacement JS", k, "{:.4f}")
                              for k in next(e for e in entries if e) if k.startswith("free_displacement_js:")]]
    block = metrics["settings"].get("bootstrap_block_ps")
    lines = []
    for label, key, spec in keys:
        cells = ["–" if not e or key not in e else f"[{spec.format(e[key][0])}, {spec.format(e[key][1])}]"
                 for e in entries]
        lines.append(f"| {label}, 95 % interval ({block:g} ps blocks) | " + " | ".join(cells) + " |")
    return lines


def _macrostate_cell(entry: dict, k: int) -> str:
    value = entry["energy_w1_by_macrostate_kJmol"][k]
    return f"{_fmt(value, '{:.2f}')} ({100 * entry['macrostate_fractions'][k]:.1f} %)"


def timescale_rows(metrics: dict) -> list[str]:
    """Table rows of the MSM timescales the reference resolves at the lag, and a note naming the others."""
    names = list(metrics["datasets"])
    lines = []
    reference_resolved = metrics["datasets"]["reference"]["msm"].get("resolved", [])
    unresolved = [f"t{i + 2}" for i, ok in enumerate(reference_resolved) if not ok]
    for i in (i for i, ok in enumerate(reference_resolved) if ok):  # only processes the reference resolves
        cells = []
        for n in names:
            msm = metrics["datasets"][n]["msm"]
            if i < len(msm["timescales_ps"]):
                err = msm["relative_error"][i] if i < len(msm["relative_error"]) else None
                cell = f"{msm['timescales_ps'][i]:.1f} [{msm['timescales_lower_ps'][i]:.1f}, " \
                       f"{msm['timescales_upper_ps'][i]:.1f}]"
                cells.append(cell + (f" ({100 * err:.0f} %)" if err is not None and n != "reference" else ""))
            else:
                cells.append("–")
        lines.append(f"| t{i + 2} (ps) [95 % CI] (rel. err.) | " + " | ".join(cells) + " |")
    if unresolved:
        lines.append(f"\n{', '.join(unresolved)} of the reference: not resolved at lag "
                     f"{metrics['settings']['msm_lag']} frames (not longer than the lag time, or not converged at "
                     "the next lag); left out of the table, see the implied-timescale plot.")
    return lines


def write_report(metrics: dict, figures: dict[str, str], out: Path) -> Path:
    settings = metrics["settings"]
    text = [
        f"# tcbm evaluation: {metrics['system']}",
        "",
        f"Frames every {settings['dt_ps']:g} ps; CVs: {settings['cv']}; MSM lag {settings['msm_lag']} frames; "
        f"{settings['temperature_K']:g} K; clashes = pairs ≥ 4 bonds apart closer than "
        f"{settings['clash_threshold_nm']} nm. JS divergences are base 2 (0 = identical, 1 = disjoint).",
        "Energies: " + ("this system's vacuum force-field energies as they are." if settings.get("energies", "absolute")
                        == "absolute" else "centred on each data set's own median (the reference comes from another "
                        "force field or solvent, so only the shapes of the distributions compare)."),
        "Rotors, none fixed by a backbone CG: methyls (H–C–X–Y dihedral of every CH3, named by the carbon) and "
        "side-chain chi1/chi2 about bonds between two four-bonded atoms outside rings. <cos dphi> is the mean "
        "cosine of the dihedral's change over the lag; 1 is a frozen rotor, a rotor that forgets its phase "
        "decays towards 0; the max abs. error is over rotors and lags against the reference. Rotamer hops "
        "count changes between three states centred on the reference's staggered minima (boundaries on the "
        "eclipsed maxima, so librations are not hops).",
        "CG-free atoms are those the CG does not place (every atom that is not a bead on its own). Their motion "
        "is measured between consecutive frames after superposing frame t+1 onto frame t through the CG beads: "
        "the mean RMSD, and per element the JS divergence of the per-atom displacement distribution from the "
        "reference's (reference quantile bins with under- and overflow bins, as for every JS here). A "
        "frame-based backmapper re-invents these atoms every frame; a temporally coherent one moves them like "
        "the reference.",
        "Intervals: 95 % basic intervals of a paired block bootstrap (blocks of consecutive held-out frames drawn "
        "with replacement, the same blocks for every data set; only data sets that backmap the reference frame by "
        "frame): how far a score could move with other held-out frames of the same kind. They take back the upward "
        "bias of a divergence estimated from finitely many frames, so a small JS can lie above its interval.",
        "Macrostates: the metastable sets of the reference's MSM (PCCA+, numbered by decreasing population); every "
        "data set's frames are assigned through their own CVs, and the energy W1 within each set says where an "
        "energy error sits (e.g. a rare basin the model has seen little of).",
        "",
        metrics_table(metrics),
        "",
    ]
    captions = {"energy": "Potential energy", "velocity": "Intra-frame velocities", "fes": "Free-energy surfaces",
                "timescales": "MSM implied timescales", "eigenvectors": "MSM eigenvector similarity",
                "bonds": "Bond lengths"}
    for key, filename in figures.items():
        text += [f"## {captions[key]}", "", f"![{captions[key]}]({filename})", ""]
    path = out / "report.md"
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(text))
    return path


def evaluate_from_config(cfg) -> Path:
    """``tcbm evaluate`` from a ``conf/evaluate.yaml``-shaped config."""
    import mdtraj as md
    from omegaconf import OmegaConf

    from tcbm.analysis.baselines import NearestNeighbourBackmapper
    from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
    from tcbm.artifact import BackmapModel
    from tcbm.io import expand_paths, load_trajectory
    from tcbm.systems import load_system

    def listed(value) -> list[Path]:
        return expand_paths(list(value) if not isinstance(value, str) else value)

    settings = EvaluationSettings(**OmegaConf.to_container(cfg.settings, resolve=True))  # checked before loading
    system = load_system(OmegaConf.to_container(cfg.system, resolve=True))
    top = cfg.top or system.topology
    references = [load_trajectory(p, cfg.reference_top or top) for p in listed(cfg.reference)]
    paths = listed(cfg.backmapped)
    labels = list(cfg.labels) if cfg.labels else [p.stem for p in paths]
    if len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels given for {len(paths)} backmapped trajectories")
    datasets: dict[str, list] = {}
    for label, path in zip(labels, paths):  # a repeated label collects several trajectories into one data set
        datasets.setdefault(label, []).append(load_trajectory(path, top))
    if cfg.nearest_neighbour_model:
        library = BackmapModel.load(cfg.nearest_neighbour_model).library
        baseline = NearestNeighbourBackmapper(library.cg, library.aa)
        datasets["nearest-neighbour"] = [md.Trajectory(baseline.backmap(system.mapping(r.xyz)), r.topology,
                                                       time=r.time) for r in references]
    return Evaluation(settings).fit(references, datasets, system).write(cfg.out)
