import pytest
import torch

from tcbm.geometry import best_turn_angle, kabsch, random_rotations, rotate_about_axis, superpose


def svd_rotation(mobile: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The textbook Kabsch rotation (SVD with the determinant sign fixed), as an independent reference."""
    cov = (target - target.mean(-2, keepdim=True)).transpose(-1, -2) @ (mobile - mobile.mean(-2, keepdim=True))
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.ones_like(cov[..., 0])
    sign[..., -1] = torch.linalg.det(u @ vh).sign()
    return u @ torch.diag_embed(sign) @ vh


@pytest.fixture
def points():
    g = torch.Generator().manual_seed(0)
    mobile = torch.randn(200, 6, 3, generator=g, dtype=torch.float64)
    rotation = random_rotations(200, torch.float64, g)
    noisy = mobile @ rotation.transpose(-1, -2) + 0.05 * torch.randn(200, 6, 3, generator=g, dtype=torch.float64)
    return mobile, rotation, noisy + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)


def test_kabsch_recovers_a_known_rotation_and_translation(points):
    mobile, rotation, _ = points
    shift = torch.tensor([0.3, 0.1, -0.7], dtype=torch.float64)
    found, _, _ = kabsch(mobile, mobile @ rotation.transpose(-1, -2) + shift)
    assert torch.allclose(found, rotation, atol=1e-10)
    assert torch.allclose(superpose(mobile, mobile @ rotation.transpose(-1, -2) + shift),
                          mobile @ rotation.transpose(-1, -2) + shift, atol=1e-10)


def test_kabsch_is_the_least_squares_proper_rotation_even_for_mirror_images(points):
    mobile, _, target = points
    for goal in (target, -target):  # a mirror image: the best proper rotation, never a reflection
        found = kabsch(mobile, goal)[0]
        assert torch.allclose(found, svd_rotation(mobile, goal), atol=1e-8)
        assert torch.allclose(torch.linalg.det(found), torch.ones(len(found), dtype=found.dtype), atol=1e-10)
    single = kabsch(mobile.float(), target.float())[0]  # float32 in, float32 out, same answer
    assert single.dtype == torch.float32 and torch.allclose(single.double(), svd_rotation(mobile, target), atol=1e-5)


def test_a_turn_about_an_axis_is_recovered_and_keeps_distances_to_the_axis():
    torch.manual_seed(0)
    points, centre, axis = torch.randn(5, 3, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64), \
        torch.randn(5, 3, dtype=torch.float64)
    angle = torch.tensor([0.3, -2.0, 3.0, 1.0, -0.7], dtype=torch.float64)
    moved = rotate_about_axis(points, centre, axis, angle)
    k = axis / axis.norm(dim=-1, keepdim=True)

    def along_and_off(p):  # coordinate along the axis and distance from it
        v = p - centre[:, None]
        along = (v * k[:, None]).sum(-1)
        return along, (v - along[..., None] * k[:, None]).norm(dim=-1)

    assert all(torch.allclose(a, b) for a, b in zip(along_and_off(moved), along_and_off(points)))
    assert torch.allclose(best_turn_angle(points, moved, centre, axis), angle)
    # a quarter turn about +z takes x onto y (right-handed)
    quarter = rotate_about_axis(torch.tensor([[[1.0, 0, 0]]]), torch.zeros(1, 3), torch.tensor([[0, 0, 2.0]]),
                                torch.tensor([torch.pi / 2]))
    assert torch.allclose(quarter, torch.tensor([[[0.0, 1.0, 0.0]]]), atol=1e-6)
