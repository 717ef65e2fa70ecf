import subprocess
import sys

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm.data import BackmapDataModule, TripleDataset, load_aa_trajectories, split_triples
from tcbm.io import load_trajectory
from tcbm.simulate import Simulation, SimulationConfig, simulate


def test_cli_simulate_writes_loadable_trajectory(tmp_path):
    cmd = [sys.executable, "-m", "tcbm.cli", "simulate", "system=adp", f"out={tmp_path}", "name=short",
           "length_ps=4", "save_interval_ps=0.5", "equilibration_ps=0.2", "progress=false"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=tmp_path)
    traj = md.load(str(tmp_path / "short.xtc"), top=str(tmp_path / "short.pdb"))
    assert traj.n_atoms == 22 and traj.n_frames == 8
    assert [a.name for a in traj.topology.atoms][:2] == ["H1", "CH3"]
    energies = np.loadtxt(tmp_path / "short_energies.csv", delimiter=",", skiprows=1)
    assert energies.shape == (8, 2) and np.isfinite(energies).all()
    assert np.allclose(energies[:, 0], 0.5 * np.arange(1, 9))
    assert not list(tmp_path.glob(".*partial*")) and not (tmp_path / "short.chunks").exists()


def test_interrupted_simulation_continues(tmp_path, adp, monkeypatch):
    config = SimulationConfig(length_ps=6, save_interval_ps=0.5, chunk_frames=4, equilibration_ps=0.1)
    calls = {"n": 0}
    original = md.Trajectory.save_xtc

    def failing_save(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated interruption")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(md.Trajectory, "save_xtc", failing_save)
    with pytest.raises(KeyboardInterrupt):
        Simulation(adp, config, tmp_path, "run").run(progress=False)
    assert sorted(p.name for p in (tmp_path / "run.chunks").glob("chunk_*.xtc")) == ["chunk_00000.xtc", "chunk_00001.xtc"]
    assert not (tmp_path / "run.xtc").exists()
    monkeypatch.setattr(md.Trajectory, "save_xtc", original)
    path = Simulation(adp, config, tmp_path, "run").run(progress=False)
    traj = md.load(str(path), top=str(tmp_path / "run.pdb"))
    assert traj.n_frames == 12 and np.allclose(traj.time, 0.5 * np.arange(1, 13))


def test_finished_run_is_reused_only_with_the_same_settings(tmp_path, adp):
    config = SimulationConfig(length_ps=1, save_interval_ps=0.5, equilibration_ps=0.1)
    path = Simulation(adp, config, tmp_path, "r").run(progress=False)
    stamp = path.stat().st_mtime
    assert Simulation(adp, config, tmp_path, "r").run(progress=False).stat().st_mtime == stamp
    longer = SimulationConfig(length_ps=2, save_interval_ps=0.5, equilibration_ps=0.1)
    with pytest.raises(ValueError, match="exists but was made with other settings"):
        Simulation(adp, longer, tmp_path, "r").run(progress=False)


def test_rerun_with_other_settings_is_refused(tmp_path, adp):
    (tmp_path / "x.chunks").mkdir()
    (tmp_path / "x.chunks" / "settings.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a run with other settings"):
        Simulation(adp, SimulationConfig(length_ps=1), tmp_path, "x").run(progress=False)


def test_atom_count_mismatch_names_both(tmp_path, adp_traj, cln):
    xtc, _ = adp_traj
    cln.reference_trajectory().save_pdb(str(tmp_path / "cln.pdb"))
    with pytest.raises(ValueError, match=r"trajectory .*train.xtc has 22 atoms, topology .*cln.pdb has 138"):
        load_trajectory(xtc, tmp_path / "cln.pdb")


def test_nan_frame_is_named(tmp_path, adp):
    traj = md.Trajectory(np.repeat(adp.reference_xyz[None], 5, 0).astype(np.float32), adp.topology)
    traj.xyz[3, 4, 1] = np.nan
    traj.save_hdf5(str(tmp_path / "bad.h5"))
    with pytest.raises(ValueError, match="bad.h5: frame 3 has non-finite"):
        load_aa_trajectories(str(tmp_path / "bad.h5"), adp)


def test_wrong_system_atoms(adp_traj, cln):
    xtc, pdb = adp_traj
    with pytest.raises(ValueError, match="22 atoms, topology"):
        load_aa_trajectories(str(xtc), cln)


def test_too_short_trajectory(tmp_path, adp):
    md.Trajectory(adp.reference_xyz[None].astype(np.float32), adp.topology).save_hdf5(str(tmp_path / "one.h5"))
    data = load_aa_trajectories(str(tmp_path / "one.h5"), adp)
    with pytest.raises(ValueError, match="1 frames, need at least lag\\*history\\+1 = 2"):
        split_triples(data, lag=1, history=1)


def test_triples_centred_rotated_and_displacement_kept(adp_traj, adp):
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    targets = np.arange(2, 20)
    dataset = TripleDataset(data.xyz, targets, adp.mapping, lag=2, history=1, augment=True)
    batch = dataset.__getitems__(list(range(len(targets))))
    assert torch.allclose(batch["cg"].mean(1), torch.zeros(len(targets), 3), atol=1e-5)
    assert torch.allclose(adp.mapping(batch["aa"]), batch["cg"], atol=1e-5)
    # displacement AA^{t-2} -> AA^t preserved up to the shared rotation: compare lengths
    raw = data.xyz[targets] - data.xyz[targets - 2]
    moved = (batch["aa"] - batch["aa_prev"][:, 0]).numpy()
    assert np.allclose(np.linalg.norm(raw, axis=-1), np.linalg.norm(moved, axis=-1), atol=1e-5)
    again = dataset.__getitems__([0])
    assert not torch.allclose(again["aa"][0], batch["aa"][0], atol=1e-3)  # fresh rotation each draw


def test_block_split_never_shares_frames(adp_traj, adp):
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    train, val = split_triples(data, lag=1, history=2, split="block", val_fraction=0.2, n_blocks=5)
    train_frames = set(np.concatenate([train, train - 1, train - 2]))
    val_frames = set(np.concatenate([val, val - 1, val - 2]))
    assert val.size and train.size and not train_frames & val_frames


def test_trajectory_split_needs_several_trajectories(adp_traj, adp):
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    with pytest.raises(ValueError, match="use split='block'"):
        split_triples(data, 1, 1, split="trajectory", val_fraction=0.2)


def test_grid_too_small_is_reported(adp_traj, adp):
    with pytest.raises(ValueError, match="increase model.grid.r_grid by at least"):
        BackmapDataModule(adp, str(adp_traj[0]), max_radius=0.2)


def test_start_restraints_start_alanine_dipeptide_in_alpha_l_then_release(tmp_path, adp):
    import mdtraj as md

    alpha_l = [{"atoms": [4, 6, 8, 14], "angle_deg": 60.0}, {"atoms": [6, 8, 14, 16], "angle_deg": 40.0}]
    free = md.load(str(simulate(adp, tmp_path, "free", length_ps=4.0, equilibration_ps=2.0, progress=False)),
                   top=str(tmp_path / "free.pdb"))
    held = md.load(str(simulate(adp, tmp_path, "alpha_l", length_ps=4.0, equilibration_ps=2.0, progress=False,
                                start_restraints=alpha_l)), top=str(tmp_path / "alpha_l.pdb"))
    phi_free, phi_held = (np.degrees(md.compute_phi(t)[1][:, 0]) for t in (free, held))
    assert np.all(phi_free < 0) and np.all(phi_held[:2] > 20)  # starts in alpha_L, the reference in beta
    assert phi_held.std() > 2.0  # and moves freely afterwards (the restraint is off)
    with pytest.raises(ValueError, match="start_restraints"):
        simulate(adp, tmp_path, "bad", length_ps=1.0, start_restraints=[{"atoms": [1, 2, 3]}])
