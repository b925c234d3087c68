"""Seeded random weights for models whose values do not matter to the question asked: latency
(the program's shape and its kernels do not depend on the weights), the fuzz harness's seed
files, and tests of exactness."""
from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def random_matrices_(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Every parameter of rank 2 or more ~ N(0, 1 / fan_in), fan_in = the size of one output row,
    drawn from `generator` in parameter order (so what the caller draws next is fixed too); biases
    and norms keep their initial values. Returns the model."""
    for p in model.parameters():
        if p.dim() > 1:
            p.copy_(torch.randn(p.shape, generator=generator) / p[0].numel() ** 0.5)
    return model
