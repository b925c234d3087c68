"""Small fixed integer models whose logits are pinned (tests/data/pinned_logits.json).

The pins were recorded on main before the integer program existed (commit ea49127, the
hand-walked IntBlock model): the refactor must not change a single integer. Everything here is
seeded and needs no shared data, and nothing depends on the machine: the float models' weights
and BatchNorm statistics come from a seeded generator (no float forward pass, whose summation
order depends on the thread count), and the calibration (activation ranges, and input means for
bias correction) is the one recorded with the pins, replayed through ``FixedObserver``.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch


def tiny_dense_config() -> dict:
    """A 3-block JasperDR-shaped model (dense residual, k > 1 dense convs, a strided prologue)."""
    from intasr.models.configs import block_config, convasr_config

    jasper = [block_config(32, 1, 5, stride=2, residual=False, separable=False)]
    jasper += [block_config(48, 2, 7, separable=False, dense=True) for _ in range(2)]
    jasper += [block_config(64, 1, 3, dilation=2, residual=False, separable=False),
               block_config(96, 1, 1, residual=False, separable=False)]
    return convasr_config(jasper, 96)


def pinned_float_model(name: str):
    from intasr.models import ConvASR, config_for

    torch.manual_seed(0)
    cfg = config_for("quartznet5x5") if name == "quartznet5x5" else tiny_dense_config()
    model = ConvASR(cfg)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.startswith(("encoder", "decoder")):
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    with torch.no_grad():
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2.0 + 0.05)
                m.weight.copy_(1.0 + 0.2 * torch.randn(m.num_features, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.num_features, generator=g))
    model.eval()
    return model


class FixedObserver:
    """An observer whose range was recorded (replays a calibration exactly, on any machine)."""

    def __init__(self, alpha: float, name: str = "MinMaxObserver"):
        self._alpha, self.name = float(alpha), name

    def alpha(self) -> float:
        return self._alpha


def observer_key(key) -> str:
    return key if isinstance(key, str) else ",".join(str(k) for k in key)


def fixed_calibration(model, record: dict):
    """(observers, input_means or None) from a recorded calibration (see CASES)."""
    observers = {}
    for k, a in record["alphas"].items():
        key = k if k == "input" else tuple(int(v) for v in k.split(","))
        observers[key] = FixedObserver(a)
    type(observers["input"]).__name__  # noqa: B018  (convert records the observer's class name)
    means = None
    if record.get("means"):
        modules = dict(model.named_modules())
        means = {modules[n]: torch.tensor(v, dtype=torch.float64) for n, v in record["means"].items()}
    return observers, means


CASES = {  # name -> (float model, weight bits, act bits, bias correction)
    "quartznet5x5_w8a8": ("quartznet5x5", 8, 8, False),
    "quartznet5x5_w6a8_bc": ("quartznet5x5", 6, 8, True),
    "tiny_dense_w8a8": ("tiny_dense", 8, 8, False),
}


def pinned_inputs(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(-128, 128, (3, 64, 150), generator=g, dtype=torch.int64).to(torch.int8)
    return q, torch.tensor([150, 120, 77])


def digest(logits: torch.Tensor, lengths: torch.Tensor) -> dict:
    """Hash of the valid frames only (what a padded frame holds is not part of the contract)."""
    a = np.asarray(logits).astype(np.int64)
    valid = np.concatenate([a[b, :, : int(n)].reshape(-1) for b, n in enumerate(lengths)])
    return {"shape": list(a.shape), "lengths": [int(v) for v in lengths], "sum": int(valid.sum()),
            "sha256": hashlib.sha256(np.ascontiguousarray(valid).tobytes()).hexdigest()}
