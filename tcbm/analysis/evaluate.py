"""Compare backmapped (or any) all-atom trajectories with a reference: scores, figures and a report.

``Evaluation(settings).fit(reference, {"tcbm": traj, ...}, system)`` computes everything;
``.metrics`` holds the numbers, ``.write(out)`` writes ``metrics.json``, PNG figures and ``report.md``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mdtraj as md
import numpy as np

from tcbm.analysis import observables as obs
from tcbm.analysis.fes import TICAProjection, ca_distances, histogram2d, outside_mass, ramachandran, reference_grid
from tcbm.analysis.msm import MSMComparison, fit_states, macrostates, msm_frame_weights
from tcbm.analysis.scores import js_divergence, js_of_samples, wasserstein1
from tcbm.analysis.uncertainty import PairedBlockBootstrap, SeriesData
from tcbm.io import atomic_path
from tcbm.systems import MolecularSystem

#: a stereocentre counts as intact with at least this fraction of the reference's median signed volume (the
#: reference's own 0.1 % quantile is ~0.7 of its median on chignolin at 350 K)
INTACT_VOLUME = 0.5
UNITS = {"energy": "kJ/mol", "length": "nm", "time": "ps", "speed": "nm/ps", "fes": "kJ/mol"}


@dataclass
class EvaluationSettings:
    """Analysis settings: temperature (K), frame spacing ``dt_ps`` (None: from the reference's time
    stamps), CVs (``auto`` = Ramachandran for a single residue, TICA of Cα distances otherwise), MSM lag
    and lags (frames), clusters (None: 100 for Ramachandran, 150 for TICA), histogram bins;
    ``fes_reweight`` weights every frame by its MSM's stationary distribution in the FES; ``macrostates``:
    metastable sets (PCCA+ of the reference's MSM) in which the energy W1 is also given (0: none);
    ``energies``: ``absolute`` compares force-field energies as they are, ``centred`` subtracts each data
    set's own median first (for a reference from another force field or solvent, whose absolute energies
    under this system's vacuum force field are not comparable, only the distributions' shapes are);
    ``bootstrap_replicas`` (0: none) replicas of a paired block bootstrap over blocks of ``bootstrap_block_ps``
    ps (:mod:`tcbm.analysis.uncertainty`): 95 % intervals of the temporal scores and the energy W1 of every data
    set with the reference's trajectory lengths."""

    temperature_K: float = 300.0
    dt_ps: float | None = None
    cv: str = "auto"
    tica_lag: int = 10
    msm_lag: int = 5
    msm_lags: tuple[int, ...] = (1, 2, 5, 10, 20)
    n_clusters: int | None = None
    n_timescales: int = 3
    bayesian_samples: int = 100
    normalize_timescales: bool = False
    fes_bins: int = 50
    fes_reweight: bool = False
    hist_bins: int = 100
    clash_threshold_nm: float = obs.CLASH_THRESHOLD_NM
    velocity_rescale: dict[str, float] = field(default_factory=dict)
    rotor_lags_ps: tuple[float, ...] = (1.0, 20.0, 100.0)
    macrostates: int = 2
    seed: int = 0
    energies: str = "absolute"
    bootstrap_replicas: int = 200
    bootstrap_block_ps: float = 200.0

    def __post_init__(self) -> None:
        if self.energies not in ("absolute", "centred"):
            raise ValueError(f"settings.energies must be 'absolute' or 'centred', got {self.energies!r}")
        if self.bootstrap_replicas < 0 or self.bootstrap_block_ps <= 0:
            raise ValueError(f"settings.bootstrap_replicas must be >= 0 (0: off) and settings.bootstrap_block_ps > 0 "
                             f"ps, got {self.bootstrap_replicas} and {self.bootstrap_block_ps}")


def frame_spacing(traj: md.Trajectory) -> float | None:
    """Median time between frames (ps) from a trajectory's time stamps; None when it has none."""
    if traj.n_frames < 2 or np.ptp(traj.time) <= 0:
        return None
    return float(np.median(np.diff(traj.time)))


def comparable_energies(energies: dict[str, np.ndarray], mode: str) -> dict[str, np.ndarray]:
    """Energies as compared: unchanged (``absolute``), or each data set's minus its own median (``centred``)."""
    return energies if mode == "absolute" else {k: e - np.median(e) for k, e in energies.items()}


def split(values: np.ndarray, lengths: list[int]) -> list[np.ndarray]:
    """``values`` of all trajectories' frames in order, split back into one array per trajectory."""
    return np.split(values, np.cumsum(lengths)[:-1])


class Evaluation:
    """Estimator for the comparison of data sets against a reference (``fit`` then ``metrics``)."""

    def __init__(self, settings: EvaluationSettings | None = None) -> None:
        self.settings = settings or EvaluationSettings()
        self.metrics: dict = {}
        self.frame_macrostates: dict[str, np.ndarray] = {}  # per data set: each frame's macrostate (-1: none)
        self.bootstrap: PairedBlockBootstrap | None = None  # its replicas: scores on resampled held-out blocks
        self._data: dict = {}

    def _check(self, segments: dict[str, list[md.Trajectory]], system: MolecularSystem) -> None:
        reference = segments["reference"]
        reference_dt = next((dt for dt in map(frame_spacing, reference) if dt is not None), None)
        for name, trajs in segments.items():
            label = "the reference" if name == "reference" else f"data set {name!r}"
            if not trajs:
                raise ValueError(f"{label} has no trajectory")
            for traj in trajs:
                if traj.n_atoms != reference[0].n_atoms:
                    raise ValueError(f"{label} has {traj.n_atoms} atoms, the reference has {reference[0].n_atoms}")
                system.check_atoms(traj.topology, label)
                dt = frame_spacing(traj)
                if (self.settings.dt_ps is None and reference_dt is not None and dt is not None
                        and abs(dt - reference_dt) > 1e-3 * reference_dt):
                    raise ValueError(
                        f"{label} has frames every {dt:g} ps, the reference every {reference_dt:g} ps: velocities, "
                        "rotor kinetics and MSMs compare only at equal spacing (stride one of them, or set "
                        "settings.dt_ps if the time stamps are wrong)")

    def _cv(self, traj: md.Trajectory) -> np.ndarray:
        return ramachandran(traj) if self.cv_kind == "ramachandran" else self.tica.transform(ca_distances(traj))

    def fit(self, reference: md.Trajectory | Sequence[md.Trajectory],
            datasets: dict[str, md.Trajectory | Sequence[md.Trajectory]], system: MolecularSystem,
            cg: np.ndarray | None = None) -> Evaluation:
        """Evaluate ``datasets`` against ``reference``.  Each is one trajectory or a list of them (e.g. several
        independent runs): per-frame measures pool their frames, time-dependent ones (velocities, rotors, MSMs,
        TICA) never pair frames across two trajectories.  ``cg`` (T, n, 3) nm is the CG input of the data sets
        (all their frames in order) for CG consistency (default: f_cg of the reference's frames, for data sets
        with as many frames)."""
        s = self.settings
        segments = {name: [value] if isinstance(value, md.Trajectory) else list(value)
                    for name, value in {"reference": reference, **datasets}.items()}
        self._check(segments, system)
        dt = s.dt_ps or next((d for d in map(frame_spacing, segments["reference"]) if d is not None), None) or 1.0
        everything = {k: v[0] if len(v) == 1 else md.join(v, check_topology=False) for k, v in segments.items()}
        lengths = {k: [t.n_frames for t in v] for k, v in segments.items()}
        n_res = sum(1 for r in system.topology.residues if r.name not in ("ACE", "NME"))
        self.cv_kind = s.cv if s.cv != "auto" else ("ramachandran" if n_res == 1 else "tica")
        if self.cv_kind == "tica":
            self.tica = TICAProjection(s.tica_lag).fit([ca_distances(t) for t in segments["reference"]])
        cvs = {k: self._cv(t) for k, t in everything.items()}
        energies = comparable_energies({k: obs.potential_energies(t.xyz, system) for k, t in everything.items()},
                                       s.energies)
        segment_speeds = {k: [obs.frame_speeds(t.xyz, dt, s.velocity_rescale.get(k, 1.0)).reshape(-1, t.n_atoms)
                              for t in v] for k, v in segments.items()}
        speeds = {k: np.concatenate([x.ravel() for x in v]) for k, v in segment_speeds.items()}
        bonds = {k: obs.bond_lengths(t) for k, t in everything.items()}
        grid = reference_grid(cvs["reference"], s.fes_bins, periodic=self.cv_kind == "ramachandran")
        states = fit_states(cvs["reference"], s.n_clusters or (100 if self.cv_kind == "ramachandran" else 150), s.seed)
        dtrajs = {k: split(states.transform(np.ascontiguousarray(v, dtype=np.float64)), lengths[k])
                  for k, v in cvs.items()}
        self.frame_macrostates, by_macrostate = self._energy_by_macrostate(dtrajs, energies, states.n_clusters)
        weights = {k: msm_frame_weights(d, s.msm_lag) if s.fes_reweight else None for k, d in dtrajs.items()}
        hists = {k: histogram2d(v, grid, weights[k]) for k, v in cvs.items()}
        # the FES divergence counts what falls outside the reference's grid as one more bin
        fes_bins = {k: np.append(h.ravel(), outside_mass(cvs[k], grid, weights[k])) for k, h in hists.items()}
        msm = MSMComparison(s.msm_lag, tuple(s.msm_lags), s.n_timescales, dt, s.bayesian_samples,
                            s.normalize_timescales, s.seed).fit(dtrajs, "reference")
        cg_ref = cg if cg is not None else system.mapping(everything["reference"].xyz)
        n_ref = everything["reference"].n_frames
        ref_bond_means = {k: v.reshape(n_ref, -1).mean(0) for k, v in bonds["reference"].items()}
        rotor_names = list(obs.rotors(system.topology))
        angles = {k: [obs.rotor_dihedrals(t)[1] for t in v] for k, v in segments.items()}
        rotors = {k: obs.pooled_rotor_autocorrelations(rotor_names, a, list(s.rotor_lags_ps), dt)
                  for k, a in angles.items()}
        free, motion, states = self._free_atom_measures(segments, rotor_names, angles, system, dt)
        series = {k: SeriesData(split(energies[k], lengths[k]), segment_speeds[k], angles[k], states[k],
                                [d for d, _ in motion[k]], [r for _, r in motion[k]]) for k in segments}
        self.bootstrap = self._bootstrap(series, lengths, rotor_names, system, dt)
        intervals = self.bootstrap.intervals() if self.bootstrap is not None else {}
        metrics = {}
        for name, traj in everything.items():
            bond_means = {k: v.reshape(traj.n_frames, -1).mean(0) for k, v in bonds[name].items()}
            clashes = obs.clashes_per_frame(traj, s.clash_threshold_nm)
            entry = {
                "frames": traj.n_frames,
                "trajectories": len(segments[name]),
                "energy_mean_kJmol": float(energies[name].mean()),
                "energy_std_kJmol": float(energies[name].std()),
                "energy_w1_kJmol": wasserstein1(energies[name], energies["reference"]),
                "energy_js": js_of_samples(energies[name], energies["reference"], s.hist_bins),
                "bond_mae_nm": float(np.mean(np.concatenate(
                    [np.abs(bond_means[k] - ref_bond_means[k]) for k in ref_bond_means]))),
                "bond_js_mean": float(np.mean([js_of_samples(bonds[name][k], bonds["reference"][k], s.hist_bins)
                                               for k in ref_bond_means])),
                "l_chiral_fraction": obs.l_chiral_fraction(traj),
                "stereo_fraction": obs.stereo_fraction(traj, everything["reference"]),
                "stereo_intact_fraction": obs.stereo_fraction(traj, everything["reference"], INTACT_VOLUME),
                "clashes_per_frame": float(clashes.mean()),
                "cis_peptides_per_frame": float(obs.cis_peptides_per_frame(traj).mean()),
                "clash_frame_fraction": float((clashes > 0).mean()),
                "velocity_w1_nm_per_ps": wasserstein1(speeds[name], speeds["reference"]),
                "velocity_js": js_of_samples(speeds[name], speeds["reference"], s.hist_bins),
                "fes_js": js_divergence(fes_bins[name], fes_bins["reference"]),
                "cg_rmsd_nm": float(obs.cg_rmsd(traj.xyz, cg_ref, system.mapping).mean())
                if len(cg_ref) == traj.n_frames else None,
                "msm": msm[name],
                "rotor_autocorrelation": rotors[name],
                "rotor_autocorrelation_max_error": max(
                    (abs(a - b) for r in rotors[name] for a, b in zip(rotors[name][r], rotors["reference"][r])),
                    default=None),
                **free[name],
                **by_macrostate.get(name, {}),
                **({"intervals_95": intervals[name]} if name in intervals else {}),
            }
            metrics[name] = entry
        self.metrics = {"units": UNITS, "settings": {**asdict(self.settings), "dt_ps": dt, "cv": self.cv_kind},
                        "system": system.name, "datasets": metrics}
        self._data = {"energies": energies, "speeds": speeds, "cvs": cvs, "grid": grid, "bonds": bonds, "dt": dt,
                      "fes_weights": weights}
        return self

    def _energy_by_macrostate(self, dtrajs: dict[str, list[np.ndarray]], energies: dict[str, np.ndarray],
                              n_states: int) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
        """Each data set's per-frame macrostate of the reference (:func:`macrostates`, by decreasing population;
        -1: none), and per data set the fraction of its frames in each and the energy W1 (kJ/mol) against the
        reference's frames of the same macrostate — where an energy error sits (e.g. one rare basin)."""
        n_sets = self.settings.macrostates
        if not n_sets:
            return {}, {}
        try:
            labels = macrostates(dtrajs["reference"], self.settings.msm_lag, n_sets, n_states)
        except ValueError as err:
            return {}, {name: {"macrostate_error": str(err)} for name in dtrajs}
        sets = {name: labels[np.concatenate(d)] for name, d in dtrajs.items()}
        reference = sets["reference"]
        return sets, {name: {
            "macrostate_fractions": [float(np.mean(frames == k)) for k in range(n_sets)],
            "energy_w1_by_macrostate_kJmol": [
                wasserstein1(energies[name][frames == k], energies["reference"][reference == k])
                if np.any(frames == k) and np.any(reference == k) else None for k in range(n_sets)],
        } for name, frames in sets.items()}

    def _bootstrap(self, series: dict[str, SeriesData], lengths: dict[str, list[int]], rotor_names: list[str],
                   system: MolecularSystem, dt: float) -> PairedBlockBootstrap | None:
        """The paired block bootstrap over the data sets with the reference's trajectory lengths (None when
        switched off or none has them)."""
        s = self.settings
        paired = {k: v for k, v in series.items() if lengths[k] == lengths["reference"]}
        if not s.bootstrap_replicas or len(paired) < 2:
            return None
        atoms = obs.free_atoms(system.mapping)
        elements = np.array([str(system.topology.atom(int(i)).element.symbol) for i in atoms])
        return PairedBlockBootstrap(s.bootstrap_block_ps, s.bootstrap_replicas, s.hist_bins, s.seed).fit(
            paired, rotor_names, elements, dt, list(s.rotor_lags_ps))

    def _free_atom_measures(self, segments: dict[str, list[md.Trajectory]], rotor_names: list[str],
                            angles: dict[str, list[np.ndarray]], system: MolecularSystem, dt: float
                            ) -> tuple[dict[str, dict], dict[str, list], dict[str, list[np.ndarray]]]:
        """What the CG does not fix, per data set: rotamer hops per ps of the methyl and χ rotors (states centred on the
        reference's staggered minima), and the frame-to-frame motion of the CG-free atoms in the CG's frame —
        mean RMSD (nm) and, per element, the displacement distribution's JS and W1 (nm) against the reference.
        Also returned, per data set and trajectory: that motion (displacements, RMSD) and the rotamer states."""
        atoms = obs.free_atoms(system.mapping)
        elements = np.array([str(system.topology.atom(int(i)).element.symbol) for i in atoms])
        phases = obs.rotor_phases(np.concatenate(angles["reference"]))
        motion = {k: [obs.free_atom_motion(t.xyz, system.mapping, atoms) for t in v] for k, v in segments.items()}
        states = {k: [obs.rotamer_states(a, phases) for a in v] for k, v in angles.items()}
        ref_disp = np.concatenate([d for d, _ in motion["reference"]])
        out = {}
        for name in segments:
            disp = np.concatenate([d for d, _ in motion[name]])
            rmsd = np.concatenate([r for _, r in motion[name]])
            rates = obs.state_hop_rates(states[name], dt)
            out[name] = {
                "rotor_hops_per_ps": {r: float(v) for r, v in zip(rotor_names, rates)},
                "free_rmsd_nm": float(rmsd.mean()) if len(rmsd) else None,
                "free_displacement_js": {str(e): js_of_samples(disp[:, elements == e], ref_disp[:, elements == e],
                                                          self.settings.hist_bins) for e in sorted(set(elements))},
                "free_displacement_w1_nm": {str(e): wasserstein1(disp[:, elements == e], ref_disp[:, elements == e])
                                            for e in sorted(set(elements))},
            }
        return out, motion, states

    def write(self, out: str | Path) -> Path:
        """Write ``metrics.json``, figures and ``report.md`` into ``out``; returns the report path."""
        from tcbm.analysis import plots
        from tcbm.analysis.report import write_report

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "metrics.json") as tmp:
            tmp.write_text(json.dumps(self.metrics, indent=1, default=float))
        figures = plots.all_figures(self.metrics, self._data, self.settings, self.cv_kind, out)
        return write_report(self.metrics, figures, out)
