"""Rigid-body geometry in torch: random rotations, Kabsch superposition and RMSD (nm)."""

from __future__ import annotations

import torch


def random_rotations(n: int, dtype: torch.dtype = torch.float32, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` rotation matrices ``(n, 3, 3)`` drawn uniformly from SO(3) (normalised Gaussian quaternions)."""
    q = torch.randn(n, 4, dtype=torch.float64, generator=generator)
    w, x, y, z = (q / q.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(n, 3, 3).to(dtype)


def kabsch(mobile: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Optimal proper rotation superposing ``mobile`` onto ``target`` (both ``(..., n, 3)``).

    Returns ``(R, mobile_centroid, target_centroid)`` such that
    ``(mobile - mobile_centroid) @ R.T + target_centroid`` is the superposed ``mobile``.
    """
    mc = mobile.mean(dim=-2, keepdim=True)
    tc = target.mean(dim=-2, keepdim=True)
    cov = (target - tc).transpose(-1, -2) @ (mobile - mc)
    u, _, vh = torch.linalg.svd(cov)
    sign = torch.sign(torch.linalg.det(u @ vh))
    diag = torch.ones_like(cov[..., 0])
    diag[..., -1] = torch.where(sign == 0, torch.ones_like(sign), sign)
    rotation = u @ torch.diag_embed(diag) @ vh
    return rotation, mc, tc


def superpose(mobile: torch.Tensor, target: torch.Tensor, carry: torch.Tensor | None = None) -> torch.Tensor:
    """Superpose ``mobile`` onto ``target``; apply the same transform to ``carry`` if given."""
    rotation, mc, tc = kabsch(mobile, target)
    points = mobile if carry is None else carry
    return (points - mc) @ rotation.transpose(-1, -2) + tc


def aligned_rmsd(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMSD (nm) between ``a`` and ``b`` after optimal superposition; broadcasts over leading dims."""
    a, b = torch.broadcast_tensors(a, b)
    return (superpose(a, b) - b).pow(2).sum(-1).mean(-1).sqrt()
