import numpy as np
import pytest
import torch

from tcbm.balance import bead_distances, conformation_weights
from tcbm.data import BackmapDataModule


def two_state_cg(n_frames: int = 4000, rare_fraction: float = 0.1, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three beads; the distance of bead 2 from bead 0 switches slowly between 0.3 nm and 0.6 nm (the rare state),
    every other coordinate jitters fast.  Returns the CG frames (T, 3, 3) nm and the rare-state mask."""
    rng = np.random.default_rng(seed)
    stay = 0.99
    leave_rare = 1 - stay
    enter_rare = leave_rare * rare_fraction / (1 - rare_fraction)  # stationary rare fraction
    rare = np.zeros(n_frames, dtype=bool)
    for t in range(1, n_frames):
        rare[t] = rng.random() > leave_rare if rare[t - 1] else rng.random() < enter_rare
    cg = np.zeros((n_frames, 3, 3))
    cg[:, 1, 0] = 0.4 + 0.01 * rng.standard_normal(n_frames)
    cg[:, 2, 1] = np.where(rare, 0.6, 0.3) + 0.01 * rng.standard_normal(n_frames)
    return cg, rare


def test_bead_distances():
    cg = np.array([[[0, 0, 0], [0.3, 0, 0], [0, 0.4, 0]]])
    np.testing.assert_allclose(bead_distances(cg), [[0.3, 0.4, 0.5]])


def test_power_one_draws_each_state_equally_often_and_zero_uniformly():
    cg, rare = two_state_cg()
    assert 0.03 < rare.mean() < 0.25
    (uniform,) = conformation_weights([cg], power=0.0, dims=1, bins=2)
    np.testing.assert_allclose(uniform, 1.0)
    (equal,) = conformation_weights([cg], power=1.0, dims=1, bins=2)
    assert equal[rare].sum() / equal.sum() == pytest.approx(0.5, abs=1e-9)
    (soft,) = conformation_weights([cg], power=0.5, dims=1, bins=2)
    share = soft[rare].sum() / soft.sum()
    expected = np.sqrt(rare.sum()) / (np.sqrt(rare.sum()) + np.sqrt((~rare).sum()))
    assert share == pytest.approx(expected, abs=1e-9)
    assert soft.mean() == pytest.approx(1.0)


def test_weights_split_back_per_trajectory_and_do_not_depend_on_orientation():
    cg, _ = two_state_cg()
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((3, 3)))
    parts = conformation_weights([cg[:1500], cg[1500:] @ q.T + 2.0], power=0.5, dims=1, bins=2)
    assert [len(p) for p in parts] == [1500, len(cg) - 1500]
    unmoved = conformation_weights([cg[:1500], cg[1500:]], power=0.5, dims=1, bins=2)
    np.testing.assert_allclose(np.concatenate(parts), np.concatenate(unmoved))


@pytest.mark.parametrize("kwargs, message", [
    (dict(power=-1.0), "power"),
    (dict(power=0.5, tica_lag=5000), "tica_lag"),
])
def test_bad_settings_are_named(kwargs, message):
    cg, _ = two_state_cg(n_frames=200)
    with pytest.raises(ValueError, match=message):
        conformation_weights([cg], **kwargs)


def test_two_beads_are_refused():
    with pytest.raises(ValueError, match="3 CG beads"):
        conformation_weights([np.zeros((50, 2, 3))], power=0.5)


def test_balanced_loader_draws_rare_cg_conformations_more_often(adp_traj, adp):
    torch.manual_seed(0)
    plain = BackmapDataModule(adp, str(adp_traj[0]), batch_size=16)
    balanced = BackmapDataModule(adp, str(adp_traj[0]), batch_size=16,
                                 balance=dict(power=1.0, dims=1, bins=4, tica_lag=2))
    np.testing.assert_array_equal(plain.train_idx, balanced.train_idx)
    weights = balanced.train_weights
    assert weights.shape == balanced.train_idx.shape and np.all(weights > 0)
    drawn = np.concatenate([batch["index"].numpy() for batch in balanced.train_dataloader()])
    assert len(drawn) == len(balanced.train_idx) // 16 * 16  # an epoch is as long as without balancing
    # frames in sparsely populated bins of the slow coordinate are drawn far more often than their share
    rare = weights > np.median(weights)
    rare_frames = set(balanced.train_idx[rare].tolist())
    assert np.mean([t in rare_frames for t in drawn]) > 2 * rare.mean()
