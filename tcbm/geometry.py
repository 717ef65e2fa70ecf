"""Geometry in torch: random rotations, Kabsch superposition and RMSD, interatomic distances (nm), angle
wrapping (rad)."""

from __future__ import annotations

import torch


def quaternion_matrices(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``(..., 3, 3)`` of quaternions ``(..., 4)`` (w, x, y, z; normalised here)."""
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).unflatten(-1, (3, 3))


def random_rotations(n: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` rotation matrices ``(n, 3, 3)`` drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    return quaternion_matrices(torch.randn(n, 4, dtype=torch.float64, generator=generator)).to(dtype)


#: squarings of Horn's shifted 4×4 matrix: the power 2^16 converges unless the points are nearly collinear
#: (second singular value of their covariance below ~3e-4 of the first; the rotation about that line is then ill-defined)
HORN_SQUARINGS = 16


def kabsch(mobile: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimal proper rotation superposing ``mobile`` onto ``target`` (both ``(..., n, 3)``).

    Returns ``(R, mobile_centroid, target_centroid)`` such that
    ``(mobile - mobile_centroid) @ R.T + target_centroid`` is the superposed ``mobile``.

    Horn's quaternion method (J. Opt. Soc. Am. A 4, 629, 1987): the rotation's quaternion is the top
    eigenvector of a 4×4 matrix, found by repeated squaring in float64 — only matrix products, so it runs
    inside a captured CUDA graph (``torch.linalg`` decompositions synchronise with the host on CUDA), and the
    result is always a proper rotation.
    """
    mc = mobile.mean(dim=-2, keepdim=True)
    tc = target.mean(dim=-2, keepdim=True)
    s = ((mobile - mc).transpose(-1, -2) @ (target - tc)).double()  # S_ab = sum_i m_ia t_ib
    (sxx, sxy, sxz), (syx, syy, syz), (szx, szy, szz) = (row.unbind(-1) for row in s.unbind(-2))
    horn = torch.stack([
        sxx + syy + szz, syz - szy, szx - sxz, sxy - syx,
        syz - szy, sxx - syy - szz, sxy + syx, szx + sxz,
        szx - sxz, sxy + syx, -sxx + syy - szz, syz + szy,
        sxy - syx, szx + sxz, syz + szy, -sxx - syy + szz,
    ], dim=-1).unflatten(-1, (4, 4))
    # shifted to be positive semi-definite (|eigenvalues| <= sqrt(3)·|S|_F), so its top eigenvector dominates
    scale = s.flatten(-2).norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)[..., None, None]
    power = horn / scale + 3 ** 0.5 * torch.eye(4, dtype=horn.dtype, device=horn.device)
    for _ in range(HORN_SQUARINGS):
        power = power @ power
        power = power / power.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]  # trace > 0: PSD
    # the power is ~ u uᵀ: its longest column is the top eigenvector u, up to sign
    column = power.norm(dim=-2).argmax(dim=-1)
    q = torch.take_along_dim(power, column[..., None, None].expand(*power.shape[:-2], 4, 1), dim=-1)[..., 0]
    return quaternion_matrices(q).to(mobile.dtype), mc, tc


def superpose(mobile: torch.Tensor, target: torch.Tensor, carry: torch.Tensor | None = None) -> torch.Tensor:
    """Superpose ``mobile`` onto ``target``; apply the same transform to ``carry`` if given."""
    rotation, mc, tc = kabsch(mobile, target)
    points = mobile if carry is None else carry
    return (points - mc) @ rotation.transpose(-1, -2) + tc


def aligned_rmsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMSD (nm) between ``a`` and ``b`` after optimal superposition; broadcasts over leading dims."""
    a, b = torch.broadcast_tensors(a, b)
    return (superpose(a, b) - b).pow(2).sum(-1).mean(-1).sqrt()


def rotate_about_axis(points: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor, angle: torch.Tensor
                      ) -> torch.Tensor:
    """``points`` (..., k, 3) turned by ``angle`` (...) rad about the line through ``centre`` (..., 3) along
    ``axis`` (..., 3; any length), right-handed (Rodrigues' formula)."""
    k = (axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12))[..., None, :]
    v = points - centre[..., None, :]
    cos, sin = angle.cos()[..., None, None], angle.sin()[..., None, None]
    turned = v * cos + torch.linalg.cross(k.expand_as(v), v) * sin + k * (k * v).sum(-1, keepdim=True) * (1 - cos)
    return centre[..., None, :] + turned


def best_turn_angle(mobile: torch.Tensor, target: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor
                    ) -> torch.Tensor:
    """The angle (...) rad of :func:`rotate_about_axis` that brings ``mobile`` (..., k, 3) closest (summed squared
    distance) to ``target`` (..., k, 3), turning about the line through ``centre`` along ``axis``."""
    k = (axis / axis.norm(dim=-1, keepdim=True).clamp_min(1e-12))[..., None, :]
    a, b = mobile - centre[..., None, :], target - centre[..., None, :]
    a, b = a - k * (k * a).sum(-1, keepdim=True), b - k * (k * b).sum(-1, keepdim=True)  # in the turning plane
    return torch.atan2((k * torch.linalg.cross(a, b)).sum((-1, -2)), (a * b).sum((-1, -2)))


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """All squared interatomic distances (..., N, N) nm² of coordinates ``x`` (..., N, 3) nm."""
    return (x[..., :, None, :] - x[..., None, :, :]).pow(2).sum(-1)


def wrapped(angle: torch.Tensor) -> torch.Tensor:
    """``angle`` rad wrapped into (−π, π]."""
    return torch.atan2(angle.sin(), angle.cos())
