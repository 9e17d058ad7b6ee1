"""One-level 2D Haar DWT as an exact 2x2 stride-2 convolution, and its inverse (ICNN's input split).

For each 2x2 block [[a, b], [c, d]] of every channel:
LL = (a + b + c + d) / 2, LH = (a + b - c - d) / 2, HL = (a - b + c - d) / 2, HH = (a - b - c + d) / 2,
which are pywt.dwt2(x, "haar")'s cA, cH, cV and cD. The four filters are orthonormal, so the inverse is
the transposed convolution with the same filters. An odd height or width is first extended by repeating
its last row or column (pywt's default "symmetric" mode), and the inverse crops it off again.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

BANDS = ("LL", "LH", "HL", "HH")


def haar_filters() -> torch.Tensor:
    """The four orthonormal 2x2 Haar filters (4, 1, 2, 2) in BANDS order."""
    rows = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    # Filter (r, c) is the outer product of the vertical pattern r and the horizontal pattern c.
    pairs = ((0, 0), (1, 0), (0, 1), (1, 1))
    return torch.stack([torch.outer(rows[r], rows[c]) / 2 for r, c in pairs])[:, None]


class HaarDWT(nn.Module):
    """(B, C, H, W) -> (B, 4, C, ceil(H/2), ceil(W/2)): band-major sub-bands LL, LH, HL, HH."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", haar_filters(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        if height % 2 or width % 2:
            x = F.pad(x, (0, width % 2, 0, height % 2), mode="replicate")
        bands = F.conv2d(x.reshape(batch * channels, 1, *x.shape[2:]), self.weight, stride=2)
        return bands.view(batch, channels, 4, *bands.shape[2:]).transpose(1, 2)


class InverseHaarDWT(nn.Module):
    """(B, 4, C, h, w) sub-bands -> (B, C, height, width) image; `height`/`width` crop a padded row/column."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("weight", haar_filters(), persistent=False)

    def forward(self, bands: torch.Tensor, height: int | None = None, width: int | None = None) -> torch.Tensor:
        batch, _, channels, h, w = bands.shape
        flat = bands.transpose(1, 2).reshape(batch * channels, 4, h, w)
        image = F.conv_transpose2d(flat, self.weight, stride=2).view(batch, channels, 2 * h, 2 * w)
        return image[:, :, : height or 2 * h, : width or 2 * w]
