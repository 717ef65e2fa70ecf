"""Figures of an evaluation (matplotlib, headless), each with labelled axes and units."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tcbm.analysis.fes import free_energy  # noqa: E402
from tcbm.analysis.scores import shared_edges  # noqa: E402
from tcbm.io import atomic_path  # noqa: E402


def _save(fig, path: Path) -> str:
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path.name


def _histograms(samples: dict[str, np.ndarray], xlabel: str, path: Path, bins: int) -> str:
    fig, ax = plt.subplots(figsize=(6, 4))
    edges = shared_edges(list(samples.values()), bins)
    for name, values in samples.items():
        ax.hist(values, edges, density=True, histtype="step", lw=2 if name == "reference" else 1.3, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("probability density")
    ax.legend()
    return _save(fig, path)


def _fes_panels(cvs: dict, grid, temperature: float, kind: str, path: Path, weights: dict) -> str:
    fig, axes = plt.subplots(1, len(cvs), figsize=(4 * len(cvs) + 1, 3.6), squeeze=False, layout="constrained")
    labels = ("φ (rad)", "ψ (rad)") if kind == "ramachandran" else ("TIC 1", "TIC 2")
    for ax, (name, values) in zip(axes[0], cvs.items()):
        fes = free_energy(values, grid, temperature, weights[name])
        image = ax.pcolormesh(grid[0], grid[1], np.ma.masked_invalid(fes).T, cmap="viridis", vmax=25)
        ax.set_title(name)
        ax.set_xlabel(labels[0])
        ax.set_ylabel(labels[1])
    fig.colorbar(image, ax=axes[0].tolist(), label="free energy (kJ/mol)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return path.name


def _timescales(metrics: dict, lags: tuple[int, ...], dt: float, path: Path) -> str:
    datasets = metrics["datasets"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for k, (name, entry) in enumerate(datasets.items()):
        if entry["msm"].get("error"):
            continue  # no MSM could be estimated for this data set (reported in metrics.json)
        its = np.asarray(entry["msm"]["implied_timescales_ps"])
        for j in range(its.shape[1]):
            axes[0].semilogy(np.asarray(lags) * dt, its[:, j], "o-", color=f"C{k}", label=name if j == 0 else None)
        mean = np.asarray(entry["msm"]["timescales_ps"])
        lower, upper = np.asarray(entry["msm"]["timescales_lower_ps"]), np.asarray(entry["msm"]["timescales_upper_ps"])
        x = np.arange(len(mean)) + 2 + 0.8 * (k / max(len(datasets), 1) - 0.4)
        axes[1].errorbar(x, mean, yerr=[np.maximum(mean - lower, 0), np.maximum(upper - mean, 0)], fmt="o",
                         color=f"C{k}", capsize=3, label=name)
    axes[0].fill_between(np.asarray(lags) * dt, np.asarray(lags) * dt, color="grey", alpha=0.3)
    axes[0].set_xlabel("lag time τ (ps)")
    axes[0].set_ylabel("implied timescale (ps)")
    axes[0].legend()
    axes[1].set_yscale("log")
    axes[1].set_xlabel("process index i (t_i)")
    axes[1].set_ylabel("implied timescale at τ (ps), 95 % interval")
    axes[1].legend()
    return _save(fig, path)


def _eigen_similarity(metrics: dict, path: Path) -> str:
    others = {k: v for k, v in metrics["datasets"].items() if k != "reference" and not v["msm"].get("error")}
    fig, axes = plt.subplots(1, max(len(others), 1), figsize=(3.8 * max(len(others), 1), 3.4), squeeze=False)
    for ax, (name, entry) in zip(axes[0], others.items()):
        sim = np.asarray(entry["msm"]["eigenvector_similarity"])
        ax.set_title(name)
        if sim.size == 0:  # no slow process to compare (e.g. a short or single-state MSM)
            ax.text(0.5, 0.5, "no slow eigenvectors to compare", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        image = ax.imshow(sim, vmin=0, vmax=1, cmap="magma")
        ax.set_xlabel(f"{name} eigenvector")
        ax.set_ylabel("reference eigenvector")
        ax.set_xticks(range(sim.shape[1]), [str(i + 2) for i in range(sim.shape[1])])
        ax.set_yticks(range(sim.shape[0]), [str(i + 2) for i in range(sim.shape[0])])
        fig.colorbar(image, ax=ax, label="|cosine similarity|")
    return _save(fig, path)


def _bond_histograms(bonds: dict, path: Path, bins: int) -> str:
    types = sorted(bonds["reference"], key=lambda k: -bonds["reference"][k].size)[:4]
    fig, axes = plt.subplots(1, len(types), figsize=(4 * len(types), 3.4), squeeze=False)
    for ax, kind in zip(axes[0], types):
        edges = shared_edges([b[kind] for b in bonds.values()], bins)
        for name, data in bonds.items():
            ax.hist(data[kind], edges, density=True, histtype="step", label=name)
        ax.set_xlabel(f"{kind} bond length (nm)")
        ax.set_ylabel("probability density")
    axes[0][0].legend()
    return _save(fig, path)


def all_figures(metrics: dict, data: dict, settings, kind: str, out: Path) -> dict[str, str]:
    """Write every figure into ``out``; returns {figure name: file name}."""
    return {
        "energy": _histograms(data["energies"], "potential energy (kJ/mol)", out / "energy.png", settings.hist_bins),
        "velocity": _histograms(data["speeds"], "per-atom speed between frames (nm/ps)", out / "velocity.png",
                                settings.hist_bins),
        "fes": _fes_panels(data["cvs"], data["grid"], settings.temperature_K, kind, out / "fes.png",
                           data["fes_weights"]),
        "timescales": _timescales(metrics, tuple(settings.msm_lags), data["dt"], out / "timescales.png"),
        "eigenvectors": _eigen_similarity(metrics, out / "eigenvector_similarity.png"),
        "bonds": _bond_histograms(data["bonds"], out / "bond_lengths.png", settings.hist_bins),
    }
