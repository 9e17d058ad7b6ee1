"""MS-CNN (multi-stage CNN with contextual awareness): Haar DWT, multi-stage model, policies TP / CAP_FC /
CAP_CONV / PTHP (pure on cached outputs, and executed with real skipping), the network with its policy as one
module (`EarlyExitMSCNN`, `load_mscnn`), prediction rank (Eq. 1-3), fixed point (§IV-C), design-space exploration
and the `run_mscnn` pipeline."""

from dynacnn.mscnn.cache import StageOutputs, collect
from dynacnn.mscnn.cap_conv import execute_cap_conv, filter_importance, majority_filters, simulate_cap_conv
from dynacnn.mscnn.config import MSCNNRunConfig
from dynacnn.mscnn.costs import CostModel, measure_costs
from dynacnn.mscnn.dwt import BANDS, HaarDWT, InverseHaarDWT
from dynacnn.mscnn.execute import execute
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig, default_config, table2_config
from dynacnn.mscnn.pipeline import analyse_mscnn, run_mscnn
from dynacnn.mscnn.policies import Decision, Policy, cap_fc_policy, full_policy, pthp_policy, simulate, tp_policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN, ExitOutput, chosen_policy
from dynacnn.mscnn.serialize import load_filter_order, load_mscnn, load_network, read_mscnn_result, save_filter_order

__all__ = [
    "BANDS",
    "CapConvPolicy",
    "CostModel",
    "Decision",
    "EarlyExitMSCNN",
    "ExitOutput",
    "HaarDWT",
    "InverseHaarDWT",
    "MSCNN",
    "MSCNNConfig",
    "MSCNNRunConfig",
    "Policy",
    "StageConfig",
    "StageOutputs",
    "analyse_mscnn",
    "cap_fc_policy",
    "chosen_policy",
    "collect",
    "default_config",
    "execute",
    "execute_cap_conv",
    "filter_importance",
    "full_policy",
    "load_filter_order",
    "load_mscnn",
    "load_network",
    "majority_filters",
    "measure_costs",
    "pthp_policy",
    "read_mscnn_result",
    "run_mscnn",
    "save_filter_order",
    "simulate",
    "simulate_cap_conv",
    "table2_config",
    "tp_policy",
]
