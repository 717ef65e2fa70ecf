"""tcbm — temporally coherent backmapping of coarse-grained molecular trajectories.

Units throughout: nm, ps, kJ/mol, K.
"""

from tcbm.mapping import CGMapping
from tcbm.systems import MolecularSystem, load_system
from tcbm.voxels import VoxelGrid

__all__ = ["CGMapping", "MolecularSystem", "VoxelGrid", "load_system"]
__version__ = "0.1.0"
