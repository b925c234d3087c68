"""The BatchNorm identity the models' BN restoration is built on (``restore_bn``, ``hama``).

A BatchNorm with running statistics (mean, var) computes bn(z) = z + b_f for every z when its
affine parameters are gamma = sqrt(var + eps) and beta = mean + b_f. ``quant.bn.bn_from_stats``
builds a restored BN with it too.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["set_identity_affine"]


@torch.no_grad()
def set_identity_affine(bn: nn.BatchNorm1d, b_f: torch.Tensor) -> None:
    """Given bn's running statistics, set gamma = sqrt(running_var + eps) and beta = running_mean
    + b_f, so that bn(z) = z + b_f. Computed in float64 from the statistics as stored (already
    rounded to bn's dtype), so the stored parameters cancel as closely as that dtype allows."""
    mean, var = bn.running_mean.double(), bn.running_var.double()
    bn.weight.copy_(torch.sqrt(var + bn.eps).to(bn.weight.dtype))
    bn.bias.copy_((mean + torch.as_tensor(b_f, dtype=torch.float64).reshape(-1)).to(bn.bias.dtype))
