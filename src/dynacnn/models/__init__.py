"""Backbones."""

from dynacnn.models.external import (
    ARCH_CHOICES,
    ARCH_HELP,
    TimmResNet,
    build_external,
    external_arch,
    load_backbone,
    parse_arch,
)
from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.resnet import STAGE_BLOCKS, BasicBlock, ResNet, build_resnet

ARCHITECTURES = tuple(STAGE_BLOCKS)

__all__ = [
    "ARCHITECTURES",
    "ARCH_CHOICES",
    "ARCH_HELP",
    "BasicBlock",
    "ResNet",
    "TimmResNet",
    "build_external",
    "build_resnet",
    "external_arch",
    "fold_batchnorm",
    "load_backbone",
    "parse_arch",
]
