"""Rotor-hop Markov chains: estimated transition matrices of a chain with known ones, what a step does to a
frame (a cyclic relabelling into the drawn well, energy unchanged), storage in the artefact and the rollout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tcbm.analysis.observables import potential_energies
from tcbm.artifact import BackmapModel
from tcbm.backmap import Backmapper, RolloutSettings
from tcbm.rotor_hops import RotorHopEstimator, RotorHops, hydrogen_dihedrals, rotor_axes
from tcbm.symmetry import rotor_hydrogen_groups, turn_groups

# reversible chains with known matrices (the last one with stationary distribution (1/2, 1/4, 1/4))
CHAINS = [np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]]),
          np.array([[0.4, 0.3, 0.3], [0.3, 0.4, 0.3], [0.3, 0.3, 0.4]]),
          np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.2, 0.1, 0.7]])]


def relabelled(x: np.ndarray, groups: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """``x`` (N, 3) with each group's hydrogens cyclically relabelled by ``shifts`` (g,) positions."""
    y = x.copy()
    for group, shift in zip(groups, shifts, strict=True):
        y[group] = x[np.roll(group, -shift)]
    return y


def test_dihedral_atoms_of_the_packaged_rotors(adp, cln):
    def names(system):
        atoms = list(system.topology.atoms)
        return [[str(atoms[i]) for i in row] for row in rotor_axes(system.topology, rotor_hydrogen_groups(system.topology))]

    assert names(adp) == [["ACE1-CH3", "ACE1-C", "ACE1-O"], ["ALA2-CB", "ALA2-CA", "ALA2-N"], ["NME3-C", "NME3-N", "ALA2-C"]]
    # chignolin: the N-terminal NH3+ turns about N-CA, the Thr methyls about CG2-CB
    assert names(cln) == [["GLY1-N", "GLY1-CA", "GLY1-C"], ["THR6-CG2", "THR6-CB", "THR6-CA"],
                          ["THR8-CG2", "THR8-CB", "THR8-CA"]]


def test_estimated_chains_match_the_known_ones(adp):
    rng = np.random.default_rng(0)
    groups = rotor_hydrogen_groups(adp.topology)
    x = adp.reference_xyz.astype(np.float64)
    shifts = np.zeros((4001, len(groups)), dtype=int)
    for t in range(1, len(shifts)):
        shifts[t] = [rng.choice(3, p=chain[s]) for chain, s in zip(CHAINS, shifts[t - 1], strict=True)]
    xyz = np.stack([relabelled(x, groups, s) for s in shifts])
    pairs = np.stack([np.arange(len(xyz) - 1), np.arange(1, len(xyz))], axis=1)
    hops = RotorHopEstimator().fit(xyz, pairs, adp.topology).fetch_model()
    assert np.array_equal(hops.groups, groups)
    # the estimator numbers wells by angle, the chain by relabelling: map one onto the other through the frames
    wells = hops.states(torch.as_tensor(np.stack([relabelled(x, groups, np.full(3, s)) for s in range(3)]))).numpy()
    for k, chain in enumerate(CHAINS):
        assert sorted(wells[:, k]) == [0, 1, 2]
        estimated = hops.transition_matrices[k][np.ix_(wells[:, k], wells[:, k])]
        assert np.abs(estimated - chain).max() < 0.04  # ~4,000 transitions: statistical error ~0.01


def test_a_rotor_never_seen_turning_stays_put(adp):
    x = np.repeat(adp.reference_xyz[None], 10, axis=0)
    hops = RotorHopEstimator().fit(x, np.stack([np.arange(9), np.arange(1, 10)], axis=1), adp.topology).fetch_model()
    assert np.array_equal(hops.transition_matrices, np.repeat(np.eye(3)[None], 3, axis=0))


def test_a_step_relabels_cyclically_into_the_drawn_well(adp):
    groups = rotor_hydrogen_groups(adp.topology)
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)[None]
    phases = RotorHopEstimator().fit(x.numpy(), np.array([[0, 0]]), adp.topology).fetch_model().phases
    axes = rotor_axes(adp.topology, groups)
    forward = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # always one well on
    hops = RotorHops(groups, axes, phases, np.repeat(forward[None], 3, axis=0))
    uniforms = torch.full((1, 3), 0.5)
    frame = hops.step(x, x, uniforms)
    assert torch.equal(hops.states(frame), (hops.states(x) + 1) % 3)
    others = np.setdiff1d(np.arange(adp.n_atoms), groups.ravel())
    assert torch.equal(frame[0, others], x[0, others])
    cyclic = [relabelled(x[0].numpy(), groups, np.full(3, s)) for s in (1, 2)]
    assert any(np.array_equal(frame[0].numpy(), c) for c in cyclic)  # a turn: never a swap of two hydrogens
    assert potential_energies(frame.numpy(), adp) == pytest.approx(potential_energies(x.numpy(), adp), abs=1e-6)
    # the identity chain keeps a frame whose first hydrogens already sit in the previous frame's wells
    still = RotorHops(groups, axes, phases, np.repeat(np.eye(3)[None], 3, axis=0))
    assert torch.equal(still.step(frame, frame, uniforms), frame)


def test_bad_chains_are_rejected(adp):
    groups = rotor_hydrogen_groups(adp.topology)
    axes = rotor_axes(adp.topology, groups)
    with pytest.raises(ValueError, match="row-stochastic"):
        RotorHops(groups, axes, np.zeros(3), np.full((3, 3, 3), 0.5))
    with pytest.raises(ValueError, match=r"phases must have shape \(3,\)"):
        RotorHops(groups, axes, np.zeros(2), np.repeat(np.eye(3)[None], 3, axis=0))
    with pytest.raises(ValueError, match="no frame pairs"):
        RotorHopEstimator().fit(adp.reference_xyz[None], np.zeros((0, 2)), adp.topology)
    with pytest.raises(ValueError, match=r"index frames 0..1, but there are 1"):
        RotorHopEstimator().fit(adp.reference_xyz[None], np.array([[0, 1]]), adp.topology)
    with pytest.raises(ValueError, match="do not fit the topology"):
        RotorHopEstimator().fit(adp.reference_xyz[None, :10], np.array([[0, 0]]), adp.topology)


def test_hops_survive_save_and_load_and_drive_the_rollout(tmp_path, tiny_model, tiny_model_with_hops, cg_inputs):
    import mdtraj as md

    loaded = BackmapModel.load(tiny_model_with_hops.save(tmp_path / "model.pt"))
    assert np.array_equal(loaded.rotor_hops.transition_matrices, tiny_model_with_hops.rotor_hops.transition_matrices)
    assert loaded.fingerprint() == tiny_model_with_hops.fingerprint() != tiny_model.fingerprint()
    assert not (tiny_model_with_hops.rotor_hops.transition_matrices == np.eye(3)).all()  # the tiny run's methyls hop
    cg = [md.load(str(cg_inputs[0])).xyz]
    alone = {"progress": False, "stiff_coordinates": False}  # the hops alone: no stiff coordinates redrawn after them
    plain = Backmapper(tiny_model, RolloutSettings(**alone), "cpu").backmap(cg)[0]
    off = Backmapper(tiny_model_with_hops, RolloutSettings(**alone, rotor_hops=False), "cpu").backmap(cg)[0]
    on = Backmapper(tiny_model_with_hops, RolloutSettings(**alone), "cpu").backmap(cg)[0]
    assert np.array_equal(off, plain)  # switched off: the network's frames as they are
    groups = tiny_model_with_hops.rotor_hops.groups
    others = np.setdiff1d(np.arange(on.shape[1]), groups.ravel())
    # frame 0 is decoded from the same seed: only its rotor hydrogens may be relabelled
    assert np.array_equal(on[0, others], plain[0, others])
    assert np.allclose(np.sort(on[0, groups], axis=1), np.sort(plain[0, groups], axis=1))
    assert not np.array_equal(on, plain)


def turned_to(x: torch.Tensor, hops: RotorHops, angles: torch.Tensor) -> torch.Tensor:
    """Frames (B, N, 3) of ``x`` (N, 3) with each group turned rigidly so that its first hydrogen's dihedral is
    ``angles`` (B, g) rad."""
    groups, axes = torch.as_tensor(hops.groups), torch.as_tensor(hops.axes)
    x = x.expand(len(angles), -1, -1)
    return turn_groups(x, groups, axes[:, :2], angles - hydrogen_dihedrals(x, groups[:, :1], axes)[..., 0])


def test_a_turning_step_puts_the_first_hydrogen_at_the_drawn_angle(adp):
    groups, axes = rotor_hydrogen_groups(adp.topology), rotor_axes(adp.topology, rotor_hydrogen_groups(adp.topology))
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)[None]
    phases = RotorHopEstimator().fit(x.numpy(), np.array([[0, 0]]), adp.topology).fetch_model().phases
    to_five_and_six = np.zeros((3, 12, 12))
    to_five_and_six[:, :, 5] = to_five_and_six[:, :, 6] = 0.5
    hops = RotorHops(groups, axes, phases, to_five_and_six, states_per_well=4, turn=True)
    g = torch.as_tensor(groups)
    inside = [torch.cat([g[k], torch.as_tensor(axes[k, :2])]) for k in range(3)]
    for u, degrees, state in ((0.25, 150.0, 5), (0.75, 180.0, 6), (0.1, 141.0, 5)):
        frame = hops.step(x, x, torch.full((1, 3), u, dtype=torch.float64))
        angle = hydrogen_dihedrals(frame, g[:, :1], torch.as_tensor(axes))[0, :, 0]
        # 30-degree bins: the uniform's place inside its half of the row is its place inside the drawn bin
        offset = torch.remainder(angle - torch.as_tensor(phases) - np.radians(degrees) + np.pi, 2 * np.pi) - np.pi
        assert offset.abs().max() < 1e-9
        assert torch.equal(hops.states(frame)[0], torch.full((3,), state))
        for atoms in inside:  # a rigid turn: the group's own geometry is kept
            assert torch.allclose(torch.cdist(frame[0, atoms], frame[0, atoms]), torch.cdist(x[0, atoms], x[0, atoms]))
        assert torch.equal(frame[0, np.setdiff1d(np.arange(adp.n_atoms), groups.ravel())],
                           x[0, np.setdiff1d(np.arange(adp.n_atoms), groups.ravel())])


def test_fine_chains_are_estimated_and_unvisited_bins_move_like_their_nearest(adp):
    rng = np.random.default_rng(1)
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)
    first = RotorHopEstimator().fit(x[None].numpy(), np.array([[0, 0]]), adp.topology).fetch_model()
    chain = np.array([[0.6, 0.4], [0.2, 0.8]])  # over bins 0 and 1 of 6 (states_per_well 2: 60-degree bins)
    states = [0]
    for _ in range(8000):
        states.append(rng.choice(2, p=chain[states[-1]]))
    states = np.array(states)
    angles = torch.as_tensor(first.phases)[None] + torch.as_tensor(states, dtype=torch.float64)[:, None] * np.pi / 3
    xyz = turned_to(x, first, angles).numpy()
    pairs = np.stack([np.arange(len(xyz) - 1), np.arange(1, len(xyz))], axis=1)
    hops = RotorHopEstimator(states_per_well=2, turn=True).fit(xyz, pairs, adp.topology).fetch_model()
    assert hops.transition_matrices.shape == (3, 6, 6) and hops.turn and hops.states_per_well == 2
    # the estimator centres its bins on the data's three-fold phase: map the chain's bins onto its own
    bins = hops.states(turned_to(x, first, torch.as_tensor(first.phases)[None] + torch.tensor([[0.0], [np.pi / 3]])))
    for k, matrix in enumerate(hops.transition_matrices):
        visited = bins[:, k].numpy()
        assert abs(int(visited[1]) - int(visited[0])) in (1, 5)  # neighbouring bins
        assert np.abs(matrix[np.ix_(visited, visited)] - chain).max() < 0.04  # ~8,000 transitions: statistical error ~0.01
        # a bin never visited moves as the (circularly) nearest visited one
        for state in np.setdiff1d(np.arange(6), visited):
            distance = [min(abs(state - v), 6 - abs(state - v)) for v in visited]
            assert np.array_equal(matrix[state], matrix[visited[int(np.argmin(distance))]])
    restored = RotorHops.from_dict(hops.to_dict())
    assert restored.states_per_well == 2 and restored.turn
    assert np.array_equal(restored.transition_matrices, hops.transition_matrices)
    # chains stored before turning existed: three relabelled wells
    old = {k: v for k, v in first.to_dict().items() if k not in ("states_per_well", "turn")}
    assert RotorHops.from_dict(old).turn is False and RotorHops.from_dict(old).states_per_well == 1
    with pytest.raises(ValueError, match="1 unless the chain turns"):
        RotorHops(hops.groups, hops.axes, hops.phases, hops.transition_matrices, states_per_well=2, turn=False)
