"""A whole network as a torch module, built from an :class:`~nas_ops.arch.Architecture`."""

from __future__ import annotations

import torch
from torch import nn

from nas_ops.arch import Architecture
from nas_ops.blocks import build_op


class Network(nn.Module):
    """stem -> blocks -> (feature mix) -> head; the same modules the profiler measures op by op."""

    def __init__(self, arch: Architecture) -> None:
        super().__init__()
        self.arch = arch
        self.stem = build_op(arch.stem)
        self.blocks = nn.Sequential(*[build_op(b) for b in arch.blocks])
        self.mix = build_op(arch.mix) if arch.mix is not None else nn.Identity()
        self.head = build_op(arch.head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mix(self.blocks(self.stem(x))))


def build_network(arch: Architecture) -> Network:
    """The torch module of ``arch`` (train mode, fresh weights)."""
    return Network(arch)
