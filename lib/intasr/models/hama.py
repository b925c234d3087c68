"""The `hama` package's pretrained phoneme Conformer-CTC, read into our Conformer.

PyPI `hama` 1.7.0 (Apache-2.0 metadata, MIT LICENSE in hamanlp/hama) ships a small English
phoneme CTC model, `hama/assets/asr_waveform.hama`, and a native engine that runs it. We read
the weights straight from the installed package (``importlib.resources``; nothing is copied into
this repository) and map them onto the project's one Conformer implementation
(`models/conformer.py`, NeMo key names), so that every tool here (evaluate, quantize, ...) takes it.

File format (``.hama``; little-endian; verified on the shipped file)::

    magic  "HAMAPK" (6 bytes), version u8 (1), kind u8 (2 for this file), tensor count u32,
    table: per tensor  name_len u16, name (utf-8), dtype u8 (0 f32, 1 f16, 2 i64, 3 i32, 4 u8),
           ndim u8, dims u32 * ndim, offset u64, nbytes u64,
    zero padding to a multiple of 16, then the data blob; offsets are relative to the blob start
    (each tensor 16-byte aligned) and the blob ends exactly at the end of the file.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .checkpoint import CheckpointError

MAGIC = b"HAMAPK"
MAX_RANK = 32
ASSET_PACKAGE = "hama.assets"
ASSET_NAME = "asr_waveform.hama"
_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("<f2"), 2: np.dtype("<i8"), 3: np.dtype("<i4"), 4: np.dtype("u1")}


@dataclass(frozen=True)
class HamaTensorInfo:
    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    offset: int
    nbytes: int


@dataclass
class HamaPackage:
    """A parsed `.hama` file: header fields and tensors (numpy arrays, dtype as stored)."""

    version: int
    kind: int
    infos: list[HamaTensorInfo]
    tensors: dict[str, np.ndarray]
    source: str


def _align16(n: int) -> int:
    return (n + 15) & ~15


def parse_hama(data: bytes, where: str = "<bytes>") -> HamaPackage:
    """Parse `.hama` bytes; any inconsistency raises CheckpointError naming `where` and the problem."""

    def bad(msg: str) -> CheckpointError:
        return CheckpointError(f"{where}: {msg}")

    view = memoryview(data)
    n = len(view)
    if n < 12:
        raise bad(f"truncated: {n} bytes, shorter than the 12-byte header")
    if bytes(view[:6]) != MAGIC:
        raise bad(f"not a .hama weight package (magic {bytes(view[:6])!r}, expected {MAGIC!r})")
    version, kind = view[6], view[7]
    if version != 1:
        raise bad(f"unsupported .hama version {version} (this reader knows version 1)")
    (count,) = struct.unpack_from("<I", view, 8)
    pos = 12
    infos: list[HamaTensorInfo] = []
    names: set[str] = set()
    for i in range(count):
        def need(k: int, what: str) -> None:
            if pos + k > n:
                raise bad(f"truncated header: tensor {i} of {count} needs {what} at byte {pos}, file has {n} bytes")

        need(2, "a name length")
        (name_len,) = struct.unpack_from("<H", view, pos)
        pos += 2
        need(name_len, "its name")
        try:
            name = bytes(view[pos:pos + name_len]).decode("utf-8")
        except UnicodeDecodeError as e:
            raise bad(f"tensor {i}: name is not valid UTF-8 ({e})") from e
        pos += name_len
        need(2, f"dtype and rank of {name!r}")
        code, ndim = view[pos], view[pos + 1]
        pos += 2
        if code not in _DTYPES:
            raise bad(f"tensor {name!r}: unknown dtype code {code}")
        if ndim > MAX_RANK:   # NumPy arrays have at most 64 dimensions (ValueError past that)
            raise bad(f"tensor {name!r}: rank {ndim}, more than {MAX_RANK}")
        need(4 * ndim + 16, f"dims, offset and size of {name!r}")
        shape = struct.unpack_from(f"<{ndim}I", view, pos)
        pos += 4 * ndim
        offset, nbytes = struct.unpack_from("<QQ", view, pos)
        pos += 16
        if name in names:
            raise bad(f"tensor {name!r} appears twice")
        names.add(name)
        dtype = _DTYPES[code]
        expect = math.prod(shape) * dtype.itemsize   # Python ints: no int64 wrap-around
        if nbytes != expect:
            raise bad(f"tensor {name!r}: {nbytes} bytes stored but shape {list(shape)} of {dtype} needs {expect}")
        infos.append(HamaTensorInfo(name, dtype, tuple(int(d) for d in shape), int(offset), int(nbytes)))
    data_start = _align16(pos)
    if data_start > n:
        raise bad(f"truncated: header ends at byte {pos}, file has {n} bytes")
    tensors: dict[str, np.ndarray] = {}
    for t in infos:
        start, end = data_start + t.offset, data_start + t.offset + t.nbytes
        if end > n:
            raise bad(f"truncated: tensor {t.name!r} needs bytes {start}..{end}, file has {n}")
        arr = np.frombuffer(view[start:end], dtype=t.dtype).reshape(t.shape).copy()
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise bad(f"tensor {t.name!r} holds NaN or infinite values (corrupt?)")
        tensors[t.name] = arr
    return HamaPackage(int(version), int(kind), infos, tensors, where)


def read_hama(path: str | Path | None = None) -> HamaPackage:
    """Read a `.hama` file; None reads the installed package's `asr_waveform.hama`."""
    if path is None:
        try:
            ref = resources.files(ASSET_PACKAGE).joinpath(ASSET_NAME)
            data = ref.read_bytes()
        except ModuleNotFoundError as e:
            raise CheckpointError(f"{ASSET_PACKAGE}/{ASSET_NAME}: the 'hama' package is not installed "
                                  f"('pip install hama==1.7.0')") from e
        except OSError as e:
            raise CheckpointError(f"{ASSET_PACKAGE}/{ASSET_NAME}: cannot read the packaged asset: {e}") from e
        return parse_hama(data, str(ref))
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such .hama file")
    return parse_hama(path.read_bytes(), str(path))


def write_hama(path: str | Path, tensors: dict[str, np.ndarray], version: int = 1, kind: int = 2) -> Path:
    """Write a `.hama` file (the format above); used by the tests to build small packages."""
    codes = {v: k for k, v in _DTYPES.items()}
    table, blob = bytearray(), bytearray()
    for name, arr in tensors.items():
        a = np.asarray(arr)
        a = np.array(a, dtype=a.dtype.newbyteorder("<"), order="C")   # keeps 0-d arrays 0-d
        code = codes.get(a.dtype)
        if code is None:
            raise ValueError(f"unsupported dtype {a.dtype} for {name}")
        blob.extend(b"\0" * (_align16(len(blob)) - len(blob)))
        nb = name.encode("utf-8")
        table += struct.pack("<H", len(nb)) + nb + struct.pack("<BB", code, a.ndim)
        table += struct.pack(f"<{a.ndim}I", *a.shape) + struct.pack("<QQ", len(blob), a.nbytes)
        blob += a.tobytes()
    header = MAGIC + struct.pack("<BBI", version, kind, len(tensors)) + bytes(table)
    header += b"\0" * (_align16(len(header)) - len(header))
    path = Path(path)
    path.write_bytes(bytes(header) + bytes(blob))
    return path



# --- the model: hama's tensors in our Conformer (NeMo keys) ----------------------------------
#
# What the file holds, and what matching the package's own engine pinned down (max |log-prob
# difference| ~1e-2 over whole utterances, identical frame argmax; tests/test_hama.py):
#   front end  reflect pad 200, STFT as conv with the stored kernels (n_fft 400, hop 160,
#              periodic Hann inside), power, @ mel_fb [201, 80], log(max(x, 1e-10)), rounded
#              to float16 (the exported graph casts there: without it the difference is 20x
#              larger); no normalization, no dither, no pre-emphasis; at most 3000 frames.
#   subsampling  Conv1d 80 -> 144, kernel 3, stride 2, padding 1 (onnx::Conv_801/802), GELU (erf).
#   no positional encoding and no xscaling (both measured worse by orders of magnitude).
#   4 Conformer blocks, d_model 144, 4 heads (1, 2, 3, 6, 8, 9, 12 all fail), FF 576 with SiLU,
#   macaron 1/2 steps, LayerNorm eps 1e-5, conv module pw 144->288, GLU, depthwise k31 with a
#   bias (its BatchNorm folded in: onnx::Conv_804+3i / 805+3i), SiLU, pw 144->144, final LN.
#   Matrices are stored as [in, out] under onnx::MatMul_* names, six per block in graph order:
#   ffn1.fc1, ffn1.fc2, attn in_proj (q|k|v), out_proj, ffn2.fc1, ffn2.fc2.
#   output  1x1 conv to 191 = hama's G2P decoder vocabulary (189) + "<wb>" + blank (last,
#   NeMo's convention). The engine's decoder divides log-probs by 0.95 and adds -0.1 to the
#   blank before the argmax (hama.asr.ASRDecodeConfig): config["decoding"] carries that.

D_MODEL, N_LAYERS, N_HEADS, D_FF, CONV_KERNEL, N_MELS = 144, 4, 4, 576, 31, 80
_BLOCK_MATMULS = ((144, 576), (576, 144), (144, 432), (144, 144), (144, 576), (576, 144))


def hama_labels() -> list[str]:
    """The 190 output labels (blank excluded): hama's decoder vocabulary, then `<wb>`."""
    import json

    try:
        with resources.files(ASSET_PACKAGE).joinpath("g2p_vocab.json").open("r", encoding="utf-8") as f:
            vocab = json.load(f)
    except ModuleNotFoundError as e:
        raise CheckpointError("the 'hama' package is not installed ('pip install hama==1.7.0')") from e
    return list(vocab["decoder"]) + [WORD_BOUNDARY]


def hama_config(labels: list[str] | None = None, source: dict | None = None) -> dict:
    """The model config (NeMo layout plus our options) of the hama Conformer-CTC."""
    labels = hama_labels() if labels is None else list(labels)
    return {
        "sample_rate": 16000,
        "labels": labels,
        "preprocessor": {"type": "conv_stft", "sample_rate": 16000, "n_fft": 400, "hop_length": 160,
                         "features": N_MELS, "log_floor": 1e-10, "round_fp16": True, "max_frames": 3000},
        "encoder": {"_target_": "nemo.collections.asr.modules.ConformerEncoder", "feat_in": N_MELS,
                    "feat_out": -1, "n_layers": N_LAYERS, "d_model": D_MODEL, "subsampling": "striding_conv1d",
                    "subsampling_factor": 2, "subsampling_conv_channels": D_MODEL,
                    "subsampling_conv_kernel_size": 3, "subsampling_activation": "gelu",
                    "ff_expansion_factor": D_FF // D_MODEL, "self_attention_model": "abs_pos", "pos_emb": "none",
                    "n_heads": N_HEADS, "xscaling": False, "conv_kernel_size": CONV_KERNEL, "use_bias": True},
        "decoder": {"_target_": "nemo.collections.asr.modules.ConvASRDecoder", "feat_in": D_MODEL,
                    "num_classes": len(labels), "vocabulary": labels},
        "decoding": {"strategy": "greedy", "temperature": 0.95, "blank_bias": -0.1},
        "phonemes": {"g2p": "hama", "word_boundary": WORD_BOUNDARY},
        "source": source or {},
    }


def _matmul_names(tensors: dict, where: str) -> list[str]:
    names = [k for k in tensors if k.startswith("onnx::MatMul_")]
    bad = [k for k in names if not k.rsplit("_", 1)[1].isascii() or not k.rsplit("_", 1)[1].isdigit()]
    if bad:   # the graph order is the number after the last underscore (fuzz: bytes_bytes)
        raise CheckpointError(f"{where}: tensor name {bad[0][:60]!r} does not end in a number")
    names.sort(key=lambda k: int(k.rsplit("_", 1)[1]))
    shapes = [tuple(tensors[k].shape) for k in names]
    expect = list(_BLOCK_MATMULS) * N_LAYERS
    if shapes != expect:
        raise CheckpointError(f"{where}: onnx::MatMul_* tensors have shapes {shapes}, expected {expect} "
                              f"(six per block in graph order)")
    return names


def hama_state_dict(pkg: HamaPackage, bn_eps: float = 1e-5) -> dict:
    """hama tensors -> our Conformer's state dict (float32). Each folded depthwise bias becomes an
    identity BatchNorm (running mean 0, var 1 - eps, gamma 1, beta = the bias) behind a bias-free
    depthwise conv, so the function is unchanged and `restore_conformer_bn` can fill in statistics."""
    import torch

    t = pkg.tensors

    def get(name):
        if name not in t:
            raise CheckpointError(f"{pkg.source}: tensor {name!r} missing")
        return torch.from_numpy(t[name].astype(np.float32))

    mm = _matmul_names(t, pkg.source)
    convs = sorted((k for k in t if k.startswith("onnx::Conv_")), key=lambda k: int(k.rsplit("_", 1)[1]))
    if len(convs) != 2 + 2 * N_LAYERS:
        raise CheckpointError(f"{pkg.source}: expected {2 + 2 * N_LAYERS} onnx::Conv_* tensors, found {convs}")
    sd = {
        "preprocessor.featurizer.stft_real_kernel": get("stft_real_kernel"),
        "preprocessor.featurizer.stft_imag_kernel": get("stft_imag_kernel"),
        "preprocessor.featurizer.mel_fb": get("mel_fb"),
        "encoder.pre_encode.conv.0.weight": get(convs[0]),
        "encoder.pre_encode.conv.0.bias": get(convs[1]),
        "decoder.decoder_layers.0.weight": get("acoustic_model.model.proj.weight"),
        "decoder.decoder_layers.0.bias": get("acoustic_model.model.proj.bias"),
    }
    d = D_MODEL
    for i in range(N_LAYERS):
        src, dst = f"acoustic_model.model.blocks.{i}.", f"encoder.layers.{i}."
        m = mm[6 * i: 6 * i + 6]
        for ours, theirs in (("norm_feed_forward1", "ffn1.norm"), ("norm_self_att", "attn_norm"),
                             ("norm_conv", "conv.norm"), ("norm_feed_forward2", "ffn2.norm"), ("norm_out", "norm")):
            sd[f"{dst}{ours}.weight"] = get(f"{src}{theirs}.weight")
            sd[f"{dst}{ours}.bias"] = get(f"{src}{theirs}.bias")
        for ff, theirs, w1, w2 in (("feed_forward1", "ffn1", m[0], m[1]), ("feed_forward2", "ffn2", m[4], m[5])):
            sd[f"{dst}{ff}.linear1.weight"] = get(w1).T.contiguous()
            sd[f"{dst}{ff}.linear1.bias"] = get(f"{src}{theirs}.fc1.bias")
            sd[f"{dst}{ff}.linear2.weight"] = get(w2).T.contiguous()
            sd[f"{dst}{ff}.linear2.bias"] = get(f"{src}{theirs}.fc2.bias")
        in_w, in_b = get(m[2]).T, get(f"{src}attn.in_proj_bias")      # [3d, d]: q, k, v stacked
        for j, name in enumerate(("linear_q", "linear_k", "linear_v")):
            sd[f"{dst}self_attn.{name}.weight"] = in_w[j * d:(j + 1) * d].contiguous()
            sd[f"{dst}self_attn.{name}.bias"] = in_b[j * d:(j + 1) * d].clone()
        sd[f"{dst}self_attn.linear_out.weight"] = get(m[3]).T.contiguous()
        sd[f"{dst}self_attn.linear_out.bias"] = get(f"{src}attn.out_proj.bias")
        for ours, theirs in (("pointwise_conv1", "pointwise1"), ("pointwise_conv2", "pointwise2")):
            sd[f"{dst}conv.{ours}.weight"] = get(f"{src}conv.{theirs}.weight")
            sd[f"{dst}conv.{ours}.bias"] = get(f"{src}conv.{theirs}.bias")
        sd[f"{dst}conv.depthwise_conv.weight"] = get(convs[2 + 2 * i])
        sd[f"{dst}conv.depthwise_conv.bias"] = torch.zeros(d)
        sd[f"{dst}conv.batch_norm.running_mean"] = torch.zeros(d)
        sd[f"{dst}conv.batch_norm.running_var"] = torch.full((d,), 1.0 - bn_eps)
        sd[f"{dst}conv.batch_norm.weight"] = torch.ones(d)
        sd[f"{dst}conv.batch_norm.bias"] = get(convs[3 + 2 * i])
        sd[f"{dst}conv.batch_norm.num_batches_tracked"] = torch.tensor(0)
    return sd


def load_hama_model(path: str | Path | None = None):
    """The hama Conformer-CTC as our float `ConformerCTC` (eval mode), from the installed package
    (or a `.hama` file at `path`)."""
    import hashlib

    from .conformer import ConformerCTC

    pkg = read_hama(path)
    source = {"package": "hama", "version": hama_version() if path is None else None, "asset": ASSET_NAME,
              "file": Path(pkg.source).name, "sha256": hashlib.sha256(Path(pkg.source).read_bytes()).hexdigest()}
    model = ConformerCTC(hama_config(source=source))
    sd = hama_state_dict(pkg, bn_eps=model.encoder.layers[0].conv.batch_norm.eps)
    expect = model.state_dict()
    for key, t in sd.items():   # named, before torch's several-line size-mismatch report
        if key in expect and tuple(t.shape) != tuple(expect[key].shape):
            raise CheckpointError(f"{pkg.source}: tensor for {key} has shape {tuple(t.shape)}, the Conformer "
                                  f"needs {tuple(expect[key].shape)}")
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{pkg.source}: mapping onto the Conformer left missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    return model.eval()


# --- BatchNorm restoration for the conv modules ---------------------------------------------

def conv_modules(model):
    """(name, ConformerConvolution) of every Conformer layer."""
    return [(f"encoder.layers.{i}.conv", layer.conv) for i, layer in enumerate(model.encoder.layers)]


def measure_conv_bn_inputs(model, batches, progress: bool = True) -> dict:
    """Per-channel mean and unbiased variance of every conv module's depthwise-conv output (the
    BatchNorm input) over the valid frames of `batches` ((audio [B, N], lengths [B]) pairs).
    Sums are float64. The depthwise conv must be bias-free (as `hama_state_dict` leaves it)."""
    import torch
    from tqdm.auto import tqdm

    from .restore_bn import ChannelMoments, fixed_threads

    acc, handles, masks = {}, [], {}
    for name, conv in conv_modules(model):
        if conv.depthwise_conv.bias is not None and conv.depthwise_conv.bias.detach().abs().max() > 0:
            raise ValueError(f"{name}.depthwise_conv has a non-zero bias: fold it into the BatchNorm first")
        acc[name] = ChannelMoments()

        def pre(_m, args, kwargs, name=name):
            pad_mask = kwargs.get("pad_mask", args[1] if len(args) > 1 else None)
            masks[name] = pad_mask

        def post(_m, _inp, z, name=name):
            pad_mask = masks[name]
            valid = (torch.ones(z.shape[0], z.shape[2], dtype=torch.bool) if pad_mask is None else ~pad_mask)
            acc[name].add(z, valid[:, None, :])

        handles.append(conv.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(conv.depthwise_conv.register_forward_hook(post))
    try:
        with torch.no_grad(), fixed_threads(1):   # byte-reproducible whatever the thread count
            for audio, lengths in tqdm(batches, desc="BN statistics", disable=not progress):
                model(audio, lengths)
    finally:
        for h in handles:
            h.remove()
    return {name: m.result() for name, m in acc.items()}


def restore_conformer_bn(model, batches, progress: bool = True) -> dict:
    """Give every conv module's identity BatchNorm (z + b, from `hama_state_dict`) the running
    statistics measured on `batches`, with gamma = sqrt(var + eps), beta = mean + b, so the model
    computes the same function (models/bn.py `set_identity_affine`). Returns the statistics."""
    import torch

    from .restore_bn import restore_identity_bn

    for name, conv in conv_modules(model):
        bn = conv.batch_norm
        identity = (bn.running_mean.abs().max() == 0 and bn.weight.detach().eq(1).all()
                    and torch.allclose(bn.running_var + bn.eps, torch.ones_like(bn.running_var)))
        if not identity:
            raise ValueError(f"{name}.batch_norm is not in identity form (already restored?)")
    stats = measure_conv_bn_inputs(model, batches, progress=progress)
    with torch.no_grad():
        for name, conv in conv_modules(model):
            restore_identity_bn(conv.batch_norm, *stats[name])
    model.config.setdefault("source", {})["batchnorm"] = "restored"
    return stats



# --- the package's own engine, as the reference ----------------------------------------------

class HamaEngine:
    """The `hama` package's native engine on the same asset: the reference our model is checked
    against. `log_probs(wav)` -> raw frame log-probs [T, 191] (float32, valid frames only);
    `phonemes(wav)` -> the package's greedy transcript (its ASRDecodeConfig: log-probs / 0.95,
    blank - 0.1, argmax, collapse, blanks and `<wb>` dropped), as `scored_phonemes`."""

    def __init__(self):
        from hama import _engine
        from hama.asr import ASRModel

        if not _engine.available():
            raise RuntimeError("libhama (the hama package's native engine) is not available on this platform")
        self.session = _engine.AsrSession(resources.files(ASSET_PACKAGE).joinpath(ASSET_NAME).read_bytes())
        self.asr = ASRModel()

    def log_probs(self, wav: np.ndarray) -> np.ndarray:
        wav = np.asarray(wav, dtype=np.float32).reshape(-1)
        lp, n = self.session.run(["log_probs", "out_lengths"],
                                 {"waveform": wav[None], "waveform_lengths": np.array([len(wav)], dtype=np.int64)})
        return lp[0, :int(np.asarray(n).reshape(-1)[0])]

    def phonemes(self, wav: np.ndarray, sample_rate: int = 16000) -> list[str]:
        return scored_phonemes(self.asr.transcribe_waveform(np.asarray(wav, dtype=np.float32), sample_rate).phonemes)

# --- phoneme references: the package's own English G2P, cached -------------------------------

WORD_BOUNDARY = "<wb>"


def scored_phonemes(tokens) -> list[str]:
    """The tokens a phoneme error rate counts: word boundaries (`<wb>`), blanks and
    whitespace-only tokens (the G2P's word separator) are dropped."""
    return [t for t in tokens if t.strip() and t not in (WORD_BOUNDARY, "<blank>")]


def hama_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hama")
    except PackageNotFoundError as e:
        raise CheckpointError("the 'hama' package is not installed ('pip install hama==1.7.0')") from e


def g2p_references(texts, cache_dir: str | Path | None = None) -> list[list[str]]:
    """Phoneme references for transcripts: `hama.inference.G2PModel().predict(text.lower())`,
    the phoneme of each alignment, then `scored_phonemes`.

    G2P is deterministic, so results are cached in `cache_dir` (default build/g2p_cache), one
    JSON file per hama version mapping text -> phonemes; the file is rewritten atomically (temp
    file + rename) whenever new texts were added, so an interrupted run never leaves it corrupt.
    A cache file that cannot be parsed is ignored and rebuilt.
    """
    import json

    from .checkpoint import atomic_write_bytes
    from ..paths import build_dir

    texts = [t.lower() for t in texts]
    cache_path = Path(cache_dir or build_dir() / "g2p_cache") / f"hama-{hama_version()}.json"
    cache: dict[str, list[str]] = {}
    if cache_path.is_file():
        try:
            loaded = json.loads(cache_path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict) and all(isinstance(v, list) for v in loaded.values()):
                cache = loaded
        except (json.JSONDecodeError, UnicodeDecodeError):
            cache = {}
    todo = sorted({t for t in texts if t not in cache})
    if todo:
        from hama.inference import G2PModel

        g2p = G2PModel()
        for t in todo:
            cache[t] = [a.phoneme for a in g2p.predict(t).alignments]
        payload = json.dumps(cache, ensure_ascii=False, sort_keys=True, indent=0).encode("utf-8")
        atomic_write_bytes(cache_path, lambda f: f.write(payload))
    return [scored_phonemes(cache[t]) for t in texts]
