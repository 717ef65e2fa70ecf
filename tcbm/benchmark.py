"""The committed results page of the quality benchmarks (``scripts/benchmark_adp.py``,
``scripts/benchmark_cln.py``); their stages are in :mod:`tcbm.pipeline`."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
from collections.abc import Callable, Sequence

import torch

from tcbm.analysis.report import metrics_table
from tcbm.analysis.uncertainty import PairedBlockBootstrap, difference_interval

FIGURES = ("energy", "velocity", "fes", "timescales", "eigenvector_similarity", "bond_lengths")


def add_model_row_arguments(parser: argparse.ArgumentParser, temperature_K: float) -> None:
    """A benchmark's options for rows of its own: ``--variant`` (more tcbm models, each with its train
    overrides), ``--rollout-variant`` (a model backmapped once more with other rollout settings) and
    ``--refine-steps`` / ``--refine-minimize-steps`` (tcbm + the physics refinement at ``temperature_K``)."""
    parser.add_argument("--variant", action="append", default=[],
                        help="'label=override override ...': one more tcbm model trained with these train overrides "
                             "on the same data and evaluated as its own row (an A/B at the benchmark's scale)")
    parser.add_argument("--rollout-variant", action="append", default=[],
                        help="'label=model label:setting=value ...': that model (e.g. tcbm) backmapped once more with "
                             "these tcbm.backmap.RolloutSettings (e.g. keep_stereo=false), as its own row (same weights)")
    parser.add_argument("--refine-steps", type=int, default=0,
                        help=f"also evaluate tcbm + the physics refinement with this many Langevin steps at "
                             f"{temperature_K:g} K (tcbm.refine), as its own row (0: no)")
    parser.add_argument("--refine-minimize-steps", type=int, default=0,
                        help="FIRE minimisation steps before the refinement's dynamics (for frames with overlapping "
                             "atoms; 0: none)")


def command_line() -> str:
    """The command that runs this process, quoted so that it can be pasted into a shell as it is."""
    return "python " + shlex.join(sys.argv)


def results_page(title: str, data: str, metrics: dict, targets: list[str], timings: dict[str, float],
                 device: str, notes: Sequence[str] = ()) -> str:
    """``results.md``: the command that made it, the machine, the data, the score table, the targets
    (markdown rows ``| target | tcbm | status |``), timings and figures."""
    command = command_line()
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


def compared(errors: Callable[[dict, str], dict[str, float]], metrics: dict, bootstrap: PairedBlockBootstrap | None,
             first: str, second: str) -> tuple[list[str], list[str]]:
    """Data set ``first`` against ``second`` on every measure of ``errors(metrics, name)`` (distances to the
    reference, smaller is closer): one text per measure with both values and, given the evaluation's
    ``bootstrap``, the 95 % interval of the difference (first − second; :mod:`tcbm.analysis.uncertainty`), and
    the measures on which ``first`` is not closer (ties count against it), each marked resolved (interval
    above zero) or within the held-out scatter."""
    ours, theirs = errors(metrics, first), errors(metrics, second)
    texts, worse = [], []
    for key in ours:
        interval = None if bootstrap is None else difference_interval(
            bootstrap, lambda scores, name, key=key: errors({"datasets": scores}, name)[key], first, second)
        texts.append(f"{key} {ours[key]:.4g} vs {theirs[key]:.4g}"
                     + ("" if interval is None else f" (difference [{interval[0]:+.2g}, {interval[1]:+.2g}])"))
        if not ours[key] < theirs[key]:
            scatter = "" if interval is None else (" (resolved)" if interval[0] > 0 else " (within the scatter)")
            worse.append(key + scatter)
    return texts, worse
