"""``tcbm demo``: the whole pipeline on alanine dipeptide, from nothing to a report.

Stages (each reused when its output exists and was made the same way — same settings, same inputs —
unless ``force=true``): simulate training and held-out
trajectories; train tcbm (``history: 1``) and the frame-based ablation (``history: 0``); backmap the
held-out CG trajectory with both (and, labelled as such, with tcbm plus the optional physics refinement);
evaluate them and the nearest-neighbour library baseline against the held-out reference.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import mdtraj as md
import numpy as np
import torch
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from tcbm.analysis.baselines import NearestNeighbourBackmapper
from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
from tcbm.artifact import BackmapModel
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.fingerprint import differences
from tcbm.refine import RefinementSettings
from tcbm.simulate import simulate
from tcbm.systems import load_system
from tcbm.training import train, training_fingerprint

MODELS = {"tcbm": 1, "frame-based cVAE": 0}  # label -> history


def _stage(name: str) -> None:
    print(f"\n=== {name} ===", flush=True)


def train_model(out: Path, experiment: str, history: int, trajectories: Path | Sequence[Path], overrides: list[str],
                force: bool = False) -> Path:
    """Train ``out/model.pt`` with ``tcbm train experiment=<experiment>`` on one or several trajectories, or
    reuse it when it was trained with the same config and data (its fingerprint); otherwise ``out`` is
    trained afresh."""
    artefact = out / "model.pt"
    listed = [trajectories] if isinstance(trajectories, (str, Path)) else list(trajectories)
    data = str(listed[0]) if len(listed) == 1 else "[" + ",".join(str(p) for p in listed) + "]"
    cfg = compose("train", overrides=[f"experiment={experiment}", f"data.trajectories={data}",
                                      f"model.network.history={history}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.out = str(out)
    if artefact.exists() and not force:
        why = differences(BackmapModel.load(artefact).metadata.get("fingerprint"), training_fingerprint(cfg))
        if not why:
            print(f"reusing {artefact}")
            return artefact
        print(f"retraining {artefact}: {'; '.join(why)}")
    if out.exists():
        shutil.rmtree(out)  # no checkpoints or logs of another training left behind
    return train(cfg)


def refined_label(label: str, refinement: RefinementSettings) -> str:
    """How a refined data set is labelled in reports: never mistaken for the model's own output."""
    return f"{label} + refinement ({refinement.steps} steps)"


def backmap_with_baseline(model_paths: dict[str, Path], test_xtcs: Sequence[Path], topology: Path, out: Path,
                          settings: RolloutSettings, device: str, refine: str | None = None
                          ) -> tuple[list[md.Trajectory], dict[str, list[md.Trajectory]], dict[str, float]]:
    """Backmap the all-atom held-out runs ``test_xtcs`` (mapped to CG first) with every model into
    ``out/backmapped_<model folder>``, and with the nearest-neighbour baseline built from the first
    model's library.  With ``settings.refinement.steps`` > 0 the model labelled ``refine`` is backmapped
    once more with the physics refinement (``out/backmapped_<model folder>_refined<steps>``), as a data set
    of its own (:func:`refined_label`); the others are never refined.  Returns the reference runs, the data
    sets by label (one trajectory per run), and frames/s and CG-consistency RMSD (nm, mean over runs) per
    label, as measured when each was backmapped."""
    reference = [md.load(str(path), top=str(topology)) for path in test_xtcs]
    plain = replace(settings, refinement=RefinementSettings())
    runs = [(label, path, plain, f"backmapped_{path.parent.name}") for label, path in model_paths.items()]
    if settings.refinement.steps and refine in model_paths:
        runs.append((refined_label(refine, settings.refinement), model_paths[refine], settings,
                     f"backmapped_{model_paths[refine].parent.name}_refined{settings.refinement.steps}"))
    models = {path: BackmapModel.load(path) for path in model_paths.values()}  # each file read once
    datasets, timings = {}, {}
    for label, path, run_settings, folder in runs:
        results = backmap_paths(models[path], list(test_xtcs), out / folder, run_settings, input_is_aa=True,
                                device=device)
        summaries = [json.loads(result.with_suffix(".json").read_text()) for result in results]
        timings[f"backmap_frames_per_s[{label}]"] = summaries[0]["group_frames_per_s"]
        timings[f"cg_rmsd_nm[{label}]"] = float(np.mean([s["cg_rmsd_nm"] for s in summaries]))
        datasets[label] = [md.load(str(result), top=str(topology)) for result in results]
    first = models[next(iter(model_paths.values()))]
    baseline = NearestNeighbourBackmapper(first.library.cg, first.library.aa)
    started = time.perf_counter()
    datasets["nearest-neighbour"] = [md.Trajectory(baseline.backmap(first.system.mapping(r.xyz)), r.topology,
                                                   time=r.time) for r in reference]
    frames = sum(r.n_frames for r in reference)
    timings["backmap_frames_per_s[nearest-neighbour]"] = frames / (time.perf_counter() - started)
    return reference, datasets, timings


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
    overrides = list(cfg.train_overrides) + (list(cfg.gpu_train_overrides) if device == "cuda" else []) + \
        [f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}"]
    models = {}
    for label, history in MODELS.items():
        started = time.perf_counter()
        models[label] = train_model(out / f"model_history{history}", "adp_quick", history, train_xtc, overrides,
                                    cfg.force)
        timings[f"train_{label}_s"] = time.perf_counter() - started

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
