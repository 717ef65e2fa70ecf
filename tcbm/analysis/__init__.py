"""Structural, thermodynamic and kinetic evaluation of backmapped trajectories (mdtraj + deeptime).

Units: nm, ps, kJ/mol, K; angles in radians unless a name says degrees.
"""

from tcbm.analysis.baselines import NearestNeighbourBackmapper
from tcbm.analysis.evaluate import Evaluation, EvaluationSettings
from tcbm.analysis.msm import MSMComparison, eigenvector_similarity
from tcbm.analysis.scores import js_divergence, wasserstein1

__all__ = [
    "Evaluation",
    "EvaluationSettings",
    "MSMComparison",
    "NearestNeighbourBackmapper",
    "eigenvector_similarity",
    "js_divergence",
    "wasserstein1",
]
