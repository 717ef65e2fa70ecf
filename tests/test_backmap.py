import json
import os
import subprocess
import sys

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm import backmap
from tcbm.backmap import Backmapper, RolloutSettings, backmap_paths, distributed_share, nearest_library_frames
from tcbm.geometry import aligned_rmsd, random_rotations
from tcbm.refine import RefinementSettings


def run(model, inputs, out, **settings):
    settings.setdefault("progress", False)
    return backmap_paths(model, inputs, out, RolloutSettings(**settings), device="cpu")


def test_outputs_have_full_topology_frames_and_summary(tmp_path, tiny_model, cg_inputs):
    paths = run(tiny_model, cg_inputs, tmp_path, chunk_frames=7)
    assert [p.name for p in paths] == ["cg0.xtc", "cg1.xtc", "cg2.xtc"]
    for path, n in zip(paths, (30, 25, 20), strict=False):
        traj = md.load(str(path), top=str(tmp_path / "topology.pdb"))
        assert traj.n_atoms == 22 and traj.n_frames == n
        assert np.isfinite(traj.xyz).all()
        summary = json.loads(path.with_suffix(".json").read_text())
        assert summary["frames"] == n and summary["cg_rmsd_nm"] > 0
    assert not list(tmp_path.glob(".*partial*"))


def test_samples_and_formats(tmp_path, tiny_model, cg_inputs):
    paths = run(tiny_model, cg_inputs[:1], tmp_path, samples=2)
    assert [p.name for p in paths] == ["cg0_s0.xtc", "cg0_s1.xtc"]
    a, b = (md.load(str(p), top=str(tmp_path / "topology.pdb")).xyz for p in paths)
    assert not np.allclose(a, b)
    for fmt in ("dcd", "h5"):
        path = backmap_paths(tiny_model, cg_inputs[:1], tmp_path / fmt, RolloutSettings(samples=2, progress=False),
                             fmt=fmt)[0]  # the same rows as above: the same frames, written at another precision
        other = md.load(str(path), top=str(tmp_path / "topology.pdb"))
        assert np.abs(other.xyz - md.load(str(tmp_path / "cg0_s0.xtc"), top=str(tmp_path / "topology.pdb")).xyz
                      ).max() < 2e-3


def test_seeding_picks_the_closest_library_frame(tiny_model):
    library = torch.as_tensor(tiny_model.library.cg)
    rot = random_rotations(1)[0]
    query = library[[7, 21]] @ rot.T + torch.tensor([1.0, -2.0, 0.5])
    assert nearest_library_frames(library, query, candidates=4, chunk=1).tolist() == [7, 21]
    exhaustive = torch.stack([aligned_rmsd(library, q[None]).argmin() for q in query])
    assert exhaustive.tolist() == [7, 21]
    seeded = Backmapper(tiny_model, device="cpu").seed_frames(query)
    expected = torch.as_tensor(tiny_model.library.aa_prev[[7, 21]]) @ rot.T + torch.tensor([1.0, -2.0, 0.5])
    assert torch.allclose(seeded, expected, atol=1e-4)


def test_same_seed_same_output_other_seed_differs(tiny_model, cg_inputs, adp):
    cg = [md.load(str(p)).xyz for p in cg_inputs]
    a = Backmapper(tiny_model, RolloutSettings(seed=1, progress=False), "cpu").backmap(cg)
    b = Backmapper(tiny_model, RolloutSettings(seed=1, progress=False), "cpu").backmap(cg)
    c = Backmapper(tiny_model, RolloutSettings(seed=2, progress=False), "cpu").backmap(cg)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=False))
    assert not np.allclose(a[0], c[0])
    cold = Backmapper(tiny_model, RolloutSettings(seed=1, latent_temperature=0.0, progress=False), "cpu").backmap(cg)
    assert not np.allclose(cold[0], a[0])  # temperature 0 decodes the GMM component means instead
    with pytest.raises(ValueError, match="latent_temperature must be >= 0"):
        RolloutSettings(latent_temperature=-1.0)


def test_batched_equals_one_at_a_time(tiny_model, cg_inputs):
    cg = [md.load(str(p)).xyz for p in cg_inputs]
    batched = Backmapper(tiny_model, RolloutSettings(progress=False), "cpu").backmap(cg)
    single = Backmapper(tiny_model, RolloutSettings(batch_size=1, progress=False), "cpu").backmap(cg)
    for x, y in zip(batched, single, strict=False):
        assert x.shape == y.shape and np.abs(x - y).max() < 1e-3  # float32 reduction order only


def test_resume_after_kill_matches_uninterrupted(tmp_path, tiny_model, cg_inputs, monkeypatch):
    reference = run(tiny_model, cg_inputs, tmp_path / "ref", batch_size=1)
    import tcbm.backmap as bm

    original, calls = bm._run_group, {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return original(*args, **kwargs)

    monkeypatch.setattr(bm, "_run_group", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, cg_inputs, tmp_path / "resumed", batch_size=1)
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir() if p.suffix == ".xtc") == ["cg0.xtc"]
    assert not list((tmp_path / "resumed").glob(".*partial*"))
    monkeypatch.setattr(bm, "_run_group", original)
    calls["n"] = 0
    resumed = run(tiny_model, cg_inputs, tmp_path / "resumed", batch_size=1)
    for a, b in zip(reference, resumed, strict=False):
        assert a.read_bytes() == b.read_bytes()


@pytest.mark.parametrize("kill_after_state", [True, False])
def test_rollout_killed_mid_trajectory_resumes_to_the_same_file(tmp_path, tiny_model_with_hops, cg_inputs,
                                                                 monkeypatch, kill_after_state):
    import tcbm.resume

    tiny_model = tiny_model_with_hops  # random streams for latents, refinement noise and rotor hops
    settings = {"chunk_frames": 4, "refinement": RefinementSettings(steps=2)}
    reference = run(tiny_model, cg_inputs, tmp_path / "ref", **settings)
    original, saves = tcbm.resume.RolloutProgress.save, []

    def dying(self, state):
        saves.append(state["frames"])
        if len(saves) == 3:  # killed after 3 chunks' frames, with or without their state recorded
            if kill_after_state:
                original(self, state)
            raise KeyboardInterrupt("killed")
        original(self, state)

    monkeypatch.setattr(tcbm.resume.RolloutProgress, "save", dying)
    with pytest.raises(KeyboardInterrupt):
        run(tiny_model, cg_inputs, tmp_path / "resumed", **settings)
    out = tmp_path / "resumed"
    assert not list(out.glob("*.xtc")) and len(list(out.glob(".*.frames"))) == 3  # raw frames kept, no output
    monkeypatch.setattr(tcbm.resume.RolloutProgress, "save", original)
    resumed_at = []
    monkeypatch.setattr(tcbm.resume.RolloutProgress, "load",
                        lambda self, f=tcbm.resume.RolloutProgress.load, **kw: resumed_at.append(f(self, **kw))
                        or resumed_at[-1])
    resumed = run(tiny_model, cg_inputs, out, **settings)
    assert resumed_at[0]["frames"] == (12 if kill_after_state else 8)  # not from frame 0
    for a, b in zip(reference, resumed, strict=True):
        assert a.read_bytes() == b.read_bytes()
        assert json.loads(a.with_suffix(".json").read_text())["cg_rmsd_nm"] == pytest.approx(
            json.loads(b.with_suffix(".json").read_text())["cg_rmsd_nm"], rel=1e-9)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # raw files and state gone


def test_rerun_reuses_only_outputs_made_the_same_way(tmp_path, tiny_model, cg_inputs, capsys, monkeypatch):
    from tcbm.artifact import BackmapModel

    path = run(tiny_model, cg_inputs[:1], tmp_path)[0]
    first = path.read_bytes()
    path.touch()
    stamp = path.stat().st_mtime_ns
    assert run(tiny_model, cg_inputs[:1], tmp_path)[0].stat().st_mtime_ns == stamp  # same everything: reused
    run(tiny_model, cg_inputs[:1], tmp_path, seed=7)
    assert "recomputing" in capsys.readouterr().out and path.read_bytes() != first
    assert json.loads(path.with_suffix(".json").read_text())["fingerprint"]["settings"]["seed"] == 7
    monkeypatch.setattr(backmap, "ROLLOUT_RECIPE", backmap.ROLLOUT_RECIPE + 1)  # the code makes other frames now
    run(tiny_model, cg_inputs[:1], tmp_path, seed=7)
    assert "recipe: " in capsys.readouterr().out
    monkeypatch.undo()
    other = BackmapModel.load(tiny_model.save(tmp_path / "m.pt"))
    assert other.fingerprint() == tiny_model.fingerprint()  # a saved-and-loaded copy is the same model
    with torch.no_grad():
        other.network.decoder.out.weight.mul_(1.5)  # a bias shift would leave every softmax as it was
    seeded = path.read_bytes()
    run(other, cg_inputs[:1], tmp_path, seed=7)
    assert "model: " in capsys.readouterr().out and path.read_bytes() != seeded
    paths = run(other, cg_inputs[:1], tmp_path, seed=7, samples=2)  # new files, same rows' streams
    assert [p.name for p in paths] == ["cg0_s0.xtc", "cg0_s1.xtc"]


def test_atoms_beyond_the_grid_are_reported(tmp_path, tiny_model, cg_inputs, capsys, monkeypatch):
    import tcbm.rollout

    # the untrained tiny model (grid half-width 0.4 nm) already puts H atoms up to ~0.1 nm beyond its grid
    clean = json.loads(run(tiny_model, cg_inputs[:1], tmp_path / "clean")[0].with_suffix(".json").read_text())
    assert clean["grid_overflow"]["max_excess_nm"] < 0.2
    original, calls = tcbm.rollout.step, []

    def drifting(network, cg, previous, z):  # from frame 10 on, atom 3 sits 0.5 nm beyond the grid along x
        frame = original(network, cg, previous, z)
        calls.append(1)
        if len(calls) > 10:
            frame[:, 3, 0] = cg[:, :, 0].mean(dim=1) + tiny_model.grid.max_radius + 0.5
        return frame

    monkeypatch.setattr(tcbm.rollout, "step", drifting)
    # (stiff coordinates off: they would place the hydrogen back at its bond length from its carbon)
    path = run(tiny_model, cg_inputs[:1], tmp_path / "out", stiff_coordinates=False)[0]
    overflow = json.loads(path.with_suffix(".json").read_text())["grid_overflow"]
    assert overflow["frames"] == 30 and overflow["max_excess_nm"] == pytest.approx(0.5, abs=1e-5)
    assert "30 frames have atoms beyond the voxel grid" in capsys.readouterr().out
    from tcbm.backmap import GridOverflow

    known = GridOverflow()
    known.update(np.array([[-0.1, -0.2], [-0.1, 0.3], [0.2, 0.1]]), offset=5)
    assert known.frames == 2 and known.first == {"frame": 6, "atom": 1, "excess_nm": 0.3}
    assert known.max_excess_nm == 0.3


def test_nan_frame_and_bead_count_errors(tmp_path, tiny_model, cg_inputs, adp):
    traj = md.load(str(cg_inputs[0]))
    traj.xyz[4, 2, 0] = np.nan
    traj.save_hdf5(str(tmp_path / "nan.h5"))
    with pytest.raises(ValueError, match="nan.h5: frame 4 has non-finite"):
        run(tiny_model, [tmp_path / "nan.h5"], tmp_path / "o")
    five = md.load(str(cg_inputs[0])).atom_slice(range(5))
    five.save_hdf5(str(tmp_path / "five.h5"))
    with pytest.raises(ValueError, match="five.h5: 5 beads per frame, but the model's CG mapping has 6"):
        run(tiny_model, [tmp_path / "five.h5"], tmp_path / "o")


def test_all_atom_input_is_mapped_first(tmp_path, tiny_model, adp_traj):
    paths = backmap_paths(tiny_model, [adp_traj[0]], tmp_path, RolloutSettings(progress=False), input_is_aa=True,
                          aa_top=str(adp_traj[1]))
    assert md.load(str(paths[0]), top=str(tmp_path / "topology.pdb")).n_frames == 120


def test_distributed_share_splits_inputs():
    items = list(range(7))
    shares = [distributed_share(items, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == items and shares[1] == [1, 4]


def test_torchrun_two_processes(tmp_path, tiny_model, cg_inputs):
    model = tiny_model.save(tmp_path / "model.pt")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--module", "tcbm.cli", "backmap",
           f"model={model}", f"cg=[{','.join(str(p) for p in cg_inputs)}]", f"out={tmp_path / 'out'}",
           "progress=false", "device=cpu", "batch_size=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same arithmetic as the single-threaded ranks
    try:
        single = run(tiny_model, cg_inputs, tmp_path / "single", batch_size=1)
    finally:
        torch.set_num_threads(threads)
    for path in single:  # each rank wrote its own share; together they equal one process's output
        assert (tmp_path / "out" / path.name).read_bytes() == path.read_bytes()


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory, cg_inputs):
    """Inputs a user may get wrong, each in its own file."""
    folder = tmp_path_factory.mktemp("bad_inputs")
    traj = md.load(str(cg_inputs[0]))
    nan = traj[:]
    nan.xyz[4, 2, 0] = np.nan
    nan.save_hdf5(str(folder / "nan.h5"))
    traj.atom_slice(range(5)).save_hdf5(str(folder / "five.h5"))
    wide = traj[:]
    wide.xyz[7] *= 8.0
    wide.save_hdf5(str(folder / "wide.h5"))
    traj.save_xtc(str(folder / "no_top.xtc"))
    torch.save({"weights": [1, 2]}, folder / "foreign.pt")
    return folder


@pytest.mark.parametrize("args, message", [
    (["model=missing.pt"], "model artefact missing.pt does not exist"),
    (["model={bad}/foreign.pt"], "foreign.pt is not a tcbm model artefact"),
    (["cg=x.xtc"], "no file matches 'x.xtc'"),
    (["cg={bad}/nan.h5"], "nan.h5: frame 4 has non-finite"),
    (["cg={bad}/five.h5"], "five.h5: 5 beads per frame, but the model's CG mapping has 6"),
    (["cg={bad}/wide.h5"], "wide.h5: frame 7 does not fit the model's voxel grid"),
    (["cg={bad}/no_top.xtc"], "no_top.xtc: a CG topology is needed"),
    (["input_is_aa=true"], "atoms"),
    (["samples=0"], "samples, batch_size and chunk_frames must be >= 1"),
    (["format=pdb"], "format must be one of ('xtc', 'dcd', 'h5'), got 'pdb'"),
    (["autocast=int8"], "autocast must be null, 'bf16' or 'fp16'"),
    (["refine.steps=-1"], "invalid refinement settings"),
    (["refine.implicit_solvent=gbn2"], "refinement implicit_solvent must be one of ('obc', None)"),
    (["keep_stereo=maybe"], "keep_stereo must be true or false, got 'maybe'"),
])
def test_cli_user_errors_are_one_line_without_traceback(tmp_path, tiny_model, cg_inputs, bad_inputs, args, message):
    model = tiny_model.save(tmp_path / "model.pt")
    base = [f"model={model}", f"cg={cg_inputs[0]}", "out=out"]
    cmd = [sys.executable, "-m", "tcbm.cli", "backmap", *base, *(a.format(bad=bad_inputs) for a in args)]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tcbm backmap: error: ") and message in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]  # no output, no log folder left


def test_rollout_fingerprint_holds_the_refinement_only_when_it_is_on():
    off, off_other = RolloutSettings(), RolloutSettings(refinement=RefinementSettings(steps=0, minimize_steps=50))
    on, on_other = (RolloutSettings(refinement=RefinementSettings(steps=5, minimize_steps=m)) for m in (0, 50))
    assert off.fingerprint() == off_other.fingerprint()  # a refinement that is off shapes no frame
    assert on.fingerprint() != on_other.fingerprint() and on.fingerprint() != off.fingerprint()
    assert on.fingerprint()["refinement"]["minimize_steps"] == 0
