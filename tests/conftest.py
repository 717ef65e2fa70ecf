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
