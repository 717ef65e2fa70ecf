"""Training-data generation: Langevin dynamics with OpenMM, written in resumable chunks.

Units: nm, ps, K, kJ/mol.  A run writes ``<out>/<name>.pdb`` (topology) and, when complete,
``<out>/<name>.xtc`` plus ``<out>/<name>_energies.csv`` (time in ps, potential energy in kJ/mol) and
``<out>/<name>_settings.json``; rerunning with the same settings reuses the finished trajectory.
While running, finished chunks and an OpenMM checkpoint live in ``<out>/<name>.chunks/``; rerunning the
same command after an interruption continues from the last finished chunk.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import mdtraj as md
import numpy as np
import openmm
import openmm.unit as u
from tqdm.auto import tqdm

from tcbm.io import atomic_path
from tcbm.systems import MolecularSystem

#: Below this many atoms OpenMM's single-threaded Reference platform beats the CPU platform
#: (measured on a 2-core machine, OBC: alanine dipeptide 36,800 vs 1,350 steps/s; chignolin 900 vs 1,000).
REFERENCE_PLATFORM_MAX_ATOMS = 100
#: force constant (kJ/mol/rad²) of the start restraints, and the name of its global parameter
START_RESTRAINT_KJ_PER_RAD2 = 1000.0
RESTRAINT_K = "k_start_restraint"


@dataclass
class SimulationConfig:
    """Langevin-dynamics settings (ps, K, 1/ps)."""

    length_ps: float = 100.0
    save_interval_ps: float = 1.0
    timestep_ps: float = 0.002
    temperature_K: float = 300.0
    friction_per_ps: float = 1.0
    equilibration_ps: float = 10.0
    implicit_solvent: str | None = "obc"
    constrain_hbonds: bool = True
    seed: int = 0
    platform: str = "auto"
    chunk_frames: int = 1000
    #: dihedral restraints held during minimisation and equilibration only, to start in a chosen region:
    #: ``[{"atoms": [i, j, k, l], "angle_deg": 60.0}, ...]`` (e.g. alanine dipeptide's φ = 4-6-8-14 at +60°
    #: and ψ = 6-8-14-16 at +40° start it in αL); released before the first saved frame
    start_restraints: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        for restraint in self.start_restraints:
            if set(restraint) != {"atoms", "angle_deg"} or len(restraint["atoms"]) != 4:
                raise ValueError(f"start_restraints entries need 'atoms' (4 indices) and 'angle_deg', got {restraint}")
        for key in ("length_ps", "save_interval_ps", "timestep_ps", "temperature_K", "chunk_frames"):
            if getattr(self, key) <= 0:
                raise ValueError(f"simulation setting {key} must be positive, got {getattr(self, key)}")
        if self.friction_per_ps < 0 or self.equilibration_ps < 0:
            raise ValueError("friction_per_ps and equilibration_ps must be non-negative")
        if self.steps_per_frame < 1:
            raise ValueError(f"save_interval_ps={self.save_interval_ps} is shorter than timestep_ps={self.timestep_ps}")

    @property
    def steps_per_frame(self) -> int:
        return int(round(self.save_interval_ps / self.timestep_ps))

    @property
    def n_frames(self) -> int:
        return int(round(self.length_ps / self.save_interval_ps))


def choose_platform(name: str, n_atoms: int) -> openmm.Platform:
    """The named OpenMM platform, or for ``'auto'`` the fastest for this size: CUDA if present,
    else Reference for small molecules and CPU for larger ones."""
    available = {openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())}
    if name == "auto":
        if "CUDA" in available:
            name = "CUDA"
        else:
            name = "Reference" if n_atoms <= REFERENCE_PLATFORM_MAX_ATOMS else "CPU"
    if name not in available:
        raise ValueError(f"OpenMM platform {name!r} is not available; available: {sorted(available)}")
    return openmm.Platform.getPlatformByName(name)


class Simulation:
    """One resumable Langevin run of a :class:`MolecularSystem` into ``out_dir``."""

    def __init__(self, system: MolecularSystem, config: SimulationConfig, out_dir: str | Path, name: str = "traj"):
        self.system, self.config, self.name = system, config, name
        self.out_dir = Path(out_dir)
        self.trajectory_path = self.out_dir / f"{name}.xtc"
        self.topology_path = self.out_dir / f"{name}.pdb"
        self.energies_path = self.out_dir / f"{name}_energies.csv"
        self.chunk_dir = self.out_dir / f"{name}.chunks"
        self.settings_path = self.out_dir / f"{name}_settings.json"

    def _context(self) -> tuple[openmm.Context, openmm.Integrator]:
        cfg = self.config
        omm_system = self.system.openmm_system(cfg.implicit_solvent, cfg.constrain_hbonds)
        if cfg.start_restraints:  # switched off (k = 0) once equilibrated, see run()
            restraint = openmm.CustomTorsionForce(
                f"0.5*{RESTRAINT_K}*min(d, 2*pi-d)^2; d = abs(theta - theta0); pi = {np.pi}")
            restraint.addGlobalParameter(RESTRAINT_K, START_RESTRAINT_KJ_PER_RAD2)
            restraint.addPerTorsionParameter("theta0")
            for r in cfg.start_restraints:
                restraint.addTorsion(*[int(a) for a in r["atoms"]], [np.deg2rad(float(r["angle_deg"]))])
            omm_system.addForce(restraint)
        integrator = openmm.LangevinMiddleIntegrator(
            cfg.temperature_K * u.kelvin, cfg.friction_per_ps / u.picosecond, cfg.timestep_ps * u.picosecond
        )
        integrator.setRandomNumberSeed(cfg.seed + 1)
        context = openmm.Context(omm_system, integrator, choose_platform(cfg.platform, self.system.n_atoms))
        return context, integrator

    def _settings_file(self) -> Path:
        return self.chunk_dir / "settings.json"

    def _settings(self) -> dict:
        return {"system": self.system.name, "n_atoms": self.system.n_atoms, **asdict(self.config)}

    def _finished_chunks(self) -> int:
        settings = self._settings()
        if not self.chunk_dir.exists():
            self.chunk_dir.mkdir(parents=True)
            self._settings_file().write_text(json.dumps(settings, indent=1))
            return 0
        stored = json.loads(self._settings_file().read_text()) if self._settings_file().exists() else None
        if stored != settings:
            raise ValueError(
                f"{self.chunk_dir} holds a run with other settings ({stored}); delete it or use another name/out"
            )
        chunks = sorted(self.chunk_dir.glob("chunk_*.xtc"))
        if not chunks or not (self.chunk_dir / "checkpoint.xml").exists():
            return 0
        return len(chunks)

    def run(self, progress: bool = True, position: int = 0) -> Path:
        """Run (or continue) the simulation; return the path of the finished trajectory.  ``position``: the
        line of the progress bar (for runs side by side)."""
        if self.trajectory_path.exists():
            stored = json.loads(self.settings_path.read_text()) if self.settings_path.exists() else None
            if stored != self._settings():
                raise ValueError(f"{self.trajectory_path} exists but was made with other settings ({stored}); "
                                 "delete it or choose another name/out")
            return self.trajectory_path
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.topology_path) as tmp:
            self.system.reference_trajectory().save_pdb(str(tmp))
        done = self._finished_chunks()
        context, integrator = self._context()
        if done:
            state = openmm.XmlSerializer.deserialize((self.chunk_dir / "checkpoint.xml").read_text())
            context.setState(state)
        else:
            context.setPositions(self.system.reference_xyz * u.nanometer)
            openmm.LocalEnergyMinimizer.minimize(context, 10.0, 1000)
            context.setVelocitiesToTemperature(cfg.temperature_K * u.kelvin, cfg.seed + 1)
            integrator.step(int(round(cfg.equilibration_ps / cfg.timestep_ps)))
        if cfg.start_restraints:
            context.setParameter(RESTRAINT_K, 0.0)  # production runs free
        n_chunks = -(-cfg.n_frames // cfg.chunk_frames)
        bar = tqdm(total=cfg.n_frames, initial=min(done * cfg.chunk_frames, cfg.n_frames), unit="frame",
                   desc=f"simulate {self.name}", disable=not progress, position=position)
        for chunk in range(done, n_chunks):
            n = min(cfg.chunk_frames, cfg.n_frames - chunk * cfg.chunk_frames)
            xyz = np.empty((n, self.system.n_atoms, 3), dtype=np.float32)
            energies = np.empty(n)
            for frame in range(n):
                integrator.step(cfg.steps_per_frame)
                state = context.getState(getPositions=True, getEnergy=True)
                xyz[frame] = state.getPositions(asNumpy=True).value_in_unit(u.nanometer)
                energies[frame] = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole)
                bar.update()
            if not np.isfinite(energies).all():
                raise RuntimeError(f"simulation {self.name} blew up in chunk {chunk}; lower timestep_ps")
            start = chunk * cfg.chunk_frames
            time = (start + 1 + np.arange(n)) * cfg.save_interval_ps
            with atomic_path(self.chunk_dir / f"chunk_{chunk:05d}.npy") as tmp:
                np.save(tmp, np.column_stack([time, energies]))
            with atomic_path(self.chunk_dir / f"chunk_{chunk:05d}.xtc") as tmp:
                md.Trajectory(xyz, self.system.topology, time=time).save_xtc(str(tmp))
            with atomic_path(self.chunk_dir / "checkpoint.xml") as tmp:
                tmp.write_text(openmm.XmlSerializer.serialize(context.getState(getPositions=True, getVelocities=True)))
        bar.close()
        self._join(n_chunks)
        return self.trajectory_path

    def _join(self, n_chunks: int) -> None:
        chunks = [self.chunk_dir / f"chunk_{c:05d}.xtc" for c in range(n_chunks)]
        traj = md.join([md.load(str(c), top=self.system.topology) for c in chunks], check_topology=False)
        energies = np.concatenate([np.load(c.with_suffix(".npy")) for c in chunks])
        with atomic_path(self.energies_path) as tmp:
            np.savetxt(tmp, energies, delimiter=",", header="time_ps,potential_energy_kJ_per_mol", comments="")
        with atomic_path(self.settings_path) as tmp:
            tmp.write_text(json.dumps(self._settings(), indent=1))
        with atomic_path(self.trajectory_path) as tmp:
            traj.save_xtc(str(tmp))
        shutil.rmtree(self.chunk_dir)


def simulate(system: MolecularSystem, out_dir: str | Path, name: str = "traj", progress: bool = True,
             position: int = 0, **settings) -> Path:
    """Run a Langevin simulation of ``system`` (settings as in :class:`SimulationConfig`); returns the
    path of the xtc trajectory (topology next to it as ``<name>.pdb``).  ``position``: the line of the
    progress bar."""
    return Simulation(system, SimulationConfig(**settings), out_dir, name).run(progress, position)
