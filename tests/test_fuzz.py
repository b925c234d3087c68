"""Issue 29: every reader of files from strangers under fuzz (intasr.fuzz), and each input the
fuzzers found that broke a reader, kept as a regression test (made here from the same seed files).

The campaign test runs the benchmark's harness with a small N per reader; `python -m intasr.fuzz
run --per-reader 12500 --out results/fuzz.json` is the large run (results/README.md)."""
import io
import json
import os
import shutil
import struct
import subprocess
import tarfile
import time
import zipfile

import numpy as np
import pytest
import torch

from intasr.audio import AudioError, load_audio
from intasr.integer_model import load_quantized
from intasr.data import DataError, extract_tar_safely, load_dataset, read_librispeech
from intasr.fuzz import mutate as mu
from intasr.models.checkpoint import CheckpointError, load_model
from intasr.program.aqz import HEADER

HAVE_CC = shutil.which("cc") is not None and shutil.which("make") is not None


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    from intasr.fuzz.seeds import build_seeds

    return build_seeds(tmp_path_factory.mktemp("fuzz") / "seeds")


def _one_line(e, *names):
    msg = str(e)
    assert "\n" not in msg.strip(), msg
    for n in names:
        assert str(n) in msg, (n, msg)
    return msg


# --------------------------------------------------------------------------- the campaign, small N

def test_a_small_campaign_finds_nothing(seeds, tmp_path):
    from intasr.fuzz import FAILURE_KINDS, run_campaign, table
    from intasr.fuzz.readers import READERS

    readers = [r for r in READERS if HAVE_CC or not READERS[r].native]
    work = seeds.parent
    res = run_campaign(20, readers, seed=3, work=work, out=tmp_path / "fuzz.json")
    assert json.loads((tmp_path / "fuzz.json").read_text())["totals"] == res["totals"]
    for row in table(res):
        assert row["inputs"] == 20, row
        assert all(row[k] == 0 for k in FAILURE_KINDS), row
        assert row["refused"] + row["accepted"] == 20


# --------------------------------------------------------------------------- .aqz

def _members(path):
    return [(n, d, None) for n, d in mu.read_zip(path.read_bytes())]


def test_bit_flipped_aqz_is_refused_in_one_line_naming_the_member(seeds, tmp_path):
    """fuzz: bytes_bitflip (the issue's probe: zipfile.BadZipFile 'Bad CRC-32' traceback)"""
    good = seeds / "aqz" / "tiny_convasr_w8a8.aqz"
    data = bytearray(good.read_bytes())
    data[30 + len(HEADER) + 17] ^= 0x10   # inside the header member's data, after its 30-byte local header and name
    bad = tmp_path / "flipped.aqz"
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_quantized(bad)
    _one_line(e.value, bad, HEADER)


def test_swapped_tensors_are_refused_before_running_naming_the_tensor(seeds, tmp_path):
    """fuzz: member_swap (the issue's probe: messages named neither the file nor the tensor)"""
    good = seeds / "aqz" / "tiny_convasr_w8a8.aqz"
    members = _members(good)
    header = json.loads(members[0][1])
    weights = [m for k, m in header["tensors"].items() if k.endswith(".weight")]
    names = [n for n, _, _ in members]
    i, j = names.index(weights[0]), names.index(weights[1])
    members[i], members[j] = (members[i][0], members[j][1], None), (members[j][0], members[i][1], None)
    bad = tmp_path / "swapped.aqz"
    bad.write_bytes(mu.write_zip(members))
    with pytest.raises(CheckpointError) as e:
        load_quantized(bad)
    msg = _one_line(e.value, bad, "refused before running", ".weight")
    assert "shape" in msg


def _program_state(seeds, name="tiny_convasr_w8a8"):
    from intasr.program.aqz import read_payload

    p = read_payload(seeds / "aqz" / f"{name}.aqz")
    return json.loads(p["meta"])["program"], p["tensors"]


@pytest.mark.parametrize("edit, expect", [
    (("attrs", "stride", 0), "'stride' = 0 outside"),
    (("attrs", "padding", 10**9), "'padding' = 1000000000 outside"),
    (("attrs", "groups", True), "'groups' must be an integer"),
    (("attrs", "acc_dtype", "float32"), "acc_dtype"),
    (("weight_dtype", torch.int16), "dtype int16, expected int8"),
    (("weight_shape", None), "reads"),
    (("shift", 70), "shift"),
    (("M", 2**62), "leaves int64"),
    (("bias", 2**63 - 1), "accumulator bound"),
    (("value_dtype", "float32"), "dtype 'float32'"),
])
def test_program_checks_on_load_name_the_op_and_the_tensor(seeds, edit, expect):
    """fuzz: header_program / npy_* / member_* inputs that loaded and then failed to run
    (ValueError: operands could not be broadcast; IndexError; AssertionError in the reference)"""
    from intasr.program.ops import ProgramError
    from intasr.program.validate import program_from_file

    desc, tensors = _program_state(seeds)
    conv = next(i for i, d in enumerate(desc["ops"]) if d["kind"] == "conv1d" and d["attrs"]["groups"] == 1)
    d = desc["ops"][conv]
    req = next(o for o in desc["ops"][conv:] if o["kind"] in ("requantize", "rescale"))
    what, *args = edit
    if what == "attrs":
        d["attrs"][args[0]] = args[1]
    elif what == "weight_dtype":
        tensors[d["params"]["weight"]] = tensors[d["params"]["weight"]].to(args[0])
    elif what == "weight_shape":
        w = tensors[d["params"]["weight"]]
        tensors[d["params"]["weight"]] = torch.cat([w, w], dim=1)
    elif what in ("shift", "M"):
        t = tensors[req["params"][what]].clone()
        t[0] = args[0]
        tensors[req["params"][what]] = t
    elif what == "bias":
        key = d["params"]["bias"]
        t = tensors[key].to(torch.int64)
        t[0] = args[0]
        tensors[key] = t
    elif what == "value_dtype":
        desc["values"][d["outputs"][0]]["dtype"] = args[0]
    with pytest.raises(ProgramError, match=expect) as e:
        program_from_file(desc, tensors)
    assert "\n" not in str(e.value)


def test_the_seed_programs_pass_the_checks_and_run(seeds):
    from intasr.program.numpy_ref import NumpyReference

    for name in ("tiny_convasr_w8a8", "tiny_conformer_w8a8"):
        q = load_quantized(seeds / "aqz" / f"{name}.aqz")
        x = np.zeros((1, 64, 40), np.int8)
        NumpyReference().run(q.program, x, np.array([40]))


# --------------------------------------------------------------------------- .nemo

def _nemo_with_config(seeds, tmp_path, edit=None, text=None, name="m.nemo"):
    import yaml

    members = mu.read_tar((seeds / "nemo" / "tiny_convasr.nemo").read_bytes())
    i = next(k for k, (m, _) in enumerate(members) if m.name.endswith("model_config.yaml"))
    cfg = yaml.safe_load(members[i][1])
    if edit:
        edit(cfg)
    members[i] = (members[i][0], (text + "\n" if text else "").encode() + yaml.safe_dump(cfg).encode())
    p = tmp_path / name
    p.write_bytes(mu.write_tar(members))
    return p


@pytest.mark.parametrize("edit, expect", [
    (lambda c: c["encoder"]["jasper"][1].update(filters=10**5), "does not match|missing|is \\("),   # fuzz: config_huge_model
    (lambda c: c["encoder"]["jasper"][1].update(repeat=10**7), "repeat"),                            # meta build: minutes
    (lambda c: c["preprocessor"].update(n_fft=2**53), "n_fft"),                                      # 32 PiB NumPy array
    (lambda c: c["preprocessor"].update(window_size="A" * 10000), "must be a number"),               # a 160 MB string
])
def test_a_config_larger_than_its_weights_is_refused_before_building(seeds, tmp_path, edit, expect):
    import resource

    p = _nemo_with_config(seeds, tmp_path, edit)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match=expect) as e:
        load_model(p)
    assert time.perf_counter() - t0 < 5
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 64 * 1024   # KiB: nothing large built
    _one_line(e.value, p)


def test_deeply_nested_yaml_is_refused_in_linear_time(seeds, tmp_path):
    """fuzz: config_nesting (10^5 brackets: PyYAML's scanner ran past 5 s)"""
    p = _nemo_with_config(seeds, tmp_path, text="a: " + "[" * 10**5 + "]" * 10**5)
    t0 = time.perf_counter()
    with pytest.raises(CheckpointError, match="nests 100000 brackets"):
        load_model(p)
    assert time.perf_counter() - t0 < 2


def test_archive_errors_are_one_line(tmp_path):
    """fuzz: bytes_truncate (tarfile's 'could not be opened successfully' spans four lines)"""
    p = tmp_path / "empty.nemo"
    p.write_bytes(b"\0" * 10)
    with pytest.raises(CheckpointError) as e:
        load_model(p)
    _one_line(e.value, p)


# --------------------------------------------------------------------------- .hama

def _real_hama(seeds):
    """The hama package's own asset among the seeds (skip where the package is not installed)."""
    hamas = sorted((seeds / "hama").glob("*.hama"))
    if hamas[0].name != "asr_waveform.hama":
        pytest.skip("the hama package is not installed")
    return hamas[0]


def test_swapped_hama_records_are_refused_naming_the_tensor(seeds, tmp_path):
    """fuzz: swap_records (torch's several-line size-mismatch RuntimeError)"""
    from intasr.fuzz.readers import _hama_setup
    from intasr.models.hama import load_hama_model

    _real_hama(seeds)
    ctx = _hama_setup(seeds, tmp_path)
    ones = [e for e in ctx["entries"] if e["n_dims"] == 1]

    def dim(e):
        return struct.unpack_from("<I", ctx["data"], e["dims"])[0]

    e1 = ones[0]
    e2 = next(e for e in ones if dim(e) != dim(e1))
    b = bytearray(ctx["data"])
    r1, r2 = bytes(b[e1["dtype"]:e1["nbytes"] + 8]), bytes(b[e2["dtype"]:e2["nbytes"] + 8])
    b[e1["dtype"]:e1["nbytes"] + 8], b[e2["dtype"]:e2["nbytes"] + 8] = r2, r1
    p = tmp_path / "swapped.hama"
    p.write_bytes(bytes(b))
    with pytest.raises(CheckpointError) as e:
        load_hama_model(p)
    _one_line(e.value, p)


def test_a_hama_matmul_name_without_its_number_is_refused_naming_it(seeds, tmp_path):
    """fuzz: bytes_bytes (a byte of 'onnx::MatMul_870' became 0x7f: int() raised a bare ValueError)"""
    from intasr.models.hama import load_hama_model

    real = _real_hama(seeds)
    b = bytearray(real.read_bytes())
    at = b.index(b"onnx::MatMul_") + len(b"onnx::MatMul_") + 1
    b[at] = 0x7F
    p = tmp_path / "renamed.hama"
    p.write_bytes(bytes(b))
    with pytest.raises(CheckpointError, match="does not end in a number") as e:
        load_hama_model(p)
    _one_line(e.value, p)


# --------------------------------------------------------------------------- audio

@pytest.mark.parametrize("rate, expect", [(767999, "needs too long a filter"), (1000003, "outside"), (1, "outside"),
                                          (2**32 - 1, "cannot decode"), (44101, None)])
def test_absurd_sample_rates_are_refused_before_decoding(tmp_path, rate, expect):
    """fuzz: wav_rate hung (a 20M-tap filter for 1000003 Hz), wav_built allocated 320 GiB"""
    p = tmp_path / "r.wav"
    p.write_bytes(mu.wav_bytes(np.zeros(4410, np.int16).tobytes(), rate, 1, 16))
    t0 = time.perf_counter()
    if expect is None:
        assert load_audio(p).dtype == np.float32
    else:
        with pytest.raises(AudioError, match=expect) as e:
            load_audio(p)
        _one_line(e.value, p)
    assert time.perf_counter() - t0 < 5


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path):
    import soundfile as sf

    p = tmp_path / "silence.flac"
    sf.write(p, np.zeros(20 * 60 * 16000, np.float32), 16000, subtype="PCM_16")   # 20 minutes, ~55 kB
    with pytest.raises(AudioError, match="samples per byte") as e:
        load_audio(p)
    _one_line(e.value, p)


# --------------------------------------------------------------------------- manifest and LibriSpeech

def test_manifest_lines_nested_too_deep_or_naming_impossible_paths(seeds, tmp_path):
    """fuzz: manifest_nesting (RecursionError), manifest_path (OSError: File name too long)"""
    p = tmp_path / "m.json"
    p.write_text('{"audio_filepath": ' + "[" * 10**5 + "]" * 10**5 + "}\n")
    with pytest.raises(DataError, match="nested too deep") as e:
        load_dataset(p, require_text=False)
    _one_line(e.value, p)
    p.write_text(json.dumps({"audio_filepath": "x" * 5000}) + "\n")
    with pytest.raises(DataError, match="not found") as e:
        load_dataset(p, require_text=False)
    _one_line(e.value, p)


def _libri_members(seeds):
    return mu.read_tar((seeds / "librispeech" / "split.tar").read_bytes())


def test_a_tar_bomb_is_refused_before_anything_is_written(tmp_path):
    """fuzz: tar_bomb (a 1 GiB member in a 1 MB gzip: extraction ran past 5 s)"""
    p = tmp_path / "bomb.tar.gz"
    p.write_bytes(mu.tar_bomb("split/19/198/19-198-0000.flac", 64 << 20))
    out = tmp_path / "out"
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="more than a") as e:
        extract_tar_safely(p, out)
    assert time.perf_counter() - t0 < 2
    _one_line(e.value, p)
    assert not any(out.iterdir())


@pytest.mark.parametrize("kind", ["utf8", "hardlink", "truncated_gz", "deep"])
def test_damaged_librispeech_archives_are_one_line_data_errors(seeds, tmp_path, kind):
    """fuzz: trans_invalid_utf8 (UnicodeDecodeError), tar_hardlink (KeyError), bytes_tgz_truncate
    (EOFError), tar_header_size (ReadError), tar_deep (RecursionError in rglob)"""
    members = _libri_members(seeds)
    if kind == "utf8":
        i = next(k for k, (m, _) in enumerate(members) if m.name.endswith(".txt"))
        members[i] = (members[i][0], b"19-198-0000 \xff\xfe HELLO\n")
        data = mu.write_tar(members)
    elif kind == "hardlink":
        members.append((mu.tar_member("split/19/198/19-198-0009.flac", type_=tarfile.LNKTYPE,
                                      linkname="./model_config.yaml"), None))
        data = mu.write_tar(members)
    elif kind == "truncated_gz":
        data = (seeds / "librispeech" / "split.tar.gz").read_bytes()[:5000]
    else:
        members.append((mu.tar_member("d/" * 3000 + "x.flac", b"x"), b"x"))
        data = mu.write_tar(members)
    p = tmp_path / "split.tar"
    p.write_bytes(data)
    out = tmp_path / "out"
    with pytest.raises(DataError) as e:
        extract_tar_safely(p, out)
        load_dataset(out, require_text=True)
    _one_line(e.value)
    assert str(p) in str(e.value) or str(out) in str(e.value)


def test_a_fifo_named_flac_is_refused_not_waited_on(seeds, tmp_path):
    """fuzz: folder_fifo (soundfile's header read blocked on the FIFO forever)"""
    d = tmp_path / "split" / "19" / "198"
    d.mkdir(parents=True)
    (d / "19-198.trans.txt").write_text("19-198-0000 HELLO\n")
    os.mkfifo(d / "19-198-0000.flac")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match="not a regular file"):
        read_librispeech(tmp_path / "split")
    assert time.perf_counter() - t0 < 2


# --------------------------------------------------------------------------- the C runtime

@pytest.fixture(scope="module")
def cli(seeds, tmp_path_factory):
    if not HAVE_CC:
        pytest.skip("needs a C compiler and make")
    d = tmp_path_factory.mktemp("cli") / "model"
    shutil.copytree(seeds / "c" / "model", d)
    r = subprocess.run(["make", "-s", "-C", str(d), "asrq", "OPENMP="], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


def _run(cli, model, inp):
    return subprocess.run([str(cli / "asrq"), str(model), str(inp)], capture_output=True, text=True, timeout=30)


def test_cli_input_claiming_more_frames_than_it_holds_is_refused(seeds, cli, tmp_path):
    """fuzz: header_T_fit (a 16-byte header claiming 2^24 frames: the CLI allocated 1 GiB first)"""
    good = (seeds / "c" / "input.q8").read_bytes()
    F = struct.unpack_from("<i", good, 4)[0]
    p = tmp_path / "claims.q8"
    p.write_bytes(b"ASQ8" + struct.pack("<iii", F, 1 << 24, 1) + good[16:])
    r = _run(cli, cli / "model.bin", p)
    assert r.returncode == 2 and "truncated" in r.stderr and str(p) in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert _run(cli, cli / "model.bin", seeds / "c" / "input.q8").returncode == 0


def test_a_blob_forged_past_the_checksum_is_refused(seeds, cli, tmp_path):
    """fuzz: forge_checksum (+d, -2d, +d at three bytes kept the position-weighted checksum, and the
    changed constants reached the kernels)"""
    from intasr.program.c_lower import checksum

    blob = (cli / "model.bin").read_bytes()
    b = bytearray(blob)
    i = 64 + 1000
    d = 1 if b[i] < 255 and b[i + 2] < 255 and b[i + 1] >= 2 else -1
    b[i], b[i + 1], b[i + 2] = b[i] + d, b[i + 1] - 2 * d, b[i + 2] + d
    assert checksum(bytes(b[64:])) == checksum(blob[64:])   # the old check would have passed it
    p = tmp_path / "forged.bin"
    p.write_bytes(bytes(b))
    r = _run(cli, p, seeds / "c" / "input.q8")
    assert r.returncode == 2 and "is not the weights blob of this model" in r.stderr, r.stderr
    assert str(p) in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_the_sanitized_runtime_runs_the_seeds_without_a_report(seeds, tmp_path):
    if not HAVE_CC:
        pytest.skip("needs a C compiler and make")
    from intasr.fuzz.native import Driver, build_driver

    try:
        exe = build_driver(seeds / "c" / "model", seeds.parent / "c_driver")
    except RuntimeError as e:
        pytest.skip(f"no sanitizer runtime here: {str(e).splitlines()[0]}")
    drv = Driver(exe)
    try:
        for inp in ("input.q8", "input_short.q8"):
            rc, peak, seconds, leaks = drv.call(seeds / "c" / "model" / "model.bin", seeds / "c" / inp,
                                                tmp_path / "err.txt")
            assert (rc, leaks) == (0, 0), (tmp_path / "err.txt").read_text()
            assert 0 < peak < 16 << 20
    finally:
        drv.stop()
    assert io and zipfile


def test_a_hama_tensor_of_rank_over_64_is_refused(tmp_path):
    """fuzz: field_ndim (rank 127 consistent with its size: NumPy's 'maximum supported dimension is 64')"""
    from intasr.models.hama import parse_hama, write_hama

    good = write_hama(tmp_path / "t.hama", {"w": np.ones((2, 3), np.float32)}).read_bytes()
    pos = 12 + 2 + 1            # the table: name length, name "w", then dtype and rank
    name_end = pos + 1
    rank = 127
    dims = struct.pack(f"<{rank}I", 2, 3, *([1] * (rank - 2)))
    table = good[12:name_end] + bytes([rank]) + dims + good[name_end + 1 + 8:name_end + 1 + 8 + 16]
    header = good[:12] + table
    header += b"\0" * (-len(header) % 16)
    data = header + np.ones((2, 3), np.float32).tobytes()
    with pytest.raises(CheckpointError, match="rank 127") as e:
        parse_hama(data, "bad.hama")
    _one_line(e.value, "bad.hama")
