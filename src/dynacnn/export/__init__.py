"""Deploying routed models: each static part as an ONNX graph (torch.onnx, dynamo exporter, BatchNorm folded,
dynamic batch) plus routing.json, which `dynacnn.runtime` runs with ONNX Runtime and no torch.

`export_cpcnn(model, out)` (S, M, heads H_g; Alg. 1 / Eq. 3 policy), `export_mscnn(model, out, input_shape)`
(DWT, stage bodies and heads with the pruned variants its policy needs; TP / CAP_FC / PTHP / CAP_CONV policy),
`export_plain(model, out, input_shape)` (one graph), `export_directory(out, cpcnn=|mscnn=|run=)` (what
`dynacnn export` runs), `quantize_export(dir, out, calibration_images)` (`dynacnn export --int8`: the large graphs
in int8), `evaluate_export(dir)` (`dynacnn run`) and `onnx_contenders(demo_dir)` (`dynacnn bench`).
"""

from dynacnn.export.contenders import onnx_contenders, ort_speedups, runtime_contender
from dynacnn.export.cpcnn import cpcnn_policy, export_cpcnn
from dynacnn.export.directory import export_directory
from dynacnn.export.evaluate import evaluate_export
from dynacnn.export.mscnn import export_mscnn, mscnn_policy
from dynacnn.export.parts import ExportError
from dynacnn.export.plain import export_plain
from dynacnn.export.quantize import quantize_export

__all__ = [
    "ExportError",
    "cpcnn_policy",
    "evaluate_export",
    "export_cpcnn",
    "export_directory",
    "export_mscnn",
    "export_plain",
    "mscnn_policy",
    "onnx_contenders",
    "ort_speedups",
    "quantize_export",
    "runtime_contender",
]
