"""i-GELU (intops/gelu.py): exact against its NumPy reference, float-free, close to GELU, no gain error."""
import numpy as np
import pytest
import torch

from intasr.intops.gelu import gelu_float, gelu_ref, int_gelu, prepare_gelu
from intasr.verify import DtypeRecorder


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.254, 0.5])
def test_matches_reference_and_gelu(scale):
    p = prepare_gelu(scale)
    q = torch.arange(-128, 128)
    y = int_gelu(q, p)
    assert np.array_equal(gelu_ref(q.numpy(), p), y.numpy())
    err = (y.double() * p.out_scale - gelu_float(q.double() * scale)).abs()
    # I-BERT's erf polynomial (about 0.02) evaluated on the input's integer grid (coarse at large scales)
    assert float(err.max()) < 0.03 + 0.1 * scale
    big = q.double() * scale > 2.6          # beyond the clip point GELU(x) = x: exactly, no gain error
    assert (y[big] == q[big] * 2 * p.q_one).all()


def test_float_free_and_extremes():
    p = prepare_gelu(0.1)
    q = torch.tensor([-(2 ** 31) + 1, -1, 0, 1, 2 ** 31 - 1])
    with DtypeRecorder() as rec:
        y = int_gelu(q, p)
    assert not rec.float_ops() and y.dtype == torch.int64
    assert np.array_equal(gelu_ref(q.numpy(), p), y.numpy())
    with pytest.raises(ValueError):
        int_gelu(torch.tensor([2 ** 31]), p)
    with pytest.raises(ValueError):
        prepare_gelu(0.0)
