"""Pipeline stages shared by ``tcbm demo`` and the quality benchmarks (``scripts/benchmark_*.py``,
``scripts/ab_rollout.py``): seeded simulations (cached), tcbm and the frame-based cVAE trained (reused when
their fingerprint matches), and held-out runs backmapped with every model and the nearest-neighbour
baseline alongside."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import mdtraj as md
import numpy as np
from hydra import compose
from omegaconf import DictConfig, OmegaConf

from tcbm.analysis.baselines import NearestNeighbourBackmapper
from tcbm.artifact import BackmapModel
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.fingerprint import differences
from tcbm.processes import run_in_processes
from tcbm.refine import RefinementSettings
from tcbm.simulate import simulate
from tcbm.systems import MolecularSystem
from tcbm.training import train, training_fingerprint

MODELS = {"tcbm": 1, "frame-based cVAE": 0}  # label -> history


def training_config(out: Path, experiment: str, history: int, trajectories: Path | Sequence[Path],
                     overrides: list[str]) -> DictConfig:
    """``tcbm train experiment=<experiment>`` on the trajectories, into ``out``, resolved (picklable)."""
    listed = [trajectories] if isinstance(trajectories, (str, Path)) else list(trajectories)
    data = str(listed[0]) if len(listed) == 1 else "[" + ",".join(str(p) for p in listed) + "]"
    cfg = compose("train", overrides=[f"experiment={experiment}", f"data.trajectories={data}",
                                      f"model.network.history={history}", *overrides])
    OmegaConf.set_struct(cfg, False)
    cfg.out = str(out)
    OmegaConf.resolve(cfg)
    return cfg


def _needs_training(cfg: DictConfig, force: bool) -> bool:
    """False when ``<cfg.out>/model.pt`` was trained with the same config and data (its fingerprint)."""
    artefact = Path(cfg.out) / "model.pt"
    if not artefact.exists() or force:
        return True
    why = differences(BackmapModel.load(artefact).metadata.get("fingerprint"), training_fingerprint(cfg))
    print(f"retraining {artefact}: {'; '.join(why)}" if why else f"reusing {artefact}", flush=True)
    return bool(why)


def _train_afresh(cfg: DictConfig, position: int = 0) -> Path:
    out = Path(cfg.out)
    if out.exists():
        shutil.rmtree(out)  # no checkpoints or logs of another training left behind
    return train(cfg, progress_position=position)


def train_configs(configs: Sequence[DictConfig], workers: int = 1, force: bool = False) -> list[Path]:
    """``<cfg.out>/model.pt`` for every training config (:func:`training_config`), ``workers`` trainings at
    a time on the CPU (:func:`run_in_processes`; trainings on an accelerator run one after the other); one
    already trained with the same config and data (its fingerprint) is reused unless ``force``, otherwise its
    folder is trained afresh."""
    pending = [dict(cfg=cfg) for cfg in configs if _needs_training(cfg, force)]
    on_cpu = all(call["cfg"].trainer.accelerator == "cpu" for call in pending)
    run_in_processes(_train_afresh, pending, workers if on_cpu else 1)
    return [Path(cfg.out) / "model.pt" for cfg in configs]


def train_model(out: Path, experiment: str, history: int, trajectories: Path | Sequence[Path], overrides: list[str],
                force: bool = False) -> Path:
    """``out/model.pt`` trained with ``tcbm train experiment=<experiment>`` on one or several trajectories
    (or reused, see :func:`train_configs`)."""
    return train_configs([training_config(out, experiment, history, trajectories, overrides)], force=force)[0]


def refined_label(label: str, refinement: RefinementSettings) -> str:
    """How a refined data set is labelled in reports: never mistaken for the model's own output."""
    minimisation = f"{refinement.minimize_steps} minimisation + " if refinement.minimize_steps else ""
    return f"{label} + refinement ({minimisation}{refinement.steps} MD steps)"


def backmap_with_baseline(model_paths: dict[str, Path], test_xtcs: Sequence[Path], topology: Path, out: Path,
                          settings: RolloutSettings, device: str, refine: str | None = None,
                          rollout_variants: Sequence[tuple[str, str, dict]] = ()
                          ) -> tuple[list[md.Trajectory], dict[str, list[md.Trajectory]], dict[str, float]]:
    """Backmap the all-atom held-out runs ``test_xtcs`` (mapped to CG first) with every model into
    ``out/backmapped_<model folder>``, and with the nearest-neighbour baseline built from the first
    model's library.  With ``settings.refinement.steps`` > 0 the model labelled ``refine`` is backmapped
    once more with the physics refinement (``out/backmapped_<model folder>_refined<steps>``), as a data set
    of its own (:func:`refined_label`); the others are never refined.  Each ``rollout_variants`` entry (label,
    model label, :class:`RolloutSettings` fields to change; :func:`parse_rollout_variant`) backmaps that model
    once more with those settings into ``out/backmapped_<model folder>_<variant folder>`` (same weights: an A/B
    of a rollout option).  Returns the reference runs, the data sets by label (one trajectory per run), and
    frames/s and CG-consistency RMSD (nm, mean over runs) per label, as measured when each was backmapped."""
    reference = [md.load(str(path), top=str(topology)) for path in test_xtcs]
    plain = replace(settings, refinement=RefinementSettings())
    runs = [(label, path, plain, f"backmapped_{path.parent.name}") for label, path in model_paths.items()]
    if settings.refinement.steps and refine in model_paths:
        runs.append((refined_label(refine, settings.refinement), model_paths[refine], settings,
                     f"backmapped_{model_paths[refine].parent.name}_refined{settings.refinement.steps}"))
    for label, model, changes in rollout_variants:
        if model not in model_paths or label in model_paths:
            raise ValueError(f"rollout variant {label!r}: needs one of the models {sorted(model_paths)} and a label "
                             f"of its own, got model {model!r}")
        runs.append((label, model_paths[model], replace(plain, **changes),
                     f"backmapped_{model_paths[model].parent.name}_{variant_folder(label)}"))
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


def simulate_runs(system: MolecularSystem, data: Path, name: str, lengths_ps: Sequence[float], seed: int,
                  restraints: Sequence[list[dict]] | None = None, workers: int = 1, **settings) -> list[Path]:
    """Independent runs ``<name>_<k>`` of ``lengths_ps[k]`` ps (seed ``seed + k``; start restraints
    ``restraints[k]`` if given), ``workers`` at a time (:func:`run_in_processes`), cached in ``data``: a run
    already there with the same settings is reused."""
    calls = [dict(system=system, out_dir=data, name=f"{name}_{k}", length_ps=length, seed=seed + k,
                  start_restraints=list(restraints[k]) if restraints else [], **settings)
             for k, length in enumerate(lengths_ps)]
    return run_in_processes(simulate, calls, workers)


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``"label=override override ..."`` (split at the first ``=``) into the label and its train overrides."""
    label, _, overrides = spec.partition("=")
    if not label.strip():
        raise ValueError(f"variant {spec!r} has no label: write 'label=override override ...'")
    return label.strip(), overrides.split()


def parse_rollout_variant(spec: str) -> tuple[str, str, dict]:
    """``"label=model label:setting=value ..."`` into the label, the model's label and the
    :class:`RolloutSettings` fields to change (values read as YAML: ``false``, ``0.5``, ...)."""
    label, _, rest = spec.partition("=")
    model, _, assignments = rest.partition(":")
    changes = {}
    for assignment in assignments.split():
        name, _, value = assignment.partition("=")
        if name not in RolloutSettings.__dataclass_fields__ or not value:
            raise ValueError(f"rollout variant {spec!r}: {assignment!r} is not 'setting=value' with a setting of "
                             f"{sorted(RolloutSettings.__dataclass_fields__)}")
        changes[name] = OmegaConf.create(f"value: {value}").value
    if not label.strip() or not model.strip() or not changes:
        raise ValueError(f"rollout variant {spec!r}: write 'label=model label:setting=value ...'")
    return label.strip(), model.strip(), changes


def variant_folder(label: str) -> str:
    """The run folder of a variant's model: its label, file-name safe."""
    return "variant_" + "".join(c if c.isalnum() or c in "-." else "_" for c in label)


def train_models(out: Path, experiment: str, trajectories: Sequence[Path], overrides: list[str], workers: int = 1,
                 force: bool = False, folder: str = "history{history}",
                 variants: dict[str, list[str]] | None = None) -> tuple[dict[str, Path], dict[str, float]]:
    """tcbm and the frame-based cVAE (:data:`MODELS`) trained with ``experiment`` into ``out/<folder>``
    (``{history}`` filled in), and one more tcbm per ``variants`` entry (label -> extra overrides) into
    ``out/<variant_folder(label)>``; ``workers`` at a time on the CPU (:func:`train_configs`; models trained
    before with the same config and data are reused unless ``force``).  Returns the artefacts by label, and the
    wall time of the whole stage, each model's own training wall time and steps."""
    runs = {label: (out / folder.format(history=history), history, overrides) for label, history in MODELS.items()}
    for label, extra in (variants or {}).items():
        if label in runs:
            raise ValueError(f"variant label {label!r} is taken by a model the benchmark always trains")
        runs[label] = (out / variant_folder(label), MODELS["tcbm"], [*overrides, *extra])
    configs = [training_config(run, experiment, history, trajectories, extra) for run, history, extra in runs.values()]
    started = time.perf_counter()
    paths = dict(zip(runs, train_configs(configs, workers, force)))
    timings = {"train_stage_wall_s": time.perf_counter() - started}
    for label, path in paths.items():
        metadata = BackmapModel.load(path).metadata
        timings[f"train_wall_s[{label}]"] = metadata["train_wall_s"]
        timings[f"train_steps[{label}]"] = metadata["steps"]
    return paths, timings
