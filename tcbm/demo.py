"""``tcbm demo``: the whole pipeline on alanine dipeptide, from nothing to a report.

Stages (each reused when its output exists and was made the same way — same settings, same inputs —
unless ``force=true``): simulate training and held-out trajectories; train tcbm (``history: 1``) and the
frame-based ablation (``history: 0``) — simulations and trainings ``workers`` at a time on a CPU; backmap the
held-out CG trajectory with both (and, labelled as such, with tcbm plus the optional physics refinement);
evaluate them and the nearest-neighbour library baseline against the held-out reference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
from tcbm.backmap import RolloutSettings
from tcbm.pipeline import backmap_with_baseline, simulate_runs, train_models
from tcbm.refine import RefinementSettings
from tcbm.simulate import simulate
from tcbm.systems import load_system


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def run_demo(cfg: DictConfig) -> Path:
    """Run every stage into ``cfg.out``; returns the path of ``report/report.md``."""
    out = Path(cfg.out)
    if cfg.force and out.exists():
        shutil.rmtree(out)
    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    system = load_system("adp")
    timings = {}

    _stage("1/4 simulate alanine dipeptide (OpenMM, OBC implicit solvent, 300 K, 1 ps frames)")
    started = time.perf_counter()
    data = out / "data"
    train_ps = list(cfg.simulate.train_ps)
    if cfg.simulate.train_seed <= cfg.simulate.test_seed < cfg.simulate.train_seed + len(train_ps):
        raise ValueError(f"simulate.test_seed={cfg.simulate.test_seed} is also the seed of a training run "
                         f"(train_seed {cfg.simulate.train_seed} + run index): the held-out run would not be "
                         "independent")
    train_xtcs = simulate_runs(system, data, "train", train_ps, cfg.simulate.train_seed, workers=cfg.workers)
    test_xtc = simulate(system, data, "test", length_ps=cfg.simulate.test_ps, seed=cfg.simulate.test_seed)
    timings["simulate_s"] = time.perf_counter() - started

    _stage("2/4 train tcbm and the frame-based ablation")
    overrides = list(cfg.train_overrides) + (list(cfg.gpu_train_overrides) if device == "cuda" else []) + \
        [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"]
    models, train_timings = train_models(out, "adp_quick", train_xtcs, overrides, cfg.workers, cfg.force,
                                         folder="model_history{history}")
    timings.update(train_timings)

    _stage("3/4 backmap the held-out CG trajectory autoregressively")
    settings = RolloutSettings(samples=cfg.backmap.samples, seed=cfg.backmap.seed,
                               refinement=RefinementSettings(steps=cfg.backmap.refine_steps))
    reference, datasets, backmap_timings = backmap_with_baseline(models, [test_xtc], data / "test.pdb", out, settings,
                                                                 device, refine="tcbm")
    timings.update(backmap_timings)

    _stage("4/4 evaluate against the held-out reference")
    settings = EvaluationSettings(**OmegaConf.to_container(cfg.settings, resolve=True))
    evaluation = Evaluation(settings).fit(reference, datasets, system)
    evaluation.metrics["timings"] = timings
    report = evaluation.write(out / "report")
    (out / "report" / "timings.json").write_text(json.dumps(timings, indent=1))
    return report
