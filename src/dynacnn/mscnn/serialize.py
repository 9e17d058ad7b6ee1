"""Saving and loading an MS-CNN run: model.safetensors + model.json (structure, training), mscnn.json (results, the
chosen policy) and filter_order.safetensors (CAP_CONV's filter ranking, Alg. 3 Pre)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from dynacnn.errors import CheckpointError, ConfigError
from dynacnn.io import read_json, write_bytes
from dynacnn.models.layout import device_layout
from dynacnn.mscnn.cap_conv import FilterImportance
from dynacnn.mscnn.model import MSCNN, MSCNNConfig
from dynacnn.mscnn.policies import Policy, full_policy
from dynacnn.mscnn.routed import CapConvPolicy, EarlyExitMSCNN, chosen_policy
from dynacnn.runs import load_weights

FORMAT_VERSION = 1
REQUIRED_KEYS = ("stages", "full", "policies", "oracle", "chosen", "bits")
FILTER_ORDER_FILE = "filter_order.safetensors"
FILTER_ORDER_PARTS = ("per_class", "overall", "acc_loss")


def save_filter_order(out_dir: str | Path, importance: FilterImportance) -> None:
    """Write CAP_CONV's filter ranking (`filter_importance` on training images) to filter_order.safetensors."""
    tensors = {
        f"{part}.{stage}": tensor.detach().cpu().contiguous()
        for part in FILTER_ORDER_PARTS
        for stage, tensor in enumerate(getattr(importance, part))
    }
    write_bytes(Path(out_dir) / FILTER_ORDER_FILE, save(tensors))


def load_filter_order(out_dir: str | Path) -> FilterImportance | None:
    """The filter ranking saved by `save_filter_order` in `out_dir`, or None where the run wrote none."""
    path = Path(out_dir) / FILTER_ORDER_FILE
    if not path.exists():
        return None
    try:
        tensors = load_file(str(path))
        stages = sum(key.startswith("per_class.") for key in tensors)
        parts = [[tensors[f"{part}.{stage}"] for stage in range(stages)] for part in FILTER_ORDER_PARTS]
    except (SafetensorError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path} is not a readable filter ranking ({exc}); re-run `dynacnn mscnn`") from None
    return FilterImportance(*parts)


def load_network(out_dir: str | Path, device: torch.device | str = "cpu") -> MSCNN:
    """The trained multi-stage network of a run_mscnn output directory (channels_last on the CPU), in eval mode."""
    meta = read_json(Path(out_dir) / "model.json")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{out_dir}/model.json has an unknown format version; re-run `dynacnn mscnn`")
    model = load_weights(Path(out_dir) / "model.safetensors", MSCNN(MSCNNConfig.from_dict(meta["config"])))
    return device_layout(model.to(device), device).eval()


def load_mscnn(
    out_dir: str | Path, device: torch.device | str = "cpu", policy: str | Policy | CapConvPolicy = "chosen"
) -> EarlyExitMSCNN:
    """The MS-CNN of a finished run_mscnn output directory as a module with a run-time policy, on `device`.

    `policy`: "chosen" (the run's operating point, mscnn.json "chosen", executed with the run's fc_rows), "full"
    (every stage, every class) or a `Policy` / `CapConvPolicy`. `model(x)` gives class probabilities,
    `model.route(x)` the exits and MACs; the bare network is `model.network`.
    """
    out = Path(out_dir)
    network = load_network(out, device)
    stages, classes = network.num_stages, network.config.num_classes
    fc_rows = "image"
    if policy == "chosen":
        if not (out / "mscnn.json").exists():
            raise CheckpointError(
                f"{out} has no mscnn.json (no chosen policy yet); finish it with `dynacnn mscnn --resume --out {out}` "
                "or load it with policy='full'"
            )
        chosen = read_json(out / "mscnn.json").get("chosen")
        try:
            policy = chosen_policy(chosen, stages, classes)
        except (KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{out}/mscnn.json has no readable chosen policy; re-run `dynacnn mscnn`") from None
        fc_rows = "image" if isinstance(policy, CapConvPolicy) else chosen.get("fc_rows", "image")
    elif policy == "full":
        policy = full_policy(stages, classes)
    elif isinstance(policy, str):
        raise ConfigError(f"unknown policy {policy!r}; use 'chosen', 'full' or a Policy / CapConvPolicy")
    order = load_filter_order(out)
    if isinstance(policy, CapConvPolicy) and order is None:
        raise CheckpointError(
            f"{out} has no {FILTER_ORDER_FILE} (CAP_CONV's filter ranking); write it with "
            f"`dynacnn mscnn --resume --out {out}`"
        )
    input_shape = read_json(out / "model.json").get("input_shape")
    return EarlyExitMSCNN(network, policy, fc_rows=fc_rows, filter_order=order, input_shape=input_shape)


def read_mscnn_result(out_dir: str | Path) -> dict:
    """mscnn.json of a finished run, checked for the required keys."""
    path = Path(out_dir) / "mscnn.json"
    result = read_json(path)
    missing = [key for key in REQUIRED_KEYS if key not in result]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; re-run `dynacnn mscnn --out {out_dir}`")
    return result
