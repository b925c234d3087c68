"""The readers under fuzz: what each one is given, how its seed files are mutated, what it runs.

A reader: ``name``; ``seeds(seed_dir)`` (the real files); ``make(draw, ctx, case_dir)`` (one
mutated input: its path and the mutation's label); ``target(path, out_dir, ctx)`` (the library
call a stranger's file goes through; it returns on acceptance or raises); the allowed error types
(the library's own); and the allocation bound ``alloc = (A, B)``: the input may make the reader
allocate at most ``A x its size + B`` bytes.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hypothesis import strategies as st

from . import mutate as mu

MiB = 1 << 20


@dataclass
class Reader:
    name: str
    what: str                     # the library call, for the results table
    make: Callable                # (draw, ctx, case_dir) -> (Path, label)
    target: Callable              # (path, out_dir, ctx) -> None
    setup: Callable               # (seed_dir, work) -> ctx
    alloc: tuple[int, int]        # (A, B): bound A * input bytes + B
    native: bool = False          # runs in the C driver (checked there)


def expected_errors():
    """The exception types a reader may raise on bad input (each names the file and the problem)."""
    from ..audio import AudioError
    from ..data import DataError
    from ..models.checkpoint import CheckpointError
    from ..program.ops import ProgramError
    from ..tokenizer import TokenizerError

    return (CheckpointError, AudioError, DataError, ProgramError, TokenizerError)


def _write(case_dir: Path, name: str, data: bytes) -> Path:
    p = case_dir / name
    p.write_bytes(data)
    return p


# ------------------------------------------------------------------ .aqz

def _aqz_setup(seed_dir, work):
    seeds = sorted((Path(seed_dir) / "aqz").glob("*.aqz"))
    return {"seeds": [(p.name, p.read_bytes()) for p in seeds], "warm": seeds}


def _aqz_make(draw, ctx, case_dir):
    name, data = draw(st.sampled_from(ctx["seeds"]))
    layer = draw(st.sampled_from(["bytes", "header", "header", "member", "member", "npy", "npy", "container"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data, [d for _, d in ctx["seeds"]])
        return _write(case_dir, "m.aqz", out), "bytes_" + label
    members = [(n, d, None) for n, d in mu.read_zip(data)]
    header = json.loads(members[0][1])
    if layer == "header":
        what = draw(st.sampled_from(["program", "program", "program", "meta", "top", "text"]))
        if what == "text":
            text, label = mu.mutate_json_text(draw, members[0][1].decode())
            members[0] = (members[0][0], text.encode("utf-8", "surrogateescape"), None)
            return _write(case_dir, "m.aqz", mu.write_zip(members)), "header_" + label
        meta = json.loads(header["meta"])
        if what == "program":
            meta["program"] = mu.mutate_tree(draw, meta["program"])
        elif what == "meta":
            meta = mu.mutate_tree(draw, meta)
        else:
            header = mu.mutate_tree(draw, header)
        if isinstance(header, dict) and "meta" in header and what != "top":
            header["meta"] = json.dumps(meta)
        members[0] = (members[0][0], json.dumps(header).encode(), None)
        return _write(case_dir, "m.aqz", mu.write_zip(members)), "header_" + what
    tensor_members = list(range(1, len(members)))
    if layer == "npy":
        i = draw(st.sampled_from(tensor_members))
        new, label = mu.mutate_npy(draw, members[i][1])
        members[i] = (members[i][0], new, None)
        return _write(case_dir, "m.aqz", mu.write_zip(members)), label
    if layer == "member":
        kind = draw(st.sampled_from(["swap", "swap", "swap", "drop", "duplicate_name", "extra", "rename",
                                     "deflate", "header_last"]))
        if kind == "swap":
            i, j = draw(st.sampled_from(tensor_members)), draw(st.sampled_from(tensor_members))
            (ni, di, _), (nj, dj, _) = members[i], members[j]
            members[i], members[j] = (ni, dj, None), (nj, di, None)
        elif kind == "drop":
            del members[draw(st.sampled_from(tensor_members))]
        elif kind == "duplicate_name":
            i = draw(st.sampled_from(tensor_members))
            members.append((members[i][0], members[draw(st.sampled_from(tensor_members))][1], None))
        elif kind == "extra":
            members.append((draw(st.sampled_from(["../../evil.npy", "/abs.npy", "x" * 200, "tensors/"])), b"x", None))
        elif kind == "rename":
            i = draw(st.sampled_from(tensor_members))
            members[i] = (members[i][0] + "x", members[i][1], None)
        elif kind == "deflate":
            import zipfile

            i = draw(st.sampled_from(range(len(members))))
            members[i] = (members[i][0], members[i][1], zipfile.ZIP_DEFLATED)
        else:
            members.append(members.pop(0))
        return _write(case_dir, "m.aqz", mu.write_zip(members)), "member_" + kind
    # container: a zip bomb, a stored member claiming a huge size, or not a zip
    import zipfile

    kind = draw(st.sampled_from(["bomb", "zip64_huge", "empty_zip", "nested_zip"]))
    if kind == "bomb":
        i = draw(st.sampled_from(range(len(members))))
        members[i] = (members[i][0], bytes(draw(st.sampled_from([MiB, 64 * MiB]))), zipfile.ZIP_DEFLATED)
        out = mu.write_zip(members)
    elif kind == "zip64_huge":
        out = mu.write_zip(members)
        # central directory: claim a huge uncompressed size for the header member
        cd = out.rfind(b"PK\x01\x02")
        b = bytearray(out)
        first = out.find(b"PK\x01\x02")
        at = draw(st.sampled_from([first, cd]))
        b[at + 20:at + 28] = struct.pack("<II", 0xFFFFFFFE, 0xFFFFFFFE)
        out = bytes(b)
    elif kind == "empty_zip":
        out = mu.write_zip([])
    else:
        from ..program.aqz import HEADER

        out = mu.write_zip([(HEADER, mu.write_zip(members), None)])
    return _write(case_dir, "m.aqz", out), "container_" + kind


def _input_features(program) -> int:
    f = program.meta.get("input_features")
    if isinstance(f, int):
        return f
    for op in program.ops:
        if op.kind == "conv1d" and op.inputs[0] == program.inputs[0]:
            return int(op.params["weight"].shape[1]) * int(op.attrs["groups"])
    return 64


class RunAfterLoad(Exception):
    """A program that loaded (so passed validation) failed to run: validation missed something."""


def _aqz_target(path, out_dir, ctx):
    import numpy as np

    from ..integer_model import load_quantized
    from ..program.numpy_ref import NumpyReference

    q = load_quantized(path)
    F = _input_features(q.program)
    x = np.random.default_rng(0).integers(-128, 128, (1, F, 48)).astype(np.int8)
    try:
        NumpyReference().run(q.program, x, np.array([48]))
    except Exception as e:
        raise RunAfterLoad(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


# ------------------------------------------------------------------ .nemo

def _nemo_setup(seed_dir, work):
    p = Path(seed_dir) / "nemo" / "tiny_convasr.nemo"
    members = mu.read_tar(p.read_bytes())
    return {"data": p.read_bytes(), "members": members, "warm": [p]}


def _nemo_make(draw, ctx, case_dir):
    import copy

    import yaml

    data = ctx["data"]
    members = [(copy.copy(m), d) for m, d in ctx["members"]]
    layer = draw(st.sampled_from(["bytes", "config", "config", "weights", "weights", "tar", "tar", "bomb", "header"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data)
        return _write(case_dir, "m.nemo", out), "bytes_" + label
    cfg_i = next(i for i, (m, _) in enumerate(members) if m.name.endswith("model_config.yaml"))
    w_i = next(i for i, (m, _) in enumerate(members) if m.name.endswith("model_weights.ckpt"))
    if layer == "config":
        what = draw(st.sampled_from(["tree", "tree", "tree", "nesting", "alias_bomb", "text", "huge_model"]))
        text = members[cfg_i][1].decode()
        if what == "tree":
            text = yaml.safe_dump(mu.mutate_tree(draw, yaml.safe_load(text)), sort_keys=False)
        elif what == "nesting":
            text = "a: " + mu.deep_nesting(draw(st.sampled_from([100, 1000, 10**4, 10**5]))) + "\n" + text
        elif what == "alias_bomb":
            lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
            lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
            cfg = yaml.safe_load(text)
            text = "\n".join(lines) + "\n" + yaml.safe_dump(cfg, sort_keys=False).replace(
                "labels:", "labels_orig:", 1) + "labels: *a8\n"
        elif what == "huge_model":
            cfg = yaml.safe_load(text)
            enc = cfg["encoder"]["jasper"][draw(st.integers(0, len(cfg["encoder"]["jasper"]) - 1))]
            key = draw(st.sampled_from(["filters", "kernel", "repeat", "stride", "dilation"]))
            enc[key] = draw(st.sampled_from([10**5, 10**7, 2**31, [2**20], 0, -1]))
            text = yaml.safe_dump(cfg, sort_keys=False)
        else:
            b, _ = mu.mutate_bytes(draw, text.encode())
            members[cfg_i] = (members[cfg_i][0], b)
            return _write(case_dir, "m.nemo", mu.write_tar(members)), "config_text"
        members[cfg_i] = (members[cfg_i][0], text.encode())
        return _write(case_dir, "m.nemo", mu.write_tar(members)), "config_" + what
    if layer == "weights":
        what = draw(st.sampled_from(["bytes", "state", "state", "pickle"]))
        if what == "bytes":
            b, label = mu.mutate_bytes(draw, members[w_i][1])
            members[w_i] = (members[w_i][0], b)
            return _write(case_dir, "m.nemo", mu.write_tar(members)), "weights_bytes_" + label
        import torch

        sd = torch.load(io.BytesIO(members[w_i][1]), weights_only=True)
        keys = sorted(sd)
        if what == "state":
            k = draw(st.sampled_from(keys))
            kind = draw(st.sampled_from(["swap", "reshape", "dtype", "nan", "drop", "extra", "huge", "scalar"]))
            if kind == "swap":
                k2 = draw(st.sampled_from(keys))
                sd[k], sd[k2] = sd[k2], sd[k]
            elif kind == "reshape":
                sd[k] = sd[k].reshape(-1)
            elif kind == "dtype":
                sd[k] = sd[k].to(draw(st.sampled_from([torch.float16, torch.int64, torch.bool, torch.complex64,
                                                       torch.uint8, torch.float64])))
            elif kind == "nan":
                t = sd[k].clone()
                if t.is_floating_point() and t.numel():
                    t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
                sd[k] = t
            elif kind == "drop":
                del sd[k]
            elif kind == "extra":
                sd["encoder.extra.weight"] = torch.zeros(3)
            elif kind == "huge":
                sd[k] = torch.zeros(1).expand(2**20)   # a view: small storage, large shape
            else:
                sd[k] = torch.tensor(1.0)
            buf = io.BytesIO()
            torch.save(sd, buf)
            label = "weights_" + kind
        else:
            buf = io.BytesIO()
            obj = draw(st.sampled_from(["list", "nested", "string", "set", "ordered"]))
            value = {"list": [1, 2], "nested": {"a": {"b": torch.zeros(2)}}, "string": "x", "set": {1, 2},
                     "ordered": __import__("collections").OrderedDict(sd)}[obj]
            torch.save(value, buf)
            label = "weights_pickle_" + obj
        members[w_i] = (members[w_i][0], buf.getvalue())
        return _write(case_dir, "m.nemo", mu.write_tar(members)), label
    if layer == "tar":
        new, label = mu.mutate_tar_structure(draw, members, ("model_config.yaml", "model_weights.ckpt"))
        comp = draw(st.sampled_from(["", "", "gz", "bz2", "xz"]))
        return _write(case_dir, "m.nemo", mu.write_tar(new, comp)), label + (f"_{comp}" if comp else "")
    if layer == "bomb":
        size, comp = draw(st.sampled_from([(64 * MiB, "gz"), (1024 * MiB, "gz"), (64 * MiB, "bz2")]))
        name = draw(st.sampled_from(["model_weights.ckpt", "model_config.yaml", "junk.bin"]))
        return _write(case_dir, "m.nemo", mu.tar_bomb(name, size, comp)), "tar_bomb"
    # header: a member's declared size rewritten in place (octal or base-256), checksum kept valid
    size = draw(st.sampled_from([0, 1, 10**9, 2**40, 8**11, 2**63]))
    out = mu.tar_header_size(data, size, draw(st.integers(0, len(members))))
    return _write(case_dir, "m.nemo", out), "tar_header_size"


def _nemo_target(path, out_dir, ctx):
    from ..models.checkpoint import load_model

    load_model(path)


# ------------------------------------------------------------------ .hama

def _hama_setup(seed_dir, work):
    p = sorted((Path(seed_dir) / "hama").glob("*.hama"))[0]
    data = p.read_bytes()
    # the table: (offset of each entry's fields) for field edits
    view = memoryview(data)
    count = struct.unpack_from("<I", view, 8)[0]
    pos, entries = 12, []
    for _ in range(count):
        name_len = struct.unpack_from("<H", view, pos)[0]
        e = {"name_len": pos}
        pos += 2 + name_len
        e["dtype"], e["ndim"] = pos, pos + 1
        ndim = view[pos + 1]
        pos += 2
        e["dims"] = pos
        e["n_dims"] = ndim
        pos += 4 * ndim
        e["offset"], e["nbytes"] = pos, pos + 8
        pos += 16
        entries.append(e)
    return {"data": data, "entries": entries, "table_end": pos, "warm": [p]}


def _hama_make(draw, ctx, case_dir):
    data = ctx["data"]
    b = bytearray(data)
    layer = draw(st.sampled_from(["bytes", "field", "field", "field", "values", "swap", "count"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data)
        return _write(case_dir, "m.hama", out), "bytes_" + label
    entries = ctx["entries"]
    e = draw(st.sampled_from(entries))
    if layer == "field":
        field = draw(st.sampled_from(["name_len", "dtype", "ndim", "dims", "offset", "nbytes"]))
        fmt = {"name_len": "<H", "dtype": "<B", "ndim": "<B", "dims": "<I", "offset": "<Q", "nbytes": "<Q"}[field]
        at = e[field]
        if field == "dims" and e["n_dims"]:
            at += 4 * draw(st.integers(0, e["n_dims"] - 1))
        size = struct.calcsize(fmt)
        v = draw(st.sampled_from(mu.INTERESTING)) % (1 << (8 * size))
        b[at:at + size] = struct.pack(fmt, v)
        return _write(case_dir, "m.hama", bytes(b)), "field_" + field
    if layer == "values":
        off = struct.unpack_from("<Q", data, e["offset"])[0]
        start = ((ctx["table_end"] + 15) & ~15) + off
        code = data[e["dtype"]]
        nbytes = struct.unpack_from("<Q", data, e["nbytes"])[0]
        if code == 0 and nbytes >= 4:
            v = draw(st.sampled_from([float("nan"), float("inf"), float("-inf"), 3.4e38, -0.0]))
            k = draw(st.integers(0, nbytes // 4 - 1))
            b[start + 4 * k:start + 4 * k + 4] = struct.pack("<f", v)
        elif code == 1 and nbytes >= 2:
            k = draw(st.integers(0, nbytes // 2 - 1))
            b[start + 2 * k:start + 2 * k + 2] = draw(st.sampled_from([b"\x00\x7e", b"\x00\x7c", b"\x00\xfc", b"\xff\x7b"]))
        return _write(case_dir, "m.hama", bytes(b)), "values_nonfinite"
    if layer == "swap":
        # exchange the shape, offset and size records of two tensors (the names stay)
        e2 = draw(st.sampled_from(entries))
        r1, r2 = bytes(b[e["dtype"]:e["nbytes"] + 8]), bytes(b[e2["dtype"]:e2["nbytes"] + 8])
        if len(r1) == len(r2):
            b[e["dtype"]:e["nbytes"] + 8], b[e2["dtype"]:e2["nbytes"] + 8] = r2, r1
        return _write(case_dir, "m.hama", bytes(b)), "swap_records"
    v = draw(st.sampled_from([0, 1, len(entries) - 1, len(entries) + 1, 2**31, 2**32 - 1]))
    b[8:12] = struct.pack("<I", v)
    return _write(case_dir, "m.hama", bytes(b)), "count"


def _hama_target(path, out_dir, ctx):
    from ..models.hama import load_hama_model

    load_hama_model(path)


# ------------------------------------------------------------------ audio

def _audio_setup(seed_dir, work):
    d = Path(seed_dir) / "audio"
    return {"seeds": [(p.name, p.read_bytes()) for p in sorted(d.iterdir())], "warm": sorted(d.iterdir())}


def _audio_make(draw, ctx, case_dir):
    import numpy as np

    name, data = draw(st.sampled_from(ctx["seeds"]))
    ext = Path(name).suffix
    layer = draw(st.sampled_from(["bytes", "bytes", "header", "header", "built", "nonfinite"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data, [d for _, d in ctx["seeds"]])
        return _write(case_dir, "m" + ext, out), "bytes_" + label
    if layer == "header":
        if ext == ".wav":
            out, label = mu.wav_fields(draw, data)
        elif ext == ".flac":
            out, label = mu.flac_streaminfo(draw, data)
        else:
            out, label = mu.mutate_bytes(draw, data)
            label = "ogg_" + label
        return _write(case_dir, "m" + ext, out), label
    if layer == "built":   # a WAV with absurd header values but consistent sizes
        rate = draw(st.sampled_from([1, 2, 100, 999, 4000, 7999, 44101, 96000, 192000, 384000, 1000003, 999983,
                                     2**31 - 1, 2**32 - 1, 0]))
        channels = draw(st.sampled_from([1, 2, 3, 8, 255, 1024, 1025, 65535, 0]))
        bits = draw(st.sampled_from([8, 16, 24, 32, 12, 64, 0]))
        frames = draw(st.sampled_from([0, 1, 10, 1000]))
        tag = draw(st.sampled_from([1, 1, 3, 0xFFFE, 6, 7, 0x55, 2]))
        block = max(1, channels * max(bits, 8) // 8)
        samples = bytes(draw(st.binary(min_size=0, max_size=64))) * (frames * block // 64 + 1)
        return _write(case_dir, "m.wav", mu.wav_bytes(samples[: frames * block], rate, channels, bits, tag)), "wav_built"
    # NaN / Inf / huge float samples in a float WAV
    v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 3e38, 1e-40]))
    a = np.zeros(draw(st.sampled_from([1, 100, 16000])), np.float32)
    a[draw(st.integers(0, len(a) - 1))] = v
    return _write(case_dir, "m.wav", mu.wav_bytes(a.tobytes(), 16000, 1, 32, 3)), "wav_nonfinite"


def _audio_target(path, out_dir, ctx):
    from ..audio import load_audio

    load_audio(path)


# ------------------------------------------------------------------ manifest

def _manifest_setup(seed_dir, work):
    audio = Path(work) / "audio"
    if not audio.exists():
        shutil.copytree(Path(seed_dir) / "audio", audio)
    fifo = Path(work) / "fifo.wav"
    if not fifo.exists():
        os.mkfifo(fifo)
    text = (Path(seed_dir) / "manifest" / "manifest.json").read_text()
    text = text.replace(str((Path(seed_dir) / "audio").resolve()), str(audio.resolve()))
    warm = Path(work) / "warm_manifest.json"
    warm.write_text(text)
    return {"lines": text.splitlines(), "fifo": fifo, "audio": audio, "warm": [warm]}


PATHS = ("/dev/zero", "/dev/stdin", "/proc/self/mem", "/", ".", "", "\x00", "a\x00b.wav", "../../../../etc/passwd",
         "x" * 5000, "../audio", "../fifo.wav", "~/x.wav", "file:///etc/passwd", "\udcff.wav", "../audio/pcm16.wav/")


def _manifest_make(draw, ctx, case_dir):
    lines = list(ctx["lines"])
    kind = draw(st.sampled_from(["line", "line", "line", "bytes", "nesting", "path", "many", "types"]))
    if kind == "bytes":
        out, label = mu.mutate_bytes(draw, "\n".join(lines).encode())
        return _write(case_dir, "manifest.json", out), "bytes_" + label
    i = _pick = draw(st.integers(0, len(lines) - 1))
    if kind == "line":
        text, label = mu.mutate_json_text(draw, lines[i])
        lines[i] = text
        kind = label
    elif kind == "nesting":
        lines[i] = '{"audio_filepath": ' + mu.deep_nesting(draw(st.sampled_from([1000, 10**5]))) + "}"
    elif kind == "path":
        row = json.loads(lines[i])
        row["audio_filepath"] = draw(st.sampled_from(PATHS))
        lines[i] = json.dumps(row)
    elif kind == "types":
        row = json.loads(lines[i])
        row[draw(st.sampled_from(["duration", "text", "id", "audio_filepath"]))] = mu.weird_value(draw)
        lines[i] = json.dumps(row)
    else:
        lines = lines * draw(st.sampled_from([100, 3000]))
    out = "\n".join(lines).encode("utf-8", "surrogateescape")
    assert _pick is not None
    return _write(case_dir, "manifest.json", out), "manifest_" + kind


def _manifest_target(path, out_dir, ctx):
    from ..data import load_dataset

    load_dataset(path, require_text=False)


# ------------------------------------------------------------------ LibriSpeech folder (as an archive)

def _libri_setup(seed_dir, work):
    d = Path(seed_dir) / "librispeech"
    return {"tar": (d / "split.tar").read_bytes(), "tgz": (d / "split.tar.gz").read_bytes(),
            "members": mu.read_tar((d / "split.tar").read_bytes()), "warm": [d / "split.tar"]}


def _libri_make(draw, ctx, case_dir):
    import copy

    members = [(copy.copy(m), d) for m, d in ctx["members"]]
    layer = draw(st.sampled_from(["bytes", "tar", "tar", "tar", "content", "content", "bomb", "header", "folder"]))
    if layer == "bytes":
        src = draw(st.sampled_from(["tar", "tgz"]))
        out, label = mu.mutate_bytes(draw, ctx[src])
        return _write(case_dir, "split." + src, out), f"bytes_{src}_" + label
    if layer == "tar":
        new, label = mu.mutate_tar_structure(draw, members, ("split/19/198/19-198-0000.flac",
                                                              "split/19/198/19-198.trans.txt", "split/19"))
        comp = draw(st.sampled_from(["", "gz"]))
        return _write(case_dir, "split.tar" + (".gz" if comp else ""), mu.write_tar(new, comp)), label
    if layer == "content":
        files = [i for i, (m, d) in enumerate(members) if d is not None]
        i = draw(st.sampled_from(files))
        m, d = members[i]
        if m.name.endswith(".txt"):
            what = draw(st.sampled_from(["bytes", "invalid_utf8", "no_words", "huge_line", "nul"]))
            if what == "bytes":
                d, _ = mu.mutate_bytes(draw, d)
            elif what == "invalid_utf8":
                d = d[:10] + b"\xff\xfe\xc3" + d[10:]
            elif what == "no_words":
                d = d.split(b" ")[0] + b"\n" + d
            elif what == "huge_line":
                d = d + b"19-198-0009 " + b"A" * (4 * MiB) + b"\n"
            else:
                d = d.replace(b" ", b"\x00", 1)
            label = "trans_" + what
        else:
            what = draw(st.sampled_from(["bytes", "streaminfo"]))
            d, label = mu.mutate_bytes(draw, d) if what == "bytes" else mu.flac_streaminfo(draw, d)
            label = "flac_" + label
        members[i] = (m, d)
        return _write(case_dir, "split.tar", mu.write_tar(members)), label
    if layer == "bomb":
        size = draw(st.sampled_from([64 * MiB, 1024 * MiB]))
        return _write(case_dir, "split.tar.gz", mu.tar_bomb("split/19/198/19-198-0000.flac", size)), "tar_bomb"
    if layer == "header":
        size = draw(st.sampled_from([0, 10**9, 2**40, 8**11, 2**63]))
        out = mu.tar_header_size(ctx["tar"], size, draw(st.integers(0, len(members))))
        return _write(case_dir, "split.tar", out), "tar_header_size"
    # a folder laid out directly (not from an archive): special files where audio is expected
    root = case_dir / "folder"
    (root / "19" / "198").mkdir(parents=True)
    for m, d in members:
        if d is not None and m.name.startswith("split/19/198/"):
            (root / "19" / "198" / Path(m.name).name).write_bytes(d)
    kind = draw(st.sampled_from(["fifo", "symlink_dev", "symlink_loop", "dir_named_flac", "trans_fifo", "dangling"]))
    target = root / "19" / "198" / ("19-198.trans.txt" if kind == "trans_fifo" else "19-198-0005.flac")
    target.unlink(missing_ok=True)
    if kind in ("fifo", "trans_fifo"):
        os.mkfifo(target)
    elif kind == "symlink_dev":
        target.symlink_to("/dev/zero")
    elif kind == "symlink_loop":
        target.symlink_to(target)
        (root / "19" / "loop").symlink_to(root)
    elif kind == "dir_named_flac":
        target.mkdir()
    else:
        target.symlink_to(root / "nowhere.flac")
    return root, "folder_" + kind


def _libri_target(path, out_dir, ctx):
    from ..data import extract_tar_safely, load_dataset

    if Path(path).is_dir():
        load_dataset(path, require_text=True)
        return
    extract_tar_safely(path, out_dir)
    load_dataset(out_dir, require_text=True)


# ------------------------------------------------------------------ the C runtime

def _c_setup(seed_dir, work):
    d = Path(seed_dir) / "c"
    return {"blob": (d / "model" / "model.bin").read_bytes(), "input": (d / "input.q8").read_bytes(),
            "inputs": [(d / n).read_bytes() for n in ("input.q8", "input_short.q8")],
            "model_bin": d / "model" / "model.bin", "input_path": d / "input.q8"}


def _blob_make(draw, ctx, case_dir):
    data = ctx["blob"]
    layer = draw(st.sampled_from(["bytes", "bytes", "header", "forge", "forge", "forge"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data)
        return _write(case_dir, "model.bin", out), "bytes_" + label
    if layer == "header":
        b = bytearray(data)
        field = draw(st.sampled_from(["size", "sum", "magic", "reserved"]))
        at = {"size": 8, "sum": 16, "magic": 0, "reserved": 24 + 8 * draw(st.integers(0, 4))}[field]
        b[at:at + 8] = struct.pack("<Q", draw(st.sampled_from(mu.INTERESTING)) % (1 << 64))
        return _write(case_dir, "model.bin", bytes(b)), "header_" + field
    out, label = mu.forge_blob(draw, data)
    return _write(case_dir, "model.bin", out), label


def _input_make(draw, ctx, case_dir):
    data = draw(st.sampled_from(ctx["inputs"]))
    layer = draw(st.sampled_from(["bytes", "header", "header", "header", "values"]))
    if layer == "bytes":
        out, label = mu.mutate_bytes(draw, data)
        return _write(case_dir, "input.q8", out), "bytes_" + label
    F, T, L = struct.unpack_from("<iii", data, 4)
    if layer == "header":
        vals = [F, T, L]
        i = draw(st.integers(0, 2))
        vals[i] = draw(st.sampled_from([0, 1, -1, 2, 3, 7, 15, 63, 64, 65, 2**31 - 1, -2**31, 2**20, 2**24,
                                        T - 1, T + 1, L + 1, 1 << 30]))
        keep = draw(st.sampled_from(["keep", "fit"]))
        body = data[16:]
        if keep == "fit" and 0 < vals[0] * vals[1] <= 1 << 22:   # the body resized to the new header
            body = (body * (vals[0] * vals[1] // max(1, len(body)) + 1))[: vals[0] * vals[1]]
        return _write(case_dir, "input.q8", b"ASQ8" + struct.pack("<iii", *vals) + body), f"header_{'FTL'[i]}_{keep}"
    b = bytearray(data)
    v = draw(st.sampled_from([0x80, 0x7F, 0x00, 0xFF]))
    for k in range(16, len(b)):
        b[k] = v
    return _write(case_dir, "input.q8", bytes(b)), "values_extreme"


READERS = {r.name: r for r in [
    Reader("aqz", "integer_model.load_quantized (+ a run of the loaded program)", _aqz_make, _aqz_target, _aqz_setup,
           (16, 96 * MiB)),
    Reader("nemo", "models.checkpoint.load_model", _nemo_make, _nemo_target, _nemo_setup, (16, 96 * MiB)),
    Reader("hama", "models.hama.load_hama_model", _hama_make, _hama_target, _hama_setup, (16, 96 * MiB)),
    Reader("audio", "audio.load_audio", _audio_make, _audio_target, _audio_setup, (64, 256 * MiB)),
    Reader("manifest", "data.load_dataset (a NeMo manifest)", _manifest_make, _manifest_target, _manifest_setup,
           (16, 96 * MiB)),
    Reader("librispeech", "data.extract_tar_safely + data.load_dataset (a LibriSpeech folder)", _libri_make,
           _libri_target, _libri_setup, (16, 96 * MiB)),
    Reader("c_model_bin", "C runtime: asrq_load of model.bin (+ a run), sanitized", _blob_make, None, _c_setup,
           (16, 64 * MiB), native=True),
    Reader("c_input", "C runtime: the CLI's ASQ8 input reader (+ a run), sanitized", _input_make, None, _c_setup,
           (16, 64 * MiB), native=True),
]}
