"""Stiff coordinates: which atoms are placed, the Z-matrix round trip, the fitted regression's known answers
(a perfect decoder is left alone; a decoder that outputs the mean gets the reference's spread back), the CG
kept exactly, rotation invariance, bad input, and the rollout that draws them."""

from __future__ import annotations

import mdtraj as md
import numpy as np
import pytest
import torch

from tcbm.backmap import Backmapper, RolloutSettings
from tcbm.rotor_hops import rotor_axes
from tcbm.stereo import signed_volumes, stereocentres
from tcbm.stiff_coordinates import (
    StiffCoordinateEstimator,
    StiffCoordinates,
    context_values,
    internal_coordinates,
    place,
    placement_plan,
)
from tcbm.symmetry import rotor_hydrogen_groups, turn_groups


def anchored(system) -> np.ndarray:
    return np.asarray(system.mapping.weights.any(0))


def names(system, atoms) -> list[str]:
    return [str(system.topology.atom(int(a))) for a in atoms]


def perturbed(system, frames: int, sd_nm: float, seed: int) -> np.ndarray:
    """The packaged structure with Gaussian noise (``sd_nm`` per coordinate) on every atom without CG weight."""
    rng = np.random.default_rng(seed)
    x = np.repeat(system.reference_xyz.astype(np.float64)[None], frames, axis=0)
    return x + rng.normal(0.0, sd_nm, x.shape) * (~anchored(system))[None, :, None]


def test_the_hanging_atoms_are_placed_from_atoms_placed_before_them(adp, cln):
    rows, branches, context = placement_plan(adp.topology, anchored(adp))
    free = np.flatnonzero(~anchored(adp))
    assert sorted(rows[:, 0]) == list(free)  # every ADP atom without CG weight hangs off the backbone
    assert names(adp, rows[0]) == ["ACE1-CH3", "ACE1-C", "ALA2-N", "ALA2-CA"]  # the omega-like dihedral
    assert names(adp, branches[0]) == ["ACE1-H1", "ACE1-H2", "ACE1-H3"]  # carried with the methyl carbon
    # where the parent's other fixed neighbours lie in a row's frame: the amide H and the O sit in the plane of
    # (and bisect) angles the CG sets, Halpha's place depends on where its Calpha's N, Cbeta and C are
    assert [names(adp, [rows[k, 0], p]) for k, p in context] == [
        ["ALA2-H", "ALA2-CA"], ["ALA2-HA", "ALA2-CB"], ["ALA2-HA", "ALA2-C"], ["ALA2-O", "NME3-N"]]
    for k, (i, a, b, c) in enumerate(rows):
        earlier = set(rows[:k, 0]) | set(np.flatnonzero(anchored(adp)))
        assert {a, b, c} <= earlier and i not in (a, b, c)
    rows, branches, _ = placement_plan(cln.topology, anchored(cln))
    placed = set(names(cln, rows[:, 0]))
    # chignolin's CG is the Calpha trace: the backbone N and C are pinned between two of them and keep their
    # decoded places; the Halpha, the side chains and the carbonyl O hang off and are placed
    assert "TYR2-N" not in placed and "TYR2-C" not in placed and "TYR2-CA" not in placed
    assert {"TYR2-HA", "TYR2-CB", "TYR2-O", "TRP9-CB"} <= placed
    tyr_cb = names(cln, rows[:, 0]).index("TYR2-CB")
    assert len(branches[tyr_cb]) == 14  # the rest of the side chain, ring included, moves with Cbeta


def test_placing_from_internal_coordinates_gives_the_atom_back():
    x = torch.randn(10, 4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    q = internal_coordinates(x, torch.tensor([[0, 1, 2, 3]]))
    assert torch.allclose(place(x[:, 1], x[:, 2], x[:, 3], q[:, 0]), x[:, 0], atol=1e-12)


def test_context_directions_are_cosines_in_the_rows_frame(adp):
    rows, _, context = placement_plan(adp.topology, anchored(adp))
    x = torch.as_tensor(adp.reference_xyz, dtype=torch.float64)
    values = context_values(x, torch.as_tensor(rows), torch.as_tensor(context)).reshape(-1, 3)
    k, p = context[0]  # the amide H of Ala: frame (N, C of ACE, Calpha), context Calpha
    i, a, b, c = rows[k]
    assert c == p
    angle = float(torch.rad2deg(torch.arccos(values[0, 0])))  # along N -> C(ACE): cos of the angle C-N-CA
    wanted = float(np.degrees(md.compute_angles(md.Trajectory(adp.reference_xyz[None], adp.topology),
                                                [[b, a, p]])[0, 0]))
    assert angle == pytest.approx(wanted, abs=1e-4)
    assert values[0, 2].abs() < 1e-9 and torch.allclose(values.norm(dim=-1), torch.ones(len(values), dtype=torch.float64))


def test_a_perfect_decoder_is_left_alone(adp):
    frames = perturbed(adp, 400, 0.004, seed=0)
    model = StiffCoordinateEstimator().fit(frames[1:], frames[1:], frames[:-1], adp.topology,
                                           anchored(adp)).fetch_model()
    normals = torch.randn(5, model.n_draws, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = model.step(torch.as_tensor(frames[1:6]), torch.as_tensor(frames[:5]), normals)
    assert torch.allclose(out, torch.as_tensor(frames[1:6]), atol=1e-5)


def test_a_frame_outside_the_fit_is_not_extrapolated(adp):
    frames = perturbed(adp, 400, 0.004, seed=0)
    model = StiffCoordinateEstimator().fit(frames[1:], frames[1:], frames[:-1], adp.topology,
                                           anchored(adp)).fetch_model()
    oxygen, carbon = (next(a.index for a in adp.topology.atoms if str(a) == name) for name in ("ACE1-O", "ACE1-C"))
    far = frames[1:2].copy()
    far[0, oxygen] += 0.05 * (far[0, oxygen] - far[0, carbon]) / np.linalg.norm(far[0, oxygen] - far[0, carbon])
    out = model.step(torch.as_tensor(far), torch.as_tensor(frames[:1]), torch.zeros(1, model.n_draws, dtype=torch.float64))
    bond = float((out[0, oxygen] - out[0, carbon]).norm())
    fitted = np.linalg.norm(frames[:, oxygen] - frames[:, carbon], axis=-1)
    assert fitted.max() < 0.14 and bond <= fitted.max() + 1e-6  # a perfect decoder's fit would copy 0.17 nm


def test_a_mean_decoder_gets_the_reference_spread_back_and_the_cg_stays(adp):
    reference = perturbed(adp, 3000, 0.004, seed=0)
    mean_frame = np.repeat(adp.reference_xyz.astype(np.float64)[None], len(reference), axis=0)
    model = StiffCoordinateEstimator().fit(reference, mean_frame, None, adp.topology, anchored(adp)).fetch_model()
    assert not model.temporal
    normals = torch.randn(len(reference), model.n_draws, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    out = model.step(torch.as_tensor(mean_frame), torch.as_tensor(mean_frame), normals)
    drawn, wanted = (model.deviations(torch.as_tensor(x)) for x in (out.numpy(), reference))
    ratio = drawn.std(0) / wanted.std(0)
    assert ((ratio > 0.9) & (ratio < 1.1)).all()  # 3,000 draws: the sd's statistical error is ~1.3 %
    assert ((drawn.mean(0) - wanted.mean(0)).abs() < 0.1 * wanted.std(0)).all()
    assert torch.equal(out[:, anchored(adp)], torch.as_tensor(mean_frame)[:, anchored(adp)])
    centres = stereocentres(adp.topology)
    assert (np.sign(signed_volumes(out.numpy(), centres)) == np.sign(signed_volumes(reference[:1], centres))).all()


def test_a_rotor_keeps_its_well_and_gets_the_references_libration(adp):
    """The ACE methyl librates about its staggered minima (sd 12 deg) in the reference; a decoder that knows
    nothing of where (a uniform dihedral) gets the libration back, and each frame keeps its decoded well."""
    rng = np.random.default_rng(7)
    reference, decoded = perturbed(adp, 3000, 0.002, seed=8), perturbed(adp, 3000, 0.002, seed=9)
    groups = rotor_hydrogen_groups(adp.topology)
    ace = int(np.flatnonzero([str(adp.topology.atom(int(g[0]))) == "ACE1-H1" for g in groups])[0])
    rows, _, _ = placement_plan(adp.topology, anchored(adp))
    row = list(rows[:, 0]).index(groups[ace, 0])
    pivots = torch.as_tensor(rotor_axes(adp.topology, groups)[:, :2])

    def dihedral(x):  # of the methyl's first hydrogen, as its Z-matrix row defines it
        return internal_coordinates(torch.as_tensor(x), torch.as_tensor(rows[row:row + 1]))[:, 0, 2].numpy()

    def turned_to(x, target):
        angle = np.zeros((len(x), len(groups)))
        angle[:, ace] = target - dihedral(x)
        return turn_groups(torch.as_tensor(x), torch.as_tensor(groups), pivots, torch.as_tensor(angle)).numpy()

    def well(angle):
        return np.round(np.angle(np.exp(1j * (angle - minimum))) / (2 * np.pi / 3)) % 3

    minimum = 0.3
    reference = turned_to(reference, minimum + 2 * np.pi / 3 * rng.integers(0, 3, len(reference))
                          + rng.normal(0.0, np.radians(12.0), len(reference)))
    decoded = turned_to(decoded, rng.uniform(-np.pi, np.pi, len(decoded)))
    model = StiffCoordinateEstimator().fit(reference, decoded, None, adp.topology, anchored(adp)).fetch_model()
    assert model.periods[row] == 3 and model.stiff[row, 2]
    normals = torch.randn(len(decoded), model.n_draws, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    after = dihedral(model.step(torch.as_tensor(decoded), torch.as_tensor(decoded), normals).numpy())
    offset = np.angle(np.exp(3j * (after - minimum))) / 3
    assert abs(np.degrees(offset.std()) - 12.0) < 1.0 and abs(np.degrees(offset.mean())) < 1.0
    assert np.mean(well(after) == well(dihedral(decoded))) > 0.999  # a draw beyond +-60 deg (5 sd) crosses
    no_rotors = StiffCoordinateEstimator().fit(reference, decoded, None, adp.topology, anchored(adp),
                                               np.zeros((0, 3), dtype=np.int64)).fetch_model()
    assert no_rotors.periods[row] == 1 and not no_rotors.stiff[row, 2]  # a turning chain owns the whole dihedral


def test_a_constrained_bond_gets_its_length_without_noise(adp):
    """Bonds to hydrogen held fixed in the reference and stored at 0.001 nm precision (as an XTC file does) are
    not vibrations: they get the reference's length, however wrong the decoded one, while the other stiff
    coordinates are drawn."""
    rows, _, _ = placement_plan(adp.topology, anchored(adp))
    hydrogen = np.array([adp.topology.atom(int(i)).element.symbol == "H" for i in rows[:, 0]])

    def constrained(x, rounded):
        x = x.copy()
        i, a = rows[hydrogen, 0], rows[hydrogen, 1]
        bond = x[:, i] - x[:, a]
        x[:, i] = x[:, a] + 0.109 * bond / np.linalg.norm(bond, axis=-1, keepdims=True)  # X-H at 0.109 nm
        return np.round(x, 3) if rounded else x

    reference = constrained(perturbed(adp, 2000, 0.004, seed=10), rounded=True)
    decoded = perturbed(adp, 2000, 0.004, seed=11)  # X-H lengths off by ~0.005 nm
    model = StiffCoordinateEstimator().fit(reference, decoded, None, adp.topology, anchored(adp)).fetch_model()
    normals = torch.randn(len(decoded), model.n_draws, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    out = model.step(torch.as_tensor(decoded), torch.as_tensor(decoded), normals)
    lengths = internal_coordinates(out, torch.as_tensor(rows))[..., 0]
    assert torch.allclose(lengths[:, hydrogen], torch.tensor(0.109, dtype=torch.float64), atol=1e-3)  # the rounding
    assert (lengths[:, hydrogen].std(0) < 1e-9).all()  # no noise: the same length in every frame
    assert (lengths[:, ~hydrogen].std(0) > 0.002).all()  # the heavy atoms' bonds are drawn (reference sd ~0.005)


def test_the_penalty_is_chosen_by_how_well_the_decoder_predicts(adp):
    """Cross-validation keeps a decoder that predicts (here: the truth plus small noise) nearly unpenalised and
    shrinks one that does not (independent frames): its ~100 regressors on 150 frames would interpolate."""
    reference = perturbed(adp, 150, 0.004, seed=12)
    informative = reference + np.random.default_rng(13).normal(0.0, 0.0005, reference.shape) * (~anchored(adp))[None, :, None]
    useless = perturbed(adp, 150, 0.004, seed=14)
    good = StiffCoordinateEstimator().fit(reference, informative, None, adp.topology, anchored(adp))
    bad = StiffCoordinateEstimator().fit(reference, useless, None, adp.topology, anchored(adp))
    assert good.ridge_ <= 1e-2 and bad.ridge_ >= 1.0
    model = bad.fetch_model()
    unpenalised = StiffCoordinateEstimator(ridge=1e-6).fit(reference, useless, None, adp.topology,
                                                           anchored(adp)).fetch_model()
    new = torch.as_tensor(perturbed(adp, 200, 0.004, seed=15))  # frames the fit has not seen
    truth = model.deviations(torch.as_tensor(perturbed(adp, 200, 0.004, seed=16)))

    def error(m):
        return float(((m.regressors(new, new) @ torch.as_tensor(m.coefficients).T + torch.as_tensor(m.intercept)
                       - truth) ** 2).mean())

    assert error(model) < error(unpenalised)


def test_a_step_turns_with_the_molecule(adp):
    frames = perturbed(adp, 300, 0.004, seed=3)
    decoded = perturbed(adp, 300, 0.004, seed=4)
    model = StiffCoordinateEstimator().fit(frames[1:], decoded[1:], frames[:-1], adp.topology,
                                           anchored(adp)).fetch_model()
    rotation = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5)))[0]
    rotation = rotation * torch.linalg.det(rotation)  # proper
    x, prev = torch.as_tensor(decoded[1:4]), torch.as_tensor(frames[:3])
    normals = torch.randn(3, model.n_draws, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    assert torch.allclose(model.step(x @ rotation.T + 1.0, prev @ rotation.T + 1.0, normals),
                          model.step(x, prev, normals) @ rotation.T + 1.0, atol=1e-9)


def test_bad_input_is_rejected(adp):
    frames = perturbed(adp, 10, 0.004, seed=0)
    with pytest.raises(ValueError, match="do not fit"):
        StiffCoordinateEstimator().fit(frames, frames[:, :5], None, adp.topology, anchored(adp))
    with pytest.raises(ValueError, match="at least 2 frames"):
        StiffCoordinateEstimator().fit(frames[:1], frames[:1], None, adp.topology, anchored(adp))
    with pytest.raises(ValueError, match="max_dihedral_sd"):
        StiffCoordinateEstimator(max_dihedral_sd=0.0)
    with pytest.raises(RuntimeError, match="not been called"):
        StiffCoordinateEstimator().fetch_model()
    model = StiffCoordinateEstimator().fit(frames, frames, None, adp.topology, anchored(adp)).fetch_model()
    state = model.to_dict()
    state["noise"] = state["noise"][:-1]
    with pytest.raises(ValueError, match="noise must have shape"):
        StiffCoordinates.from_dict(state)
    with pytest.raises(ValueError, match="stiff_coordinates must be true or false"):
        RolloutSettings(stiff_coordinates="yes")


def test_the_rollout_draws_stiff_coordinates_from_the_artefacts_library(tiny_model, cg_inputs, adp):
    cg = [md.load(str(cg_inputs[0])).xyz]
    on = Backmapper(tiny_model, RolloutSettings(progress=False)).backmap(cg)[0]
    again = Backmapper(tiny_model, RolloutSettings(progress=False)).backmap(cg)[0]
    off = Backmapper(tiny_model, RolloutSettings(progress=False, stiff_coordinates=False)).backmap(cg)[0]
    assert np.array_equal(on, again)  # the fit and the draws are seeded
    fixed = anchored(adp)
    # frame 0 is decoded from the same seed frame either way: its CG atoms are as decoded, the others redrawn
    assert np.array_equal(on[0, fixed], off[0, fixed])
    assert np.abs(on[0, ~fixed] - off[0, ~fixed]).max() > 1e-3
    model = tiny_model.stiff_coordinates()
    assert model.temporal and model is tiny_model.stiff_coordinates()  # fitted once per artefact
