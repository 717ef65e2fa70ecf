"""Steps shared by the quality benchmarks (``scripts/benchmark_adp.py``, ``scripts/benchmark_cln.py``): seeded
simulations, both cVAEs trained on them, the held-out runs backmapped with the nearest-neighbour baseline
alongside, and the committed results page."""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from tcbm.analysis.report import metrics_table
from tcbm.artifact import BackmapModel
from tcbm.demo import MODELS, train_model
from tcbm.simulate import simulate
from tcbm.systems import MolecularSystem

FIGURES = ("energy", "velocity", "fes", "timescales", "eigenvector_similarity", "bond_lengths")


def simulate_runs(system: MolecularSystem, data: Path, name: str, lengths_ps: Sequence[float], seed: int,
                  restraints: Sequence[list[dict]] | None = None, **settings) -> list[Path]:
    """Independent runs ``<name>_<k>`` of ``lengths_ps[k]`` ps (seed ``seed + k``; start restraints
    ``restraints[k]`` if given), cached in ``data``: a run already there with the same settings is reused."""
    return [simulate(system, data, f"{name}_{k}", length_ps=length, seed=seed + k,
                     start_restraints=list(restraints[k]) if restraints else [], **settings)
            for k, length in enumerate(lengths_ps)]


def train_models(out: Path, experiment: str, trajectories: Sequence[Path], overrides: list[str]
                 ) -> tuple[dict[str, Path], dict[str, float]]:
    """tcbm and the frame-based cVAE (:data:`tcbm.demo.MODELS`) trained with ``experiment`` into
    ``out/history<k>``; returns the artefacts by label and their training wall times and steps."""
    paths, timings = {}, {}
    for label, history in MODELS.items():
        paths[label] = train_model(out / f"history{history}", experiment, history, trajectories, overrides)
        metadata = BackmapModel.load(paths[label]).metadata
        timings[f"train_wall_s[{label}]"] = metadata["train_wall_s"]
        timings[f"train_steps[{label}]"] = metadata["steps"]
    return paths, timings


def results_page(title: str, data: str, metrics: dict, targets: list[str], timings: dict[str, float],
                 device: str, notes: Sequence[str] = ()) -> str:
    """``results.md``: the command that made it, the machine, the data, the score table, the targets
    (markdown rows ``| target | tcbm | status |``), timings and figures."""
    command = "python " + " ".join(sys.argv)
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, " \
              f"device {device}"
    lines = [f"# {title}", "", f"Command: `{command}`  ", f"Machine: {machine}  ", f"Data: {data}", "",
             "## Scores against the held-out reference", "", metrics_table(metrics), "", *notes,
             "## Targets (tcbm)", "", "| target | tcbm | status |", "|---|---|---|", *targets, "",
             "## Timings", "", "| quantity | value |", "|---|---|", *[f"| {k} | {v:.4g} |" for k, v in timings.items()],
             "", "## Figures", "", *[f"![{name}]({name}.png)" for name in FIGURES]]
    return "\n".join(lines) + "\n"


def target_row(name: str, met: bool, value: str) -> str:
    return f"| {name} | {value} | {'met' if met else 'not met'} |"
