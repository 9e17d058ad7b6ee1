"""Tiny CP-CNN and MS-CNN models (random weights, non-trivial BatchNorm statistics), saved as the pipelines save
them, and their exports through `export_directory` (what `dynacnn export` runs), each made once."""

from __future__ import annotations

import pytest
import torch

from dynacnn.cpcnn.compress import build_head, shared_part
from dynacnn.cpcnn.model import CPCNN, TrivialHead
from dynacnn.cpcnn.serialize import backbone_spec, save_cpcnn
from dynacnn.export import export_directory
from dynacnn.io import write_json
from dynacnn.models import build_resnet
from dynacnn.mscnn.cache import collect
from dynacnn.mscnn.cap_conv import filter_importance
from dynacnn.mscnn.model import MSCNN, MSCNNConfig, StageConfig
from dynacnn.runs import save_weights
from dynacnn.train import TensorBatches

from .helpers import CHOSEN, CP_HEADS, CP_SHAPE, MEMBERS, MS_CLASSES, MS_SHAPE, spread_batchnorm, synthetic


@pytest.fixture(scope="session")
def cpcnn_model() -> CPCNN:
    torch.manual_seed(0)
    backbone = build_resnet("resnet18", 9, 3, 0.125, "small").eval()
    heads = [
        TrivialHead() if name == "trivial" else build_head(backbone, "layer3", name, len(group), CP_SHAPE, group)
        for name, group in zip(CP_HEADS, MEMBERS)
    ]
    confusion = torch.randint(0, 30, (4, 4)).double() + 300 * torch.eye(4)
    clustifier = build_head(backbone, "layer3", "LC", 4, CP_SHAPE)
    model = CPCNN(shared_part(backbone, "layer3"), clustifier, heads, MEMBERS, confusion, CP_SHAPE)
    spread_batchnorm(model)
    features = model.shared(torch.randn(64, *CP_SHAPE))
    for head in (model.clustifier, *model.heads):  # logits of std 2: activation sets and predictions vary
        if not isinstance(head, TrivialHead):
            head.fc.weight.data.mul_(2 / head(features).std())
    return model.eval()


@pytest.fixture(scope="session")
def cpcnn_dir(cpcnn_model, tmp_path_factory):
    """The tiny CP-CNN saved as `dynacnn cpcnn` saves it (tau 0.7, Alg. 1 confusion rule, Eq. 3 weights)."""
    out = tmp_path_factory.mktemp("cpcnn")
    backbone = {**backbone_spec(build_resnet("resnet18", 9, 3, 0.125, "small")), "data": synthetic(9, 3, 16)}
    meta = {"backbone": backbone, "split": "layer3", "clustifier": "LC", "heads": list(CP_HEADS)}
    save_cpcnn(cpcnn_model.set_policy(0.7, "confusion", "eq3"), out, meta | {"class_names": list("abcdefghi")})
    return out


@pytest.fixture(scope="session")
def cpcnn_export(cpcnn_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("cpcnn_export")
    export_directory(out, cpcnn=cpcnn_dir)
    return out


@pytest.fixture(scope="session")
def mscnn_network() -> MSCNN:
    torch.manual_seed(0)
    config = MSCNNConfig(tuple(StageConfig(b, (4, 6), (1, 2), 8) for b in ("LL", "LH", "HL")), 1, MS_CLASSES, 2)
    network = MSCNN(config.validate())
    spread_batchnorm(network)
    for head in network.heads:  # confident, spread-out stage outputs, so that policies exit and prune
        head.fc.weight.data.mul_(8)
    return network.eval()


@pytest.fixture(scope="session")
def mscnn_dir(mscnn_network, tmp_path_factory):
    """The tiny MS-CNN saved as `dynacnn mscnn` saves it, with a chosen PTHP policy (fc_rows "batch")."""
    out = tmp_path_factory.mktemp("mscnn")
    save_weights(out / "model.safetensors", mscnn_network)
    data = synthetic(MS_CLASSES, 1, MS_SHAPE[1])
    write_json(out / "model.json", {"format_version": 1, "config": mscnn_network.config.to_dict(), "data": data})
    write_json(out / "mscnn.json", {"chosen": CHOSEN})
    return out


@pytest.fixture(scope="session")
def filter_order(mscnn_network):
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(60, *MS_SHAPE, generator=generator)
    return filter_importance(mscnn_network, collect(mscnn_network, TensorBatches(x, torch.arange(60) % MS_CLASSES, 32)))


@pytest.fixture(scope="session")
def mscnn_export(mscnn_dir, tmp_path_factory):
    """Every graph variant, so that each policy family only rewrites routing.json's policy."""
    out = tmp_path_factory.mktemp("mscnn_export")
    export_directory(out, mscnn=mscnn_dir, variants="all")
    return out
