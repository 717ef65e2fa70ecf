"""On-disk progress of a group of rollouts, so an interrupted ``tcbm backmap`` resumes mid-trajectory.

After every chunk each output's frames are appended losslessly (float32, nm) to a hidden raw file next to
the output, and a small state file records how many frames are done, the random streams' states and the
running scores.  A rerun with the same fingerprint continues from the last finished chunk — its previous
frames are read back bit-exactly — and converts the raw frames to the output format at the end, so the
file equals an uninterrupted run's.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tcbm.io import atomic_path


class RolloutProgress:
    """Raw frame files and the resume state of the rollouts that write ``outputs`` (one row each)."""

    def __init__(self, outputs: list[Path], fingerprint: str, n_atoms: int) -> None:
        self.frame_paths = [p.with_name(f".{p.name}.frames") for p in outputs]
        self.state_path = outputs[0].with_name(f".{outputs[0].name}.resume.pt")
        self.fingerprint, self.n_atoms = fingerprint, n_atoms
        self.frame_bytes = n_atoms * 3 * 4

    def load(self, min_frames: int = 1) -> dict[str, Any] | None:
        """The saved state, if it was made with this fingerprint, holds at least ``min_frames`` frames and
        every raw file holds them (a file written past the state — killed between a chunk's frames and its
        state — is cut back to it).  Otherwise None, and the raw files start empty."""
        state = None
        if self.state_path.exists():
            try:
                state = torch.load(self.state_path, map_location="cpu", weights_only=False)
            except Exception:  # a state file that cannot be read is as good as none
                state = None
        if (isinstance(state, dict) and state.get("fingerprint") == self.fingerprint
                and state.get("frames", 0) >= min_frames):
            size = state["frames"] * self.frame_bytes
            if all(p.exists() and p.stat().st_size >= size for p in self.frame_paths):
                for path in self.frame_paths:
                    os.truncate(path, size)
                return state
        self.discard()
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        for path in self.frame_paths:
            path.write_bytes(b"")
        return None

    def append(self, chunk: np.ndarray) -> None:
        """Append a chunk (rows, t, N, 3) nm: row r to output r's raw file."""
        for path, frames in zip(self.frame_paths, chunk, strict=True):
            with open(path, "ab") as f:
                f.write(np.ascontiguousarray(frames, dtype=np.float32).tobytes())

    def save(self, state: dict[str, Any]) -> None:
        """Record ``state`` (must hold ``frames``, the number of frames every raw file holds)."""
        with atomic_path(self.state_path) as tmp:
            torch.save({**state, "fingerprint": self.fingerprint}, tmp)

    def frames(self, row: int) -> np.ndarray:
        """Row ``row``'s frames so far, (T, N, 3) nm, memory-mapped."""
        path = self.frame_paths[row]
        if path.stat().st_size == 0:
            return np.zeros((0, self.n_atoms, 3), dtype=np.float32)
        return np.memmap(path, dtype=np.float32, mode="r").reshape(-1, self.n_atoms, 3)

    def previous(self, k: int) -> torch.Tensor:
        """The last ``k`` frames of every row, newest first (rows, k, N, 3): where the rollout resumes."""
        return torch.as_tensor(np.stack([np.array(self.frames(r)[::-1][:k]) for r in range(len(self.frame_paths))]))

    def discard(self) -> None:
        for path in [*self.frame_paths, self.state_path]:
            path.unlink(missing_ok=True)
