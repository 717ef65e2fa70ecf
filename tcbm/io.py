"""File helpers: atomic writes, validated trajectory loading, input globbing."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import mdtraj as md
import numpy as np


@contextlib.contextmanager
def atomic_path(final: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``final`` (same extension); rename it to ``final`` only if the
    block succeeds, delete it otherwise, so ``final`` is never half-written."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial{final.suffix}")
    tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def expand_paths(patterns: str | Sequence[str]) -> list[Path]:
    """Files matching one or many paths/glob patterns, sorted, de-duplicated; error if one matches nothing."""
    if isinstance(patterns, (str, Path)):
        patterns = [str(patterns)]
    found: list[Path] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            raise FileNotFoundError(f"no file matches {pattern!r}")
        found.extend(Path(m) for m in matches)
    return list(dict.fromkeys(found))


def _atoms_in_file(path: Path) -> int | None:
    """Atom count stored in a trajectory file, read without a topology where the format allows."""
    with contextlib.suppress(Exception):
        if path.suffix in (".h5", ".pdb", ".gro", ".mol2"):
            return md.load_frame(str(path), 0).n_atoms
        with md.open(str(path)) as handle:
            return handle.read(n_frames=1)[0].shape[1]
    return None


def _atoms_in_topology(top: str | Path | md.Topology | None) -> int | None:
    if top is None:
        return None
    return top.n_atoms if isinstance(top, md.Topology) else md.load_topology(str(top)).n_atoms


def check_finite(xyz: np.ndarray, source: str) -> None:
    """Raise naming the first frame of ``xyz`` (frames, atoms, 3) with a NaN or infinite coordinate."""
    bad = ~np.isfinite(xyz).all(axis=(1, 2))
    if bad.any():
        frame = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{source}: frame {frame} has non-finite (NaN/inf) coordinates ({int(bad.sum())} bad frames)")


def load_trajectory(path: str | Path, top: str | Path | md.Topology | None = None, stride: int = 1) -> md.Trajectory:
    """Load a trajectory in any mdtraj format with a clear error for missing files, atom-count
    mismatches between topology and trajectory, and non-finite frames."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"trajectory {path} does not exist")
    if isinstance(top, (str, Path)) and not Path(top).exists():
        raise FileNotFoundError(f"topology {top} does not exist")
    top_name = top if isinstance(top, (str, Path)) else "the given topology"
    top_arg = str(top) if isinstance(top, (str, Path)) else top
    self_describing = path.suffix in (".h5", ".pdb")
    try:
        traj = md.load(str(path), stride=stride, **({} if top is None or self_describing else {"top": top_arg}))
    except Exception as err:
        n_file = _atoms_in_file(path)
        n_top = _atoms_in_topology(top)
        if n_file is not None and n_top is not None and n_file != n_top:
            raise ValueError(
                f"atom-count mismatch: trajectory {path} has {n_file} atoms, topology {top_name} has {n_top}"
            ) from err
        raise ValueError(f"cannot read trajectory {path}: {err}") from err
    n_top = _atoms_in_topology(top)
    if n_top is not None and n_top != traj.n_atoms:
        raise ValueError(
            f"atom-count mismatch: trajectory {path} has {traj.n_atoms} atoms, topology {top_name} has {n_top}"
        )
    check_finite(traj.xyz, str(path))
    return traj
