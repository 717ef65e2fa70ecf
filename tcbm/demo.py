"""``tcbm demo``: the whole pipeline on alanine dipeptide, from nothing to a report.

Stages (each reused when its output exists, unless ``force=true``): simulate training and held-out
trajectories; train tcbm (``history: 1``) and the frame-based ablation (``history: 0``); backmap the
held-out CG trajectory with both; evaluate them and the nearest-neighbour library baseline against
the held-out reference.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import mdtraj as md
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from tcbm.analysis.baselines import NearestNeighbourBackmapper
from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
from tcbm.artifact import BackmapModel
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.simulate import simulate
from tcbm.systems import load_system
from tcbm.training import train

MODELS = {"tcbm": 1, "frame-based cVAE": 0}  # label -> history


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def _train_model(out: Path, history: int, trajectory: Path, overrides: list[str], force: bool) -> Path:
    artefact = out / "model.pt"
    if artefact.exists() and not force:
        print(f"reusing {artefact}")
        return artefact
    cfg = compose("train", overrides=["experiment=adp_quick", f"data.trajectories={trajectory}",
                                      f"model.network.history={history}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.out = str(out)
    return train(cfg)


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
    train_xtc = simulate(system, data, "train", length_ps=cfg.simulate.train_ps, seed=cfg.simulate.train_seed)
    test_xtc = simulate(system, data, "test", length_ps=cfg.simulate.test_ps, seed=cfg.simulate.test_seed)
    timings["simulate_s"] = time.perf_counter() - started

    _stage("2/4 train tcbm and the frame-based ablation")
    overrides = list(cfg.train_overrides) + [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"]
    models = {}
    for label, history in MODELS.items():
        started = time.perf_counter()
        models[label] = _train_model(out / f"model_history{history}", history, train_xtc, overrides, cfg.force)
        timings[f"train_{label}_s"] = time.perf_counter() - started

    _stage("3/4 backmap the held-out CG trajectory autoregressively")
    reference = md.load(str(test_xtc), top=str(data / "test.pdb"))
    datasets = {}
    for label, path in models.items():
        model = BackmapModel.load(path)
        settings = RolloutSettings(samples=cfg.backmap.samples, seed=cfg.backmap.seed)
        started = time.perf_counter()
        result = backmap_paths(model, [test_xtc], out / "backmapped" / label.replace(" ", "_"), settings,
                               input_is_aa=True, device=device)[0]
        timings[f"backmap_{label}_frames_per_s"] = reference.n_frames / (time.perf_counter() - started)
        datasets[label] = md.load(str(result), top=str(data / "test.pdb"))
    library = BackmapModel.load(models["tcbm"]).library
    nn_xyz = NearestNeighbourBackmapper(library.cg, library.aa).backmap(system.mapping(reference.xyz))
    datasets["nearest-neighbour"] = md.Trajectory(nn_xyz, reference.topology, time=reference.time)

    _stage("4/4 evaluate against the held-out reference")
    settings = EvaluationSettings(**OmegaConf.to_container(cfg.settings, resolve=True))
    evaluation = Evaluation(settings).fit(reference, datasets, system)
    evaluation.metrics["timings"] = timings
    report = evaluation.write(out / "report")
    (out / "report" / "timings.json").write_text(json.dumps(timings, indent=1))
    return report
