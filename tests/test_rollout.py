"""The shared autoregressive step, pushforward training, free bits, precision and rotor observables."""

import mdtraj as md
import numpy as np
import pytest
import torch
from test_model import batch_of, make_module

from tcbm import losses
from tcbm.analysis.observables import dihedral_autocorrelation, methyl_rotors, rotor_autocorrelations
from tcbm.data import load_aa_trajectories
from tcbm.rollout import advance, autocast_context, step
from tcbm.schedules import UnrollSchedule
from tcbm.voxels import VoxelGrid


def test_unroll_curriculum():
    schedule = UnrollSchedule(steps=3, start_step=100, ramp_steps=50)
    assert [schedule(s) for s in (0, 99, 100, 149, 150, 200, 10_000)] == [0, 0, 1, 1, 2, 3, 3]
    assert UnrollSchedule(steps=2, start_step=10)(10) == 2 and UnrollSchedule()(10**6) == 0
    with pytest.raises(ValueError, match="unroll"):
        UnrollSchedule(fraction=1.5)


def test_step_is_translation_equivariant_and_advance_keeps_order(adp_traj, adp):
    module = make_module(adp).eval()
    batch = batch_of(adp_traj, adp, n=4, augment=False)
    z = torch.randn(4, module.model.latent_dim)
    shift = torch.tensor([0.7, -1.2, 3.0])
    with torch.no_grad():
        a = step(module.model, batch["cg"], batch["aa_prev"], z)
        b = step(module.model, batch["cg"] + shift, batch["aa_prev"] + shift, z)
    assert torch.allclose(a + shift, b, atol=1e-5)
    stack = torch.arange(3.0).view(1, 3, 1, 1).expand(2, 3, 4, 3)
    assert advance(stack, torch.full((2, 4, 3), 9.0))[0, :, 0, 0].tolist() == [9.0, 0.0, 1.0]


def test_pushforward_conditions_part_of_the_batch_on_the_models_own_frames(adp_traj, adp):
    module = make_module(adp, unroll={"steps": 2, "fraction": 0.5})
    batch = batch_of(adp_traj, adp, n=8, history=3)  # history 1 + 2 unrolled frames
    truth = batch["aa_prev"][:, :1].clone()
    seen = []
    module.model.condition = lambda cg, prev, f=module.model.condition: seen.append(prev.clone()) or f(cg, prev)
    loss = module.training_step(batch, 0)
    loss.backward()
    assert len(seen) == 3  # two unrolled steps, then the training pass
    conditioned = seen[-1]
    assert conditioned.shape == truth.shape
    assert not torch.allclose(conditioned[:4], truth[:4], atol=1e-3)  # rows 0-3: the model's rollout
    assert torch.equal(conditioned[4:], truth[4:])  # rows 4-7: the true previous frame
    assert module.model.decoder.out.weight.grad is not None
    frame_based = make_module(adp, history=0, unroll={"steps": 2})  # nothing to unroll: plain training
    assert torch.isfinite(frame_based.training_step(batch_of(adp_traj, adp, history=0), 0))


def test_free_bits_exempt_small_kl_only():
    mean = torch.tensor([[0.1, 2.0], [-0.1, 2.0]])
    log_var = torch.zeros(2, 2)
    per_dim = losses.kl_per_dimension(mean, log_var)
    assert per_dim.tolist() == pytest.approx([0.005, 2.0])
    assert losses.kl_loss(mean, log_var).item() == pytest.approx(2.005)
    assert losses.kl_loss(mean, log_var, free_bits=0.5).item() == pytest.approx(2.5)
    assert losses.active_units(mean).item() == 1  # only the first dimension varies over the batch


def test_bf16_autocast_keeps_coordinates_of_a_trained_model(adp_traj, adp):
    torch.manual_seed(0)
    module = make_module(adp)
    batch = batch_of(adp_traj, adp, n=16, augment=False)
    optimizer = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        module._total(module._terms(batch, sample=False)[0]).backward()
        optimizer.step()
    module.eval()
    z = torch.zeros(16, module.model.latent_dim)
    with torch.no_grad():
        fp32 = step(module.model, batch["cg"], batch["aa_prev"], z)
        with autocast_context(torch.device("cpu"), "bf16"):
            bf16 = step(module.model, batch["cg"], batch["aa_prev"], z)
    assert bf16.dtype == torch.float32
    assert (fp32 - batch["aa"]).norm(dim=-1).mean() < 0.1  # it did learn
    # the output layer, softmax and read-out run in float32; the bf16 hidden features still cost
    # ~5e-4 nm RMS (max ~3e-3 nm; 4.8e-3 with the output layer in bf16, measured on this model)
    assert (bf16 - fp32).pow(2).mean().sqrt() < 1e-3 and (bf16 - fp32).abs().max() < 5e-3
    with pytest.raises(ValueError, match="autocast"):
        autocast_context(torch.device("cpu"), "int8")


def spun_methyls(adp_traj, rad_per_frame: float, frames: int = 200) -> md.Trajectory:
    """The first frame repeated, with the Ala methyl hydrogens rotated about CA–CB by a fixed angle per frame."""
    traj = md.load(str(adp_traj[0]), top=str(adp_traj[1]))[0]
    top = traj.topology
    cb = top.select("resname ALA and name CB")[0]
    ca = top.select("resname ALA and name CA")[0]
    hydrogens = [a.index for a in top.atoms if a.residue.name == "ALA" and a.name.startswith("HB")]
    x = np.repeat(traj.xyz, frames, axis=0)
    axis = x[0, cb] - x[0, ca]
    axis /= np.linalg.norm(axis)
    for t in range(frames):
        angle = rad_per_frame * t
        k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
        rotation = np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k
        x[t, hydrogens] = (x[0, hydrogens] - x[0, cb]) @ rotation.T + x[0, cb]
    return md.Trajectory(x, top, time=np.arange(frames, dtype=float))


def test_methyl_rotors_of_adp(adp):
    rotors = methyl_rotors(adp.topology)
    assert sorted(rotors) == ["ACE1:CH3", "ALA2:CB", "NME3:C"]
    assert all(len(q) == 4 for q in rotors.values())


def test_rotor_autocorrelation_known_answers(adp_traj):
    spun = rotor_autocorrelations(spun_methyls(adp_traj, 0.05), [1.0, 20.0], dt_ps=1.0)
    assert spun["ALA2:CB"] == pytest.approx([np.cos(0.05), np.cos(1.0)], abs=1e-3)
    assert spun["ACE1:CH3"] == pytest.approx([1.0, 1.0], abs=1e-6)  # not spun: frozen
    hops = np.repeat([0.0, 2 * np.pi / 3], 50)[:, None]  # one 120° hop half-way
    assert dihedral_autocorrelation(hops, [50])[0, 0] == pytest.approx(-0.5)
    assert np.isnan(dihedral_autocorrelation(hops, [100])).all()  # no pair of frames that far apart


def test_refinement_thermalises_distorted_frames_on_the_cg(adp_traj, adp):
    from tcbm.analysis.observables import potential_energies
    from tcbm.refine import RefinementSettings, Refiner

    xyz = torch.as_tensor(md.load(str(adp_traj[0]), top=str(adp_traj[1])).xyz[::6][:16])
    cg = adp.mapping(xyz)
    distorted = xyz + 0.015 * torch.randn(xyz.shape, generator=torch.Generator().manual_seed(0))
    refiner = Refiner(adp, RefinementSettings(steps=40, minimize_steps=40))
    noise = torch.randn(16, *refiner.noise_shape(), generator=torch.Generator().manual_seed(1))
    refined = refiner(distorted, cg, noise)
    u_ref, u_bad, u_new = (np.median(potential_energies(x.numpy(), adp)) for x in (xyz, distorted, refined))
    assert u_bad - u_ref > 300  # the distortion costs hundreds of kJ/mol
    assert abs(u_new - u_ref) < 40  # refinement brings the energy back to the thermal range
    assert torch.allclose(adp.mapping(refined), cg, atol=1e-5)  # restrained to the CG exactly
    heavy, hydrogen = refiner.constraints.pairs[:, 0], refiner.constraints.pairs[:, 1]
    lengths = (refined[:, hydrogen] - refined[:, heavy]).norm(dim=-1).double()
    assert len(hydrogen) == 12 and torch.allclose(lengths, refiner.constraints.lengths.expand_as(lengths), atol=1e-5)


def test_refinement_dynamics_keep_equilibrium_frames_at_equilibrium(adp_traj, adp):
    """Frames from the OBC simulation at 300 K stay in that ensemble under the Langevin stage (same force
    field and temperature), while the minimisation alone takes them below it."""
    from tcbm.energy import MMEnergy
    from tcbm.refine import RefinementSettings, Refiner

    xyz = torch.as_tensor(md.load(str(adp_traj[0]), top=str(adp_traj[1])).xyz[::3][:32], dtype=torch.float64)
    cg = adp.mapping(xyz)
    energy = MMEnergy(adp.openmm_system("obc"))
    refiner = Refiner(adp, RefinementSettings(steps=150, minimize_steps=0))
    noise = torch.randn(32, *refiner.noise_shape(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def fast_terms(x):  # bonds and angles: thermalised within the run, ~kT/2 per mode
        terms = energy.terms(x)
        return (terms["bond"] + terms["angle"]).mean().item()

    dynamics = refiner(xyz, cg, noise)
    minimised = Refiner(adp, RefinementSettings(steps=0, minimize_steps=200))(xyz, cg, noise[:, :1])
    assert abs(fast_terms(dynamics) - fast_terms(xyz)) < 4.0  # ~51-57 kJ/mol at 300 K; at 255 K (15 % cold): -4.5
    assert (dynamics - xyz).norm(dim=-1).mean() > 0.01  # the atoms did move
    assert energy(minimised).mean() < energy(xyz).mean() - 40.0
    assert torch.allclose(adp.mapping(dynamics), cg, atol=1e-6) and torch.allclose(adp.mapping(minimised), cg, atol=1e-6)


def test_refined_rollouts_do_not_depend_on_batching(tiny_model, cg_inputs):
    from tcbm.backmap import Backmapper, RolloutSettings
    from tcbm.refine import RefinementSettings

    cg = [md.load(str(p)).xyz[:6] for p in cg_inputs]
    refine = RefinementSettings(steps=3, minimize_steps=10)
    batched = Backmapper(tiny_model, RolloutSettings(progress=False, refinement=refine), "cpu").backmap(cg)
    single = Backmapper(tiny_model, RolloutSettings(batch_size=1, progress=False, refinement=refine), "cpu").backmap(cg)
    plain = Backmapper(tiny_model, RolloutSettings(progress=False), "cpu").backmap(cg)
    for x, y, z in zip(batched, single, plain, strict=True):
        assert np.abs(x - y).max() < 1e-3 and np.abs(x - z).max() > 1e-3


def test_latent_input_channels_reach_the_first_convolution(adp_traj, adp):
    from tcbm.lightning import CVAEModule

    network = {"latent_dim": 4, "width": 8, "depth": 1, "history": 1, "latent_input": True}
    module = CVAEModule(adp.to_dict(), {"d": 12, "r_grid": 2.0, "sigma": 0.12}, network)
    stem = module.model.decoder.stem[0][0]
    assert stem.in_channels == adp.n_beads + adp.n_atoms + 4
    batch = batch_of(adp_traj, adp)
    loss = module._total(module._terms(batch, sample=True)[0])
    loss.backward()
    assert stem.weight.grad[:, -4:].abs().sum() > 0  # the z channels get gradient


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graph_rollout_equals_eager_rollout(tiny_model, cg_inputs):
    from tcbm.backmap import Backmapper, RolloutSettings

    cg = [md.load(str(p)).xyz for p in cg_inputs]
    for batch_size in (1, 8):  # one trajectory per graph, and all of them in one
        runs = [Backmapper(tiny_model, RolloutSettings(batch_size=batch_size, progress=False, cuda_graph=graph),
                           "cuda") for graph in (True, False)]
        graphed, eager = (r.backmap(cg) for r in runs)
        assert len(runs[0].graphs) == 1 and runs[1].graphs is None  # one capture, replayed for every group
        for x, y in zip(graphed, eager, strict=True):
            assert np.abs(x - y).max() < 1e-5


@pytest.mark.parametrize("kind", [True, "smooth"])
def test_projected_model_reproduces_the_cg_exactly_and_survives_save_and_load(tmp_path, adp_traj, adp, kind):
    from tcbm.artifact import BackmapModel, SeedLibrary
    from tcbm.latent import LatentSampler
    from tcbm.model import BackmapCVAE

    grid = VoxelGrid(d=8, r_grid=2.0, sigma=0.2)
    config = {"latent_dim": 3, "width": 4, "history": 1, "project_cg": kind}
    with pytest.raises(ValueError, match="for_system"):
        BackmapCVAE(adp.n_atoms, adp.n_beads, grid, **config)
    torch.manual_seed(0)
    network = BackmapCVAE.for_system(adp, grid, **config).eval()
    xyz = torch.as_tensor(load_aa_trajectories(str(adp_traj[0]), adp).xyz[:6])
    cg = adp.mapping(xyz[1:]) + 0.05  # CG frames that no all-atom frame of the data has
    z = torch.randn(5, 3)
    with torch.no_grad():
        frames = step(network, cg, xyz[:-1, None], z)
        unprojected = BackmapCVAE.for_system(adp, grid, **{**config, "project_cg": False})
        unprojected.load_state_dict(network.state_dict())
        raw = step(unprojected.eval(), cg, xyz[:-1, None], z)
    assert (adp.mapping(frames) - cg).abs().max() < 1e-5
    assert (adp.mapping(raw) - cg).abs().max() > 1e-3  # the untrained decoder alone does not
    library = SeedLibrary.from_frames(xyz.numpy(), np.arange(1, 6), adp.mapping, 1, 1)
    model = BackmapModel(network, config, adp, LatentSampler.fit(np.zeros((20, 3)), n_components=1), library)
    loaded = BackmapModel.load(model.save(tmp_path / "model.pt"))
    with torch.no_grad():
        torch.testing.assert_close(step(loaded.network, cg, xyz[:-1, None], z), frames)


def test_kl_against_a_learned_prior_has_known_values():
    mean, log_var = torch.tensor([[1.0], [1.0]]), torch.zeros(2, 1)
    prior_mean, prior_log_var = torch.zeros(2, 1), torch.full((2, 1), float(np.log(4.0)))
    # KL(N(1, 1) || N(0, 4)) = (1/4 + 1/4 - 1 - ln(1/4)) / 2
    expected = 0.5 * (0.25 + 0.25 - 1 - np.log(0.25))
    assert losses.kl_loss(mean, log_var, 0.0, prior_mean, prior_log_var).item() == pytest.approx(expected, rel=1e-6)
    assert losses.kl_loss(mean, log_var, 0.0, mean, log_var).item() == pytest.approx(0.0, abs=1e-7)
    standard = losses.kl_loss(mean, log_var)
    assert losses.kl_loss(mean, log_var, 0.0, torch.zeros(2, 1), torch.zeros(2, 1)).item() == pytest.approx(standard.item())
    # a posterior that only follows its (condition-dependent) prior carries no information
    moving = torch.tensor([[-2.0, 0.0], [3.0, 0.0], [0.5, 0.0]])
    assert losses.active_units(moving).item() == 1
    assert losses.active_units(moving, prior_mean=moving, prior_log_var=torch.zeros(3, 2)).item() == 0


def test_conditional_prior_maps_standard_normal_draws_through_p_z_given_condition(adp_traj, adp):
    from tcbm.lightning import CVAEModule

    torch.manual_seed(0)
    network = {"latent_dim": 4, "width": 8, "depth": 1, "history": 1, "conditional_prior": True,
               "latent_input": True}
    module = CVAEModule(adp.to_dict(), {"d": 8, "r_grid": 2.0, "sigma": 0.2}, network)
    model = module.model
    batch = batch_of(adp_traj, adp, n=4, augment=False)
    cond = model.condition(batch["cg"], batch["aa_prev"])
    noise = torch.randn(4, 4)
    with torch.no_grad():
        model.prior.head.bias.copy_(torch.linspace(-1.0, 1.0, 8))  # a prior far from N(0, I)
        mean, log_var = model.prior(cond)
        generated = step(model, batch["cg"], batch["aa_prev"], noise)
        decoded = model.decode(cond, mean + noise * (0.5 * log_var).exp(), batch["cg"], batch["aa_prev"])[1]
        unmapped = model.decode(cond, noise, batch["cg"], batch["aa_prev"])[1]
    assert torch.allclose(generated, decoded, atol=1e-5)  # the shared step draws from p(z | condition)
    assert not torch.allclose(generated, unmapped, atol=1e-4)
    assert module.kl_weight(0) == 0.0
    module.training_step(batch_of(adp_traj, adp, n=4), 0).backward()
    assert model.prior.head.weight.grad.abs().sum() > 0  # the prior fits the posterior even while β is 0


def test_output_skip_routes_each_atoms_previous_position_to_its_own_output(adp_traj, adp):
    from tcbm.model import BackmapCVAE

    torch.manual_seed(0)
    model = BackmapCVAE(adp.n_atoms, adp.n_beads, VoxelGrid(d=12, r_grid=2.0, sigma=0.12), latent_dim=4, width=8,
                        history=1, previous_prior=False, output_skip=True)
    batch = batch_of(adp_traj, adp, n=1, augment=False)
    with torch.no_grad():  # the output convolution reads only the previous frame's channels, atom i -> atom i
        model.decoder.out.weight.zero_()
        for i in range(adp.n_atoms):
            model.decoder.out.weight[i, 8 + adp.n_beads + i, 1, 1, 1] = 20.0
        moved = batch["aa_prev"].clone()
        moved[0, 0, 5, 0] += 0.3  # atom 5 of the previous frame, 0.3 nm along x
        decoded = [model.decode(model.condition(batch["cg"], prev), torch.zeros(1, 4), batch["cg"])[1]
                   for prev in (batch["aa_prev"], moved)]
    shift = decoded[1] - decoded[0]
    assert shift[0, 5, 0] > 0.05  # atom 5 follows its previous position
    assert shift[0, torch.arange(adp.n_atoms) != 5].abs().max() < 1e-5  # and no other atom moves
