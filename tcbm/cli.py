"""Command-line entry point: ``tcbm <command> [hydra overrides]``.

Commands: simulate, train, backmap, evaluate, demo.  Each is a Hydra app whose config lives in
``conf/<command>.yaml`` (``conf/inference/backmap.yaml`` for backmap); ``tcbm <command> --help`` shows it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_PATH = "pkg://tcbm.conf"
#: commands whose config lives in a sub-package (so their keys may share names with config groups)
CONFIG_PATHS = {"backmap": "pkg://tcbm.conf.inference"}
COMMANDS = ("simulate", "train", "backmap", "evaluate", "demo")


def _system(cfg: DictConfig):
    from tcbm.systems import load_system

    return load_system(OmegaConf.to_container(cfg.system, resolve=True))


def run_simulate(cfg: DictConfig) -> None:
    from tcbm.simulate import SimulationConfig, simulate

    plain = OmegaConf.to_container(cfg, resolve=True)
    settings = {k: plain[k] for k in SimulationConfig.__dataclass_fields__}
    path = simulate(_system(cfg), cfg.out, name=cfg.name, progress=cfg.progress, **settings)
    print(f"trajectory: {path}")


def run_train(cfg: DictConfig) -> None:
    from tcbm.training import train

    artefact = train(cfg)
    if artefact is not None:
        print(f"model artefact: {artefact}")


def run_backmap(cfg: DictConfig) -> None:
    from tcbm.backmap import backmap_files

    for path in backmap_files(cfg):
        print(f"backmapped: {path}")


def run_evaluate(cfg: DictConfig) -> None:
    from tcbm.analysis.report import evaluate_from_config

    out = evaluate_from_config(cfg)
    print(f"report: {out}")


def run_demo(cfg: DictConfig) -> None:
    from tcbm.demo import run_demo as demo

    print(f"report: {demo(cfg)}")


#: errors caused by the user's input or settings: reported in one line, without a traceback
USER_ERRORS = (ValueError, FileNotFoundError, KeyError)


def _reporting_user_errors(runner, prog: str):
    """Wrap a command so that a user error prints ``<prog>: error: <message>`` on stderr and exits
    with status 1; ``HYDRA_FULL_ERROR=1`` shows the full traceback instead."""

    def run(cfg: DictConfig) -> None:
        try:
            runner(cfg)
        except USER_ERRORS as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            message = err.args[0] if isinstance(err, KeyError) and err.args else err
            print(f"{prog}: error: {message}", file=sys.stderr)
            _remove_run_dir()
            raise SystemExit(1) from None

    return run


def _remove_run_dir() -> None:
    """Delete the Hydra log folder of a run that failed on bad input, and its parents that are left empty
    (up to the working directory), so that a rejected command leaves nothing behind."""
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
    cwd = Path.cwd().resolve()
    if cwd not in run_dir.parents:
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    for parent in run_dir.parents:
        if parent == cwd or any(parent.iterdir()):
            break
        parent.rmdir()


RUNNERS = {
    "simulate": run_simulate,
    "train": run_train,
    "backmap": run_backmap,
    "evaluate": run_evaluate,
    "demo": run_demo,
}


#: names the command for processes that Lightning's DDP launcher starts again with ``sys.argv``
COMMAND_ENV = "TCBM_COMMAND"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        command = argv.pop(0)
    elif os.environ.get(COMMAND_ENV) in COMMANDS:  # a DDP worker: `python <this file> <overrides>`
        command = os.environ[COMMAND_ENV]
    else:
        print(f"usage: tcbm {{{','.join(COMMANDS)}}} [key=value ...]\n"
              "  units: nm, ps, kJ/mol, K; `tcbm <command> --help` lists every setting", file=sys.stderr)
        raise SystemExit(2)
    os.environ[COMMAND_ENV] = command
    app = hydra.main(version_base="1.3", config_path=CONFIG_PATHS.get(command, CONFIG_PATH), config_name=command)(
        _reporting_user_errors(RUNNERS[command], f"tcbm {command}"))
    sys.argv = [os.path.abspath(__file__), *argv]  # Hydra reads the overrides, DDP workers rerun this file
    app()


if __name__ == "__main__":
    main()
