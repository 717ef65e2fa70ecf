"""Streaming trajectory writers (xtc, dcd, h5) that take frames in nm and ps, chunk by chunk."""

from __future__ import annotations

from pathlib import Path

import mdtraj as md
import numpy as np

FORMATS = ("xtc", "dcd", "h5")


def check_format(fmt: str) -> None:
    """Reject an output format the writers do not know."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")


class TrajectoryWriter:
    """Append frames (nm) to an mdtraj-readable trajectory file; the format follows the extension."""

    def __init__(self, path: str | Path, topology: md.Topology) -> None:
        self.path = Path(path)
        fmt = self.path.suffix.lstrip(".")
        if fmt not in FORMATS:
            raise ValueError(f"unsupported output format {fmt!r} for {path}; choose one of {FORMATS}")
        self.format = fmt
        if fmt == "xtc":
            self.handle = md.formats.XTCTrajectoryFile(str(path), "w")
        elif fmt == "dcd":
            self.handle = md.formats.DCDTrajectoryFile(str(path), "w")
        else:
            self.handle = md.formats.HDF5TrajectoryFile(str(path), "w")
            self.handle.topology = topology

    def write(self, xyz: np.ndarray, time: np.ndarray) -> None:
        xyz = np.ascontiguousarray(xyz, dtype=np.float32)
        if self.format == "xtc":
            self.handle.write(xyz, time=np.asarray(time, dtype=np.float32))
        elif self.format == "dcd":
            self.handle.write(xyz * 10.0)  # DCD stores Ångström
        else:
            self.handle.write(xyz, time=np.asarray(time, dtype=np.float32))

    def close(self) -> None:
        self.handle.close()
