"""CP-CNN: hyper-class clustering (Alg. 2), compression flow, activation policy, routed model."""

from dynacnn.cpcnn.clustering import HyperClassClustering
from dynacnn.cpcnn.compress import SPLIT_POINTS, TABLE1, build_head, shared_part
from dynacnn.cpcnn.config import CPCNNConfig
from dynacnn.cpcnn.model import CPCNN, RoutedOutput, TrivialHead
from dynacnn.cpcnn.pipeline import convert, run_cpcnn
from dynacnn.cpcnn.policy import activate, merge
from dynacnn.cpcnn.serialize import load_cpcnn

__all__ = [
    "CPCNN",
    "CPCNNConfig",
    "HyperClassClustering",
    "SPLIT_POINTS",
    "TABLE1",
    "RoutedOutput",
    "TrivialHead",
    "activate",
    "build_head",
    "convert",
    "load_cpcnn",
    "merge",
    "run_cpcnn",
    "shared_part",
]
