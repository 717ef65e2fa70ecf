import csv

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tcbm import losses
from tcbm.artifact import BackmapModel, SeedLibrary
from tcbm.data import TripleDataset, load_aa_trajectories
from tcbm.latent import LatentSampler
from tcbm.lightning import CVAEModule, NonFiniteLossError
from tcbm.model import BackmapCVAE
from tcbm.schedules import EnergyWeight, KLWeight
from tcbm.voxels import VoxelGrid

GRID = {"d": 12, "r_grid": 2.0, "sigma": 0.12}


def make_module(system, history=1, grid=GRID, network_extra=None, **kwargs):
    network = {"latent_dim": 4, "width": 8, "depth": 1, "history": history, **(network_extra or {})}
    return CVAEModule(system.to_dict(), grid, network, **kwargs)


def batch_of(adp_traj, adp, n=8, history=1, augment=True):
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    targets = np.arange(history, history + n)
    return TripleDataset(data.xyz, targets, adp.mapping, 1, history, augment).__getitems__(list(range(n)))


def test_energy_weight_schedule():
    lam = EnergyWeight(final=2.0, warmup_steps=100, tau_steps=50)
    assert lam(0) == 0.0 and lam(99) == 0.0 and lam(100) == 0.0
    assert lam(150) == pytest.approx(2.0 * (1 - np.exp(-1)))
    assert lam(10_000) == pytest.approx(2.0)


def test_cyclic_and_constant_kl_schedule():
    beta = KLWeight(mode="cyclic", beta_max=0.5, total_steps=400, n_cycles=4, ratio=0.5)
    assert [beta(s) for s in (0, 25, 50, 99, 100, 125)] == pytest.approx([0.0, 0.25, 0.5, 0.5, 0.0, 0.25])
    assert KLWeight(mode="constant", beta_max=1.0)(12345) == 1.0
    with pytest.raises(ValueError):
        KLWeight(mode="linear")


def test_all_loss_terms_have_gradients(adp_traj, adp):
    module = make_module(adp, energy_weight={"final": 1.0, "warmup_steps": 0, "tau_steps": 1.0})
    module.energy_weight = EnergyWeight(final=1.0, warmup_steps=-10, tau_steps=1.0)  # λ > 0 at step 0
    batch = batch_of(adp_traj, adp)
    terms, coords, _ = module._terms(batch, sample=True)
    assert set(terms) == {"vox", "aa", "cg", "edm", "energy", "kl", "chirality"}
    assert coords.shape == (8, 22, 3)
    for name, value in terms.items():
        if name == "chirality" and value == 0:  # no centre mirrored: nothing to push (tests/test_stereo.py)
            continue
        module.zero_grad()
        value.backward(retain_graph=True)
        grads = [p.grad.abs().sum() for p in module.model.parameters() if p.grad is not None]
        assert grads and sum(grads) > 0, name


def test_coordinate_gradients_are_each_weighted_terms_pull(adp_traj, adp):
    module = make_module(adp, energy_weight={"final": 1.0, "warmup_steps": 0, "tau_steps": 1.0})
    module.energy_weight = EnergyWeight(final=0.5, warmup_steps=-10, tau_steps=1e-9)  # λ = 0.5 at step 0
    batch = batch_of(adp_traj, adp)
    terms, coords, _ = module._terms(batch, sample=True)
    pulls = module.coordinate_gradients(terms, coords)
    # density terms (vox) and latent terms (kl) do not act through the coordinates; chirality weighs 0 here
    assert set(pulls) == {"aa", "cg", "edm", "energy"}
    # known answer: 100 · mean_atoms |c − a|² pulls atom i with 200 · |c_i − a_i| / (B · N)
    expected = (200 * (coords - batch["aa"]).norm(dim=-1) / coords.shape[:2].numel()).median()
    assert pulls["aa"].item() == pytest.approx(expected.item(), rel=1e-5)
    half = pulls["energy"].item()
    module.energy_weight = EnergyWeight(final=1.0, warmup_steps=-10, tau_steps=1e-9)
    assert module.coordinate_gradients(terms, coords)["energy"].item() == pytest.approx(2 * half, rel=1e-5)


@pytest.mark.parametrize("history", [0, 2])
def test_history_variants_train_a_step(adp_traj, adp, history):
    module = make_module(adp, history=history)
    batch = batch_of(adp_traj, adp, history=history)
    assert batch["aa_prev"].shape == (8, history, 22, 3)
    optimizer = torch.optim.Adam(module.parameters(), 1e-3)
    loss = module._total(module._terms(batch, sample=True)[0])
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)


def test_tiny_model_overfits_32_triples(adp_traj, adp):
    torch.manual_seed(0)
    module = make_module(adp, grid={"d": 8, "r_grid": 2.0, "sigma": 0.2}, kl_weight={"mode": "constant", "beta_max": 1e-4})
    batch = batch_of(adp_traj, adp, n=32, augment=False)
    optimizer = torch.optim.Adam(module.parameters(), 3e-3)
    first = None
    for _ in range(250):
        terms, _, _ = module._terms(batch, sample=True)
        first = first if first is not None else terms["aa"].item()
        optimizer.zero_grad()
        module._total(terms).backward()
        optimizer.step()
    final = module._terms(batch, sample=False)[0]["aa"].item()
    assert np.isfinite(final) and final < first / 10


def test_nan_loss_reports_step_and_term(adp_traj, adp):
    module = make_module(adp)
    batch = batch_of(adp_traj, adp)
    batch["aa"][0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"loss term '(vox|aa)' is nan at step 0"):
        module.training_step(batch, 0)


def test_gmm_sampler_latent_size_and_reproducible():
    rng = np.random.default_rng(0)
    sampler = LatentSampler.fit(np.concatenate([rng.normal(-3, 0.1, (200, 5)), rng.normal(3, 0.1, (200, 5))]), 10)
    z = sampler.sample(1000, torch.Generator().manual_seed(1))
    assert z.shape == (1000, 5)
    assert torch.equal(z, sampler.sample(1000, torch.Generator().manual_seed(1)))
    assert abs((z[:, 0] > 0).double().mean().item() - 0.5) < 0.1  # both modes sampled
    assert LatentSampler.prior(7).sample(3).shape == (3, 7)
    # temperature scales the spread about the component means: same draws, half the deviation; 0 = means
    cool = sampler.sample(1000, torch.Generator().manual_seed(1), temperature=0.5)
    centres = sampler.sample(1000, torch.Generator().manual_seed(1), temperature=0.0)
    assert set(centres[:, 0].round(decimals=6).tolist()) <= set(sampler.means[:, 0].round(decimals=6).tolist())
    torch.testing.assert_close(cool - centres, 0.5 * (z - centres))


def test_artefact_round_trip_gives_identical_decoder_outputs(tmp_path, adp_traj, adp):
    module = make_module(adp)
    data = load_aa_trajectories(str(adp_traj[0]), adp)
    library = SeedLibrary.from_frames(data.xyz, np.arange(1, 50), adp.mapping, 1, 1, max_frames=20)
    sampler = LatentSampler.prior(4)
    path = BackmapModel(module.model, {"latent_dim": 4, "width": 8, "depth": 1, "history": 1}, adp, sampler,
                        library).save(tmp_path / "model.pt")
    loaded = BackmapModel.load(path)
    batch = batch_of(adp_traj, adp, augment=False)
    z = torch.randn(8, 4)
    with torch.no_grad():
        a = module.model.decode(module.model.condition(batch["cg"], batch["aa_prev"]), z, batch["cg"], batch["aa_prev"])[1]
        b = loaded.network.decode(loaded.network.condition(batch["cg"], batch["aa_prev"]), z, batch["cg"], batch["aa_prev"])[1]
    assert torch.equal(a, b)
    assert loaded.system.n_atoms == 22 and loaded.library.cg.shape == (20, 6, 3)


def test_not_an_artefact(tmp_path):
    torch.save({"foo": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="is not a tcbm model artefact"):
        BackmapModel.load(tmp_path / "x.pt")


def train_config(tmp_path, adp_traj, **overrides):
    from hydra import compose, initialize_config_module

    args = [f"data.trajectories={adp_traj[0]}", f"out={tmp_path}", "trainer.max_steps=4",
            "trainer.val_check_interval=2", "trainer.log_every_n_steps=1", "data.batch_size=4",
            "data.val_fraction=0.2", "data.n_blocks=5", "model.network.width=4", "model.network.latent_dim=2",
            "model.gmm.components=2", "trainer.enable_progress_bar=false"]
    args += [f"{k}={v}" for k, v in overrides.items()]
    with initialize_config_module("tcbm.conf", version_base="1.3"):
        cfg = compose("train", overrides=args)
    OmegaConf.set_struct(cfg, False)
    return cfg


def test_train_end_to_end_and_resume_checks(tmp_path, adp_traj, adp, cln):
    from tcbm.training import check_checkpoint, train

    cfg = train_config(tmp_path, adp_traj, **{"model.network.hydrogen_angle_max_kT": 4.5})
    path = train(cfg)
    model = BackmapModel.load(path)
    # the angle bound, given in kT, is kept with the weights in kJ/mol at the data's temperature (300 K)
    assert model.network_config["hydrogen_angle_max_kJmol"] == pytest.approx(4.5 * 0.0083144626 * 300.0)
    assert model.network.angle_bounds is not None
    assert model.sampler.latent_dim == 2 and (tmp_path / "checkpoints" / "last.ckpt").exists()
    rows = [r for f in (tmp_path / "logs").rglob("metrics.csv") for r in csv.DictReader(f.open())]
    assert any(float(r.get("train/coord_grad/aa") or 0) > 0 for r in rows)  # each term's pull on the atoms is logged
    # constrain_hbonds: auto, resolved on the (constrained) training data and kept with the weights
    assert model.network_config["constrain_hbonds"] is True and model.network.hbond_constraints is not None
    # symmetric rotors (default) and a previous frame: the rotor-hop chains of the three ADP methyls come along
    assert model.rotor_hops is not None and model.rotor_hops.transition_matrices.shape == (3, 3, 3)
    with pytest.raises(ValueError, match=r"system 'adp' \(22 atoms\) vs 'cln' \(138 atoms\)"):
        check_checkpoint(tmp_path / "checkpoints" / "last.ckpt", cln, model.grid, model.network_config)
    from tcbm.voxels import VoxelGrid

    with pytest.raises(ValueError, match="grid"):
        check_checkpoint(tmp_path / "checkpoints" / "last.ckpt", adp, VoxelGrid(d=16), model.network_config)


def test_fast_dev_run(tmp_path, adp_traj):
    from tcbm.training import train

    assert train(train_config(tmp_path, adp_traj, **{"trainer.fast_dev_run": "true"})) == tmp_path


def test_data_of_other_system_fails_before_training(tmp_path, adp_traj, cln):
    from tcbm.training import train

    with pytest.raises(ValueError, match="atoms"):
        train(train_config(tmp_path, adp_traj, system="cln"))


def test_previous_frame_noise_only_in_training(adp_traj, adp):
    module = make_module(adp, prev_noise_nm=0.05)
    batch = batch_of(adp_traj, adp)
    original = batch["aa_prev"].clone()
    seen = []
    module.model.condition = lambda cg, prev, f=module.model.condition: seen.append(prev) or f(cg, prev)
    assert torch.isfinite(module.training_step(batch, 0))
    assert torch.equal(batch["aa_prev"], original)  # the batch itself is untouched
    assert 0.02 < (seen[0] - original).std().item() < 0.08  # the network saw noised previous frames
    module.validation_step(batch, 0)
    assert torch.equal(seen[1], original)  # validation sees clean ones


def test_model_with_conditional_prior_ships_a_standard_normal_sampler(tmp_path, adp_traj):
    from tcbm.training import train

    model = BackmapModel.load(train(train_config(tmp_path, adp_traj, **{"model.network.conditional_prior": "true"})))
    assert model.network.conditional_prior
    assert model.sampler.weights.tolist() == [1.0] and not model.sampler.means.any()


def test_previous_frame_prior_alone_returns_the_previous_position_only_when_wide_enough(adp):
    """With the network's logits zeroed the decoded coordinates are the softmax mean of the prior alone: a
    Gaussian 0.3 grid spacings wide lands atoms up to 0.2 spacings off towards grid points; floored at 0.6
    spacings it returns the previous positions."""
    grid = VoxelGrid(**GRID)
    previous = torch.rand(4, 1, adp.n_atoms, 3, generator=torch.Generator().manual_seed(0)) - 0.5
    errors = {}
    for floor in (0.0, 0.6):
        model = BackmapCVAE(adp.n_atoms, adp.n_beads, grid, latent_dim=4, width=8, history=1,
                            previous_prior=True, prior_min_spacings=floor)
        with torch.no_grad():
            model.log_prior_width.fill_(np.log(0.3 * grid.spacing))
            model.decoder.out.weight.zero_()
            model.decoder.out.bias.zero_()
            cg = adp.mapping(previous[:, 0])
            coords = model.decode(model.condition(cg, previous), torch.zeros(4, 4), cg, previous)[1]
        errors[floor] = (coords - previous[:, 0]).abs().max().item() / grid.spacing
    assert errors[0.0] > 0.05 and errors[0.6] < 0.005


def test_aligned_previous_frames_make_the_output_blind_to_their_tumbling(adp_traj, adp):
    """With ``align_previous`` a previous frame rotated rigidly about its own CG decodes to the same frame
    (the network sees it superposed onto CG^t); without, the same rotation changes the output."""
    batch = batch_of(adp_traj, adp, n=4, augment=False)
    previous = batch["aa_prev"]
    centre = adp.mapping(previous[:, 0]).mean(1, keepdim=True)[:, None]
    angle = torch.tensor(0.7)
    c, s = torch.cos(angle), torch.sin(angle)
    rotation = torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    tumbled = (previous - centre) @ rotation.T + centre
    z = torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    change = {}
    for align in (False, True):
        torch.manual_seed(0)
        model = BackmapCVAE.for_system(adp, VoxelGrid(**GRID), latent_dim=4, width=8, history=1,
                                       previous_prior=True, prior_min_spacings=0.6, align_previous=align).eval()
        with torch.no_grad():
            a, b = (model.generate(model.condition(batch["cg"], p), z, batch["cg"], p)[1] for p in (previous, tumbled))
        change[align] = (a - b).abs().max().item()
    assert change[True] < 1e-4 < 0.01 < change[False]
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the superposition stays in float32
        aligned_bf16 = model.previous_in_cg_frame(batch["cg"], tumbled)
    assert aligned_bf16.dtype == torch.float32
    assert (aligned_bf16 - model.previous_in_cg_frame(batch["cg"], tumbled)).abs().max() < 1e-6


def test_aligned_previous_frames_need_three_beads_and_the_cg_map(adp):
    with pytest.raises(ValueError, match="for_system"):
        BackmapCVAE(adp.n_atoms, adp.n_beads, VoxelGrid(**GRID), align_previous=True)
    with pytest.raises(ValueError, match=">= 3 beads"):
        BackmapCVAE(adp.n_atoms, 2, VoxelGrid(**GRID), align_previous=True,
                    cg_map=(np.full((2, adp.n_atoms), 1.0 / adp.n_atoms), None))


def test_decoder_vox_scores_the_decoder_density_without_the_previous_frame_prior(adp_traj, adp):
    """With zeroed output weights the decoder alone predicts a uniform density, whatever the prior adds."""
    batch = batch_of(adp_traj, adp, n=4)
    module = make_module(adp, weights={"decoder_vox": 10.0},
                         network_extra={"previous_prior": True, "prior_min_spacings": 0.6})
    with torch.no_grad():
        module.model.decoder.out.weight.zero_()
        module.model.decoder.out.bias.zero_()
        terms = module._terms(batch, sample=False)[0]
    target = module.grid.normalized(batch["aa"])
    uniform = torch.full_like(target, 1.0 / target[0, 0].numel())
    expected = ((uniform - target) ** 2).flatten(2).sum(-1).mean().item()
    assert terms["decoder_vox"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["vox"].item() < 0.9 * terms["decoder_vox"].item()  # the prior's density is closer to the truth
    without_prior = make_module(adp, weights={"decoder_vox": 10.0}, network_extra={"previous_prior": False})
    assert "decoder_vox" not in without_prior._terms(batch, sample=False)[0]


def test_chirality_margin_reaches_the_loss(adp_traj, adp):
    batch = batch_of(adp_traj, adp)
    for margin in (0.0, 2.0):
        module = make_module(adp, chirality_margin=margin)
        torch.manual_seed(0)
        terms, coords, _ = module._terms(batch, sample=False)
        expected = losses.chirality_loss(coords, batch["aa"], module.stereocentres, margin)
        assert terms["chirality"].item() == pytest.approx(expected.item())
        if margin:  # an untrained decoder's Cα is nowhere near twice the reference's volume
            assert terms["chirality"].item() > 0.5


def test_capped_pull_shortens_only_the_large_per_atom_gradients():
    coords = torch.zeros(1, 3, 3, requires_grad=True)
    forces = torch.tensor([[[10.0, 0.0, 0.0], [0.0, 0.03, -0.04], [3.0, 4.0, 0.0]]])
    (losses.capped_pull(coords, 1.0) * forces).sum().backward()
    expected = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 0.03, -0.04], [0.6, 0.8, 0.0]]])
    torch.testing.assert_close(coords.grad, expected)
    assert losses.capped_pull(coords, 1.0) is not coords and torch.equal(losses.capped_pull(coords, 1.0), coords)


def test_energy_max_pull_caps_the_energy_terms_pull_on_every_atom(adp_traj, adp):
    batch = batch_of(adp_traj, adp)

    def energy_pulls(cap):
        torch.manual_seed(0)  # the same weights every time
        module = make_module(adp, energy_max_pull=cap)
        module.energy_weight = EnergyWeight(final=0.5, warmup_steps=-10, tau_steps=1e-9)  # λ = 0.5 at step 0
        terms, coords, _ = module._terms(batch, sample=False)
        (grad,) = torch.autograd.grad(0.5 * terms["energy"], coords)
        return grad.norm(dim=-1)

    free = energy_pulls(None)
    cap = free.median().item()  # half the atoms pulled harder than this
    capped = energy_pulls(cap)
    assert capped.max() <= cap * (1 + 1e-5) and free.max() > 2 * cap
    torch.testing.assert_close(capped[free < cap], free[free < cap])
    torch.testing.assert_close(capped[free > cap], torch.full_like(capped[free > cap], cap))
