"""Backbones."""

from dynacnn.models.fold import fold_batchnorm
from dynacnn.models.resnet import STAGE_BLOCKS, BasicBlock, ResNet, build_resnet

ARCHITECTURES = tuple(STAGE_BLOCKS)

__all__ = ["ARCHITECTURES", "BasicBlock", "ResNet", "build_resnet", "fold_batchnorm"]
