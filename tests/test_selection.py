"""Model selection on rollouts: which weights model.pt holds, last.ckpt, resume, rollout validation."""

import csv

import mdtraj as md
import numpy as np
import pytest
import torch
from test_model import make_module, train_config

from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.backmap import RolloutSettings, backmap_paths
from tcbm.training import train
from tcbm.validation import rollout_scores, rollout_windows


def checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def weights_equal(model: BackmapModel, ckpt: dict) -> bool:
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return all(torch.equal(v, state[k]) for k, v in model.network.state_dict().items())


@pytest.fixture(scope="module")
def trained(tmp_path_factory, adp_traj):
    """Six steps, validated (and rolled out) every two."""
    out = tmp_path_factory.mktemp("trained")
    cfg = train_config(out, adp_traj, **{"trainer.max_steps": 6, "rollout_validation.frames": 10,
                                         "rollout_validation.gmm_samples": 16})
    return out, BackmapModel.load(train(cfg))


def test_artefact_holds_the_weights_of_its_recorded_step(trained):
    out, model = trained
    best = checkpoint(out / "checkpoints" / "best.ckpt")
    assert model.metadata["weights_step"] == best["global_step"]
    assert weights_equal(model, best)
    assert model.metadata["selection"]["monitor"] == "val/rollout/energy_w1_kJmol"
    # the best score is the lowest rollout energy W1 among the three validations logged
    rows = [r for f in (out / "logs").rglob("metrics.csv") for r in csv.DictReader(f.open())]
    logged = {int(r["step"]): float(r["val/rollout/energy_w1_kJmol"]) for r in rows
              if r.get("val/rollout/energy_w1_kJmol")}
    assert len(logged) == 3
    assert model.metadata["selection"]["best_score"] == pytest.approx(min(logged.values()), rel=1e-6)


def test_last_checkpoint_holds_the_final_step_and_resume_continues(trained, adp_traj, tmp_path):
    out, model = trained
    last = checkpoint(out / "checkpoints" / "last.ckpt")
    assert last["global_step"] == 6 == model.metadata["steps"]
    resumed = BackmapModel.load(train(train_config(tmp_path, adp_traj, **{
        "trainer.max_steps": 8, "ckpt_path": str(out / "checkpoints" / "last.ckpt"), "selection.weights": "last",
        "rollout_validation.frames": 10, "rollout_validation.gmm_samples": 16})))
    final = checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert final["global_step"] == 8 == resumed.metadata["steps"] == resumed.metadata["weights_step"]
    assert weights_equal(resumed, final) and not weights_equal(resumed, last)


def test_selection_score_does_not_depend_on_the_loss_schedules(adp_traj, adp):
    """The same weights score the same under any λ/β schedule and step: selection cannot favour the
    validation before the energy term switches on (which monitoring val/loss did)."""
    from tcbm.data import BackmapDataModule
    from tcbm.training import _rollout_validation

    cfg = train_config(adp_traj[1].parent, adp_traj, **{"rollout_validation.frames": 8,
                                                        "rollout_validation.gmm_samples": 16})
    network = {"latent_dim": 4, "width": 8, "depth": 1, "history": 1}
    data = BackmapDataModule(adp, str(adp_traj[0]), val_fraction=0.2, n_blocks=5)
    library = SeedLibrary.from_frames(data.data.xyz, data.train_idx, adp.mapping, 1, 1, 500)
    callback = _rollout_validation(cfg, data, adp, network, library, None)
    torch.manual_seed(0)
    a = make_module(adp, energy_weight={"final": 0.0}, kl_weight={"mode": "constant", "beta_max": 0.0})
    b = make_module(adp, energy_weight={"final": 5.0, "warmup_steps": 0}, kl_weight={"mode": "constant",
                                                                                      "beta_max": 1.0})
    b.load_state_dict(a.state_dict())
    batch = data.dataset("val").__getitems__(list(range(4)))
    assert a._total(a._terms(batch, sample=False)[0]) != b._total(b._terms(batch, sample=False)[0])
    assert callback.evaluate(a) == callback.evaluate(b)


def test_validation_rollout_is_what_tcbm_backmap_writes(tmp_path, adp_traj, adp):
    from tcbm.data import BackmapDataModule
    from tcbm.training import _rollout_validation, _rotor_chains

    cfg = train_config(tmp_path, adp_traj, **{"rollout_validation.frames": 12, "rollout_validation.gmm_samples": 16,
                                              "model.loss.symmetric_rotors": "continuous",
                                              "model.rotor_chain.states_per_well": 4})
    network = {"latent_dim": 4, "width": 8, "depth": 1, "history": 1}
    data = BackmapDataModule(adp, str(adp_traj[0]), val_fraction=0.2, n_blocks=5)
    library = SeedLibrary.from_frames(data.data.xyz, data.train_idx, adp.mapping, 1, 1, 500)
    chains = _rotor_chains(cfg, data, adp, network["history"])
    assert chains.turn and chains.transition_matrices.shape == (3, 12, 12)
    assert _rotor_chains(cfg, data, adp, 0) is None  # the frame-based model has no previous frame to turn from
    callback = _rollout_validation(cfg, data, adp, network, library, chains)
    module = make_module(adp)
    model, rollout = callback.rollout(module)
    assert model.rotor_hops is chains  # validation turns the rotors as tcbm backmap does
    window = md.Trajectory(callback.reference[0], adp.topology)
    window.save_hdf5(str(tmp_path / "0.h5"))  # named like window 0, so it draws the same latents
    written = backmap_paths(model, [tmp_path / "0.h5"], tmp_path / "out", RolloutSettings(
        seed=0, chunk_frames=12, progress=False), fmt="h5", input_is_aa=True)[0]
    frames = md.load(str(written)).xyz
    assert frames.shape == rollout[0].shape
    assert np.abs(frames - rollout[0]).max() < 1e-5


def test_rollout_windows_stay_inside_contiguous_runs():
    targets = np.concatenate([np.arange(10, 40), np.arange(100, 112)])
    windows = rollout_windows(targets, 10, 8)
    assert len(windows) == 4  # three in the first run, one in the second
    assert all(np.all(np.diff(w) == 1) and set(w) <= set(targets) for w in windows)
    assert [len(w) for w in rollout_windows(np.arange(5, 9), 10, 2)] == [4]
    assert rollout_windows(np.array([], dtype=int), 10, 2) == []
    # two trajectories back to back (the second starts at frame 20): no window straddles them
    assert all(w[0] >= 20 or w[-1] < 20 for w in rollout_windows(np.arange(10, 40), 8, 8, starts=np.array([0, 20])))
    assert any(w[0] < 20 <= w[-1] for w in rollout_windows(np.arange(10, 40), 8, 8))  # what it prevents


def test_rollout_scores_known_answers(adp_traj, adp):
    from tcbm.energy import MMEnergy, bonded_pairs

    xyz = md.load(str(adp_traj[0]), top=str(adp_traj[1])).xyz[:20]
    energy, bonds = MMEnergy(adp.openmm_system()), bonded_pairs(adp.openmm_system())
    same = rollout_scores(xyz[None], xyz[None], energy, bonds, adp.mapping)
    assert same["energy_w1_kJmol"] == pytest.approx(0, abs=1e-6) and same["bond_mae_nm"] == 0
    stretched = xyz * 1.01  # every bond 1 % longer, CG beads moved by 1 % of their positions
    scores = rollout_scores(stretched[None], xyz[None], energy, bonds, adp.mapping)
    lengths = np.linalg.norm(xyz[:, bonds[:, 1]] - xyz[:, bonds[:, 0]], axis=-1)
    assert scores["bond_mae_nm"] == pytest.approx(0.01 * lengths.mean(), rel=1e-3)
    cg = adp.mapping(xyz)
    assert scores["cg_rmsd_nm"] == pytest.approx(0.01 * np.sqrt((cg ** 2).sum(-1).mean()), rel=1e-3)
    assert scores["energy_w1_kJmol"] > 2 * 2.49  # stretched bonds cost more than 2 kT


def test_ddp_on_two_cpu_processes_writes_one_artefact(tmp_path, adp_traj):
    """`tcbm train` with two gloo DDP processes (Lightning relaunches the CLI for rank 1)."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "tcbm.cli", "train", f"data.trajectories={adp_traj[0]}", "out=run",
           "trainer.max_steps=4", "trainer.val_check_interval=2", "data.batch_size=4", "data.val_fraction=0.2",
           "data.n_blocks=5", "model.network.width=4", "model.network.latent_dim=2", "model.gmm.components=2",
           "trainer.enable_progress_bar=false", "trainer.accelerator=cpu", "trainer.devices=2",
           "+trainer.strategy=ddp", "rollout_validation.windows=2", "rollout_validation.frames=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("TCBM_COMMAND", None)
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("model artefact: run/model.pt") == 1  # written and announced by rank 0 only
    model = BackmapModel.load(tmp_path / "run" / "model.pt")
    assert model.metadata["steps"] == 4 and model.metadata["weights_step"] in (2, 4)
    assert not list((tmp_path / "run").glob(".*partial*"))
