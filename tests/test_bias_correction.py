"""Bias correction (quant.weights.bias_correction, calibration.conv_input_means): the expected output shift that
weight rounding causes, removed through the bias."""

import pytest
import torch
import torch.nn.functional as F

from intasr.calibration import calibrate, conv_input_means, random_mels
from intasr.convert import convert
from intasr.quant.weights import bias_correction, quantize_weight
from intasr.models import ConvASR, config_for

from conftest import randomize_weights


@pytest.mark.parametrize("groups,cin,cout,k", [(1, 6, 4, 3), (6, 6, 6, 5), (2, 6, 4, 1)])
def test_delta_is_the_mean_output_shift(groups, cin, cout, k):
    """On an input whose channels are constant (mean m_c), the quantized conv minus the float
    conv equals delta at every interior frame."""
    g = torch.Generator().manual_seed(groups * 10 + k)
    w = torch.randn(cout, cin // groups, k, generator=g, dtype=torch.float64)
    w_q, s_w = quantize_weight(w, 4, "minmax")
    mean = torch.randn(cin, generator=g, dtype=torch.float64) * 3
    x = mean.reshape(1, cin, 1).expand(1, cin, 20)
    w_deq = w_q.double() * s_w.reshape(-1, 1, 1)
    shift = F.conv1d(x, w_deq, groups=groups) - F.conv1d(x, w, groups=groups)
    delta = bias_correction(w, w_q, s_w, groups, mean)
    assert delta.abs().max() > 1e-3  # 4-bit rounding does shift the mean
    torch.testing.assert_close(shift, delta.reshape(1, cout, 1).expand_as(shift), rtol=0, atol=1e-10)


def _op(qmodel, name):
    (op,) = [op for op in qmodel.program.ops if op.name == name]
    return op


def _conv(qmodel, name: str):
    """The conv1d op of the integer program that came from the float layer ``name``."""
    return next(op for op in qmodel.program.ops_of("conv1d") if op.name == name)


def _multiplier(qmodel, conv) -> torch.Tensor:
    """M of the requantize/rescale op that consumes the conv's accumulator."""
    return next(op for op in qmodel.program.ops if op.inputs == conv.outputs and "M" in op.params).params["M"]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    model = ConvASR(config_for("quartznet5x5")).eval()
    randomize_weights(model, seed=1)
    return model


def test_input_means_ignore_padded_frames(small):
    mel = torch.randn(2, 64, 40)
    lengths = torch.tensor([40, 25])
    means = conv_input_means(small, [(mel, lengths)])
    first = small.encoder.encoder[0].mconv[0].conv
    valid = torch.cat([mel[0], mel[1, :, :25]], dim=1).double()
    torch.testing.assert_close(means[first], valid.mean(dim=1))
    assert small.decoder.decoder_layers[0] in means
    # every conv of the model has a mean: convert can correct all of them
    n_convs = sum(isinstance(m, torch.nn.Conv1d) for m in small.modules())
    assert len(means) == n_convs


def test_zero_means_change_nothing_and_real_means_change_biases(small):
    batches = random_mels(1, 2, 80, seed=0)
    obs = calibrate(small, batches)
    plain = convert(small, obs, 4, 8)
    zeros = {c: torch.zeros_like(m) for c, m in conv_input_means(small, batches).items()}
    zero_corrected = convert(small, obs, 4, 8, input_means=zeros)
    q = plain.quantize_input(batches[0][0])
    lengths = batches[0][1]
    with torch.inference_mode():
        a = plain.forward_int(q, lengths)[0]
        b = zero_corrected.forward_int(q, lengths)[0]
    assert torch.equal(a, b)
    corrected = convert(small, obs, 4, 8, input_means=conv_input_means(small, batches))
    dw = _op(corrected, "blocks.1.convs.0")
    assert dw.attrs["groups"] > 1 and dw.params["bias"].abs().sum() > 0
    assert "bias" not in _op(plain, "blocks.1.convs.0").params
    assert corrected.info["bias_correction"] is True
    with pytest.raises(KeyError, match="no input mean"):
        convert(small, obs, 4, 8, input_means={})


@pytest.mark.parametrize("per_row", [False, True])
def test_gptq_rounding_lowers_the_output_error(per_row):
    """On the inputs H was measured on, GPTQ's codes give a smaller output error than
    round-to-nearest on the same grid, and every code lies in the 4-bit range."""
    from intasr.quant.gptq import gptq_round
    from intasr.quant.quantizer import weight_alpha

    g = torch.Generator().manual_seed(7 + per_row)
    n, cout, frames = 24, 10, 400
    mix = torch.randn(n, n, generator=g, dtype=torch.float64)
    X = torch.randn(frames, n, generator=g, dtype=torch.float64) @ mix  # correlated inputs
    w = torch.randn(cout, n, generator=g, dtype=torch.float64)
    s = weight_alpha(w, 4).double() / 7
    H = X.T @ X
    if per_row:
        H = H.expand(cout, n, n).clone()
    q = gptq_round(w, s, H, bits=4)
    assert q.min() >= -8 and q.max() <= 7 and torch.equal(q, q.round())
    rtn = torch.clamp(torch.round(w / s[:, None]), -8, 7)
    err = lambda codes: ((X @ (w - codes * s[:, None]).T) ** 2).sum()  # noqa: E731
    assert err(q) < 0.8 * err(rtn)


def test_convert_with_hessians_changes_only_the_rounding(small):
    from intasr.calibration import conv_input_hessians

    batches = random_mels(1, 2, 80, seed=0)
    obs = calibrate(small, batches)
    H = conv_input_hessians(small, batches)
    dw = small.encoder.encoder[1].mconv[0].conv
    pw = small.encoder.encoder[1].mconv[1].conv
    assert H[dw].shape == (dw.in_channels, dw.kernel_size[0], dw.kernel_size[0])
    assert H[pw].shape == (pw.in_channels, pw.in_channels)
    plain, gptq = convert(small, obs, 4, 8), convert(small, obs, 4, 8, hessians=H)
    a, b = _op(plain, "blocks.1.convs.1"), _op(gptq, "blocks.1.convs.1")
    assert a.meta["w_scale"] == b.meta["w_scale"]  # same grid and scales
    assert torch.equal(_op(plain, "blocks.1.convs.1.requantize").params["M"],
                       _op(gptq, "blocks.1.convs.1.requantize").params["M"])
    assert not torch.equal(a.params["weight"], b.params["weight"]) and b.params["weight"].abs().max() <= 8
    assert gptq.info["rounding"] == "gptq"


def test_corrected_model_stays_bit_exact_in_the_native_runner(small):
    """Bias correction gives depthwise convs a bias: every integer path must carry it."""
    from intasr.intops import native
    from intasr.program.fast import run_fast
    from intasr.program.numpy_ref import NumpyReference

    batches = random_mels(1, 2, 80, seed=0)
    q = convert(small, calibrate(small, batches), 4, 8, input_means=conv_input_means(small, batches),
                depthwise_bits=8)
    x = q.quantize_input(batches[0][0][:1])
    lengths = torch.tensor([x.shape[-1]])
    with torch.inference_mode():
        ref = q.forward_int(x, lengths)[0].numpy()
    ref_np = NumpyReference().run(q.program, x.numpy(), lengths.numpy())[0]
    assert (ref_np == ref).all()
    for mode in ("native", "float-exact") if native.available() else ("float-exact",):
        assert (run_fast(q.program, x, lengths, depthwise=mode)[0] == ref).all()
