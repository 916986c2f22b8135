"""The custom part of this project: a wider, GroupNorm mask head."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class WideMaskHead(nn.Sequential):
    """3×3 conv + GroupNorm + ReLU blocks on the 14×14 RoI features of the mask branch.

    Args:
        in_channels: Channels of the RoI features (the backbone's ``out_channels``).
        widths: Output channels of each block; the last one is what the predictor receives.
        groups: GroupNorm groups (each width must be divisible by it).
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (256, 384, 512), groups: int = 32) -> None:
        if not widths:
            raise ValueError("widths must name at least one block, e.g. (256, 512)")
        blocks: list[nn.Module] = []
        previous = in_channels
        for width in widths:
            if width % groups:
                raise ValueError(f"each width must be divisible by groups={groups}, got {width}")
            blocks += [nn.Conv2d(previous, width, 3, padding=1, bias=False), nn.GroupNorm(groups, width), nn.ReLU(inplace=True)]
            previous = width
        super().__init__(*blocks)
        self.out_channels = previous
