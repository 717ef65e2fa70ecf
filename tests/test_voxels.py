import math
import platform

import pytest
import torch

from tcbm.geometry import random_rotations
from tcbm.voxels import PROFILE_CUTOFF_SIGMAS, VoxelGrid


def test_round_trip_below_1e3_nm_at_default_grid():
    grid = VoxelGrid()
    x = (torch.rand(64, 22, 3, dtype=torch.float64) * 2 - 1) * grid.max_radius
    error = (grid.coordinates(grid.voxelize(x)) - x).norm(dim=-1).max()
    assert error < 1e-3


def test_separable_density_equals_direct_gaussian():
    grid = VoxelGrid(d=8, r_grid=1.6, sigma=0.2)
    x = torch.randn(2, 3, 3, dtype=torch.float64) * 0.2
    axis = grid.axis(x)
    points = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1)
    direct = torch.exp(-((points[None, None] - x[:, :, None, None, None]) ** 2).sum(-1) / (2 * grid.sigma**2))
    # equal up to the profile cut-off (values below exp(-cutoff²/2) of the peak are 0)
    assert torch.allclose(grid.voxelize(x), direct, atol=math.exp(-0.5 * PROFILE_CUTOFF_SIGMAS**2), rtol=0)


def test_float32_densities_hold_no_subnormals():
    """Subnormal floats slow CPU convolutions ~15-fold; a wide grid with a narrow Gaussian produces them
    (products of three tails) unless the profiles are cut."""
    grid = VoxelGrid(d=16, r_grid=5.0, sigma=0.2)
    x = (torch.rand(4, 50, 3) * 2 - 1) * grid.max_radius
    torch.set_flush_denormal(False)  # the cut must hold without the flush tcbm sets at import (test below)
    try:
        density = grid.voxelize(x)
    finally:
        torch.set_flush_denormal(True)
    assert density.dtype == torch.float32
    assert not ((density > 0) & (density < torch.finfo(torch.float32).tiny)).any()
    assert (density == 0).float().mean() > 0.5  # the cut-off is reached: far voxels are exactly empty


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="torch.set_flush_denormal acts only on x86 CPUs (SSE FTZ/DAZ); elsewhere subnormals stay")
def test_importing_tcbm_flushes_subnormals_to_zero():
    import tcbm  # noqa: F401  (sets the flush)

    tiny = torch.finfo(torch.float32).tiny
    assert (torch.tensor([tiny]) / 4).item() == 0.0  # a subnormal result is flushed
    assert (torch.tensor([tiny]) * 4).item() == pytest.approx(4 * tiny)  # normal numbers are untouched


def test_rotation_and_translation_move_output_consistently():
    grid = VoxelGrid()
    x = torch.randn(4, 10, 3, dtype=torch.float64) * 0.15
    rot = random_rotations(1, torch.float64)[0]
    shift = torch.tensor([0.05, -0.1, 0.08], dtype=torch.float64)
    moved = x @ rot.T + shift
    assert torch.allclose(grid.coordinates(grid.voxelize(moved)), grid.coordinates(grid.voxelize(x)) @ rot.T + shift,
                          atol=2e-3)


def test_coordinates_are_differentiable():
    grid = VoxelGrid()
    x = (torch.randn(2, 5, 3, dtype=torch.float64) * 0.2).requires_grad_(True)
    grid.coordinates(grid.voxelize(x)).sum().backward()
    assert torch.allclose(x.grad, torch.ones_like(x), atol=1e-2)  # d(round trip)/dx ≈ identity


def test_random_rotations_are_proper():
    rot = random_rotations(100, torch.float64)
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand(100, 3, 3), atol=1e-12)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(100, dtype=torch.float64))


def test_molecule_not_fitting_grid_error():
    grid = VoxelGrid(d=12, r_grid=1.0, sigma=0.12)
    with pytest.raises(ValueError, match=r"beyond the usable half-width.*use r_grid >= "):
        grid.check_fits(torch.tensor([[0.4, 0.0, 0.0]]), "test molecule")


def test_invalid_grid():
    with pytest.raises(ValueError, match="invalid voxel grid"):
        VoxelGrid(d=1)
    with pytest.raises(ValueError, match="must exceed 3 sigma"):
        VoxelGrid(d=10, r_grid=0.5, sigma=0.16)  # no room inside: max_radius would be negative
    assert math.isclose(VoxelGrid(d=11, r_grid=2.0).spacing, 0.2)
