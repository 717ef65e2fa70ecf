"""tcbm — temporally coherent backmapping of coarse-grained molecular trajectories.

Units throughout: nm, ps, kJ/mol, K.
"""

import torch

# float32 subnormals (< 1.2e-38) make x86 CPU arithmetic ~15-fold slower, and softmax densities underflow
# through that range wherever a model's logits are sharp (a previous-frame-prior chignolin model: 4 training
# steps 7.3 s -> 4.5 s with them flushed, one thread; benchmarks/cln/README.md).  Flushing them to zero
# (FTZ/DAZ, as TensorFlow does by default) changes no result above 1e-38.  Set at import, before torch starts
# its CPU threads, which inherit it (threads started earlier keep their own setting).  No effect on GPUs.
torch.set_flush_denormal(True)

from tcbm.mapping import CGMapping  # noqa: E402
from tcbm.systems import MolecularSystem, load_system  # noqa: E402
from tcbm.voxels import VoxelGrid  # noqa: E402

__all__ = ["CGMapping", "MolecularSystem", "VoxelGrid", "load_system"]
__version__ = "0.1.0"
