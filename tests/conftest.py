"""Shared fixtures: tiny OpenMM trajectories made once per test session."""

from __future__ import annotations

import pytest

from tcbm.simulate import simulate
from tcbm.systems import load_system


@pytest.fixture(scope="session")
def adp():
    return load_system("adp")


@pytest.fixture(scope="session")
def cln():
    return load_system("cln")


@pytest.fixture(scope="session")
def adp_traj(tmp_path_factory, adp):
    """60 ps of alanine dipeptide in OBC solvent, 0.5 ps frames (xtc path, pdb path)."""
    out = tmp_path_factory.mktemp("adp_data")
    path = simulate(adp, out, name="train", length_ps=60.0, save_interval_ps=0.5, equilibration_ps=1.0, seed=3,
                    progress=False)
    return path, out / "train.pdb"


@pytest.fixture(scope="session")
def tiny_model(adp_traj, adp):
    """An untrained (random-weight) ADP model with a seed library from the tiny trajectory."""
    import numpy as np
    import torch

    from tcbm.artifact import BackmapModel, SeedLibrary
    from tcbm.data import load_aa_trajectories
    from tcbm.latent import LatentSampler
    from tcbm.model import BackmapCVAE
    from tcbm.voxels import VoxelGrid

    torch.manual_seed(0)
    config = {"latent_dim": 3, "width": 4, "depth": 1, "history": 1}
    network = BackmapCVAE.for_system(adp, VoxelGrid(d=8, r_grid=2.0, sigma=0.2), **config)
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    library = SeedLibrary.from_frames(data.xyz, np.arange(1, len(data.xyz)), adp.mapping, 1, 1)
    sampler = LatentSampler.fit(np.random.default_rng(0).normal(size=(100, 3)), n_components=2)
    return BackmapModel(network, config, adp, sampler, library)


@pytest.fixture(scope="session")
def tiny_model_with_hops(tiny_model, adp_traj):
    """:func:`tiny_model` with rotor-hop Markov chains fitted to the tiny trajectory's consecutive frames."""
    import mdtraj as md
    import numpy as np

    from tcbm.artifact import BackmapModel
    from tcbm.rotor_hops import RotorHopEstimator

    traj = md.load(str(adp_traj[0]), top=str(adp_traj[1]))
    pairs = np.stack([np.arange(traj.n_frames - 1), np.arange(1, traj.n_frames)], axis=1)
    hops = RotorHopEstimator().fit(traj.xyz, pairs, traj.topology).fetch_model()
    m = tiny_model
    return BackmapModel(m.network, m.network_config, m.system, m.sampler, m.library, m.lag, rotor_hops=hops)


@pytest.fixture(scope="session")
def cg_inputs(tmp_path_factory, adp_traj, adp):
    """Three CG trajectories (h5, 6 beads) cut from the tiny ADP trajectory, of 30, 25 and 20 frames."""
    import mdtraj as md

    out = tmp_path_factory.mktemp("cg_inputs")
    traj = md.load(str(adp_traj[0]), top=str(adp_traj[1]))
    cg = adp.mapping(traj.xyz)
    paths = []
    for k, (start, length) in enumerate([(0, 30), (40, 25), (80, 20)]):
        path = out / f"cg{k}.h5"
        md.Trajectory(cg[start:start + length], adp.cg_topology(), time=traj.time[start:start + length]).save_hdf5(
            str(path))
        paths.append(path)
    return paths
