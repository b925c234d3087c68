"""The .aqz file: an integer program, its float model's config, its front end's weights and the
quantization settings, in one versioned container (JSON + .npy members, no pickle).

Version 2 holds the program (``program.ops``); version 1 (hand-walked ConvASR blocks) is migrated
to a program on load. ``save(path, ...)`` / ``load(path)`` work on the parts;
``integer_model.save_quantized`` / ``load_quantized`` wrap them in an ``IntegerModel``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..models.checkpoint import CheckpointError, atomic_write_bytes
from .builder import IntConv
from .emit_convasr import IntBlock, emit_convasr
from .ops import FORMAT_VERSION, Program, ProgramError
from .validate import program_from_file

# The file format's names (FORMAT, HEADER) predate the package's rename from asrquant to intasr;
# they stay, so that every .aqz written before reads as it did.
FORMAT = "asrquant-integer-model"
VERSION = FORMAT_VERSION      # 2: the integer program; 1: hand-walked blocks (migrated on load)


def save(path, config: dict, program: Program, info: dict, frontend_state: dict) -> Path:
    """One versioned file (a zip of .npy integer tensors + JSON metadata, no pickle), written atomically."""
    desc, tensors = program.to_state()
    tensors = {**tensors, **{"frontend." + k: v for k, v in frontend_state.items()}}
    meta = {"format": FORMAT, "version": VERSION, "config": config, "program": desc,
            "info": info, "frontend": sorted(frontend_state)}
    return write_payload({"format": FORMAT, "version": VERSION, "meta": json.dumps(meta), "tensors": tensors}, path)


# The file: an uncompressed zip holding HEADER (JSON: format, version, meta, and which member holds
# which tensor) and one .npy member per tensor. Reading checks every size before it allocates: the
# members must be stored (not compressed) and fit in the file, and each .npy header's shape x dtype
# must equal its member's size, so a hostile header claiming 10 GB is refused having read 100 bytes.
# Files written before this container (a torch zip, read by torch's weights_only unpickler, which
# builds only tensors and containers) still load, after the same zip size checks.
HEADER = "asrquant.json"
_TENSOR_KINDS = "biuf"          # bool, signed / unsigned integers, floats (the front end's buffers)
_TORCH_DTYPES = tuple(__import__("numpy").dtype(t) for t in ("bool", "int8", "uint8", "int16", "int32", "int64",
                                                             "float16", "float32", "float64"))


def write_payload(payload: dict, path) -> Path:
    """{format, version, meta (a JSON string), tensors {name: tensor}} -> the .aqz container."""
    import zipfile

    import numpy as np

    arrays, members = {}, {}
    for i, (name, t) in enumerate(payload["tensors"].items()):
        a = t.detach().cpu().contiguous().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
        if a.dtype.kind not in _TENSOR_KINDS:
            raise ValueError(f"{path}: tensor {name!r} has dtype {a.dtype}, not storable")
        members[name] = f"tensors/{i:06d}.npy"
        arrays[members[name]] = a
    header = {"format": payload["format"], "version": payload["version"], "meta": payload["meta"],
              "tensors": members}

    def write(f):
        with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
            z.writestr(HEADER, json.dumps(header))
            for member, a in arrays.items():
                with z.open(member, "w", force_zip64=a.nbytes > 2**31) as out:
                    np.lib.format.write_array(out, a, allow_pickle=False)

    return atomic_write_bytes(path, write)


def _checked_zip(path: Path):
    """The file as a ZipFile whose members are all stored uncompressed and together fit in the file."""
    import zipfile

    size = path.stat().st_size
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path}: not a readable quantized model (truncated or not a zip): {e}") from e
    total = 0
    for info in z.infolist():
        if info.compress_type != zipfile.ZIP_STORED or info.file_size != info.compress_size:
            z.close()
            raise CheckpointError(f"{path}: member {info.filename!r} is compressed; .aqz members are stored "
                                  f"uncompressed (refused: its size cannot be checked before reading)")
        total += info.file_size
        if total > size:
            z.close()
            raise CheckpointError(f"{path}: members claim {total} bytes, more than the file's {size} "
                                  f"(truncated or hostile)")
    return z


def _read_npy(z, path: Path, name: str, member: str):
    """One tensor from a .npy member: header read and checked against the member size first."""
    import numpy as np

    try:
        info = z.getinfo(member)
    except KeyError:
        raise CheckpointError(f"{path}: tensor {name!r}: member {member!r} missing from the file") from None
    with z.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(f)
        except (ValueError, OSError, EOFError, SyntaxError, TypeError, RecursionError, MemoryError) as e:
            raise CheckpointError(f"{path}: tensor {name!r}: bad .npy header: {first_line(e)}") from e
        if any(int(n) < 0 for n in shape):
            raise CheckpointError(f"{path}: tensor {name!r}: negative dimension in shape {tuple(shape)}")
        if dtype.hasobject or dtype.kind not in _TENSOR_KINDS or dtype.newbyteorder("=") not in _TORCH_DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r}: dtype {dtype} refused (integer, bool or float only)")
        count = 1
        for n in shape:
            count *= int(n)
        nbytes = count * dtype.itemsize  # Python ints: no overflow, whatever the header claims
        left = info.file_size - f.tell()
        if nbytes != left:
            raise CheckpointError(f"{path}: tensor {name!r}: header claims shape {tuple(shape)} {dtype} "
                                  f"({nbytes} bytes) but the file holds {left} (truncated or hostile)")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise CheckpointError(f"{path}: tensor {name!r}: truncated ({len(data)} of {nbytes} bytes)")
    a = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return torch.from_numpy(np.ascontiguousarray(a, dtype=dtype.newbyteorder("=")).copy())


def read_payload(path) -> dict:
    """The .aqz file as {format, version, meta (JSON string), tensors {name: tensor}}, sizes checked
    before anything large is read; a file of the older torch container goes through torch's
    weights_only loader. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such quantized model file")
    if not is_quantized_file(path):
        import tarfile

        if tarfile.is_tarfile(path):
            raise CheckpointError(f"{path}: is a float .nemo model, not a quantized .aqz; make one with "
                                  f"`intasr quantize --model {path} --out MODEL.aqz`")
        raise CheckpointError(f"{path}: not a quantized model file (an .aqz is a zip; this file is not)")
    import zipfile
    import zlib

    with _checked_zip(path) as z:
        names = set(z.namelist())
        if len(names) != len(z.infolist()):
            raise CheckpointError(f"{path}: a member name appears twice (refused: which one is meant?)")
        if HEADER not in names:
            legacy = any(n.endswith("/data.pkl") or n == "data.pkl" for n in names)
        else:
            # zipfile checks each member's CRC-32 as it reads: a flipped bit anywhere is refused here,
            # naming the member, as are the other errors a damaged archive raises
            damaged = (zipfile.BadZipFile, zlib.error, OSError, EOFError, NotImplementedError, RuntimeError)
            try:
                text = z.read(HEADER)
            except damaged as e:
                raise CheckpointError(f"{path}: member {HEADER!r} is damaged (truncated or corrupt?): "
                                      f"{first_line(e)}") from e
            try:
                header = json.loads(text.decode("utf-8"))
            except (ValueError, UnicodeDecodeError, RecursionError) as e:
                raise CheckpointError(f"{path}: {HEADER} is not valid JSON: {first_line(e)}") from e
            if not isinstance(header, dict) or not isinstance(header.get("tensors"), dict):
                raise CheckpointError(f"{path}: {HEADER} has no tensor table")
            tensors = {}
            for name, member in header["tensors"].items():
                try:
                    tensors[str(name)] = _read_npy(z, path, str(name), str(member))
                except damaged as e:
                    raise CheckpointError(f"{path}: tensor {str(name)!r}: member {str(member)!r} is damaged "
                                          f"(truncated or corrupt?): {first_line(e)}") from e
            return {"format": header.get("format"), "version": header.get("version"),
                    "meta": header.get("meta"), "tensors": tensors}
    if not legacy:
        raise CheckpointError(f"{path}: not an intasr integer model file (a zip without {HEADER})")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable quantized model (weights_only load failed): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:300]}" if text else type(e).__name__


def is_quantized_file(path) -> bool:
    """A zip (starts with PK\\x03\\x04); a .nemo is a tar. zipfile.is_zipfile would be fooled: it
    looks near the end, where a .nemo tar holds its zipped model_weights.ckpt."""
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


_V1_CONV_FIELDS = ("stride", "padding", "dilation", "groups", "out_bits", "out_signed", "in_scale", "out_scale")


def _v1_conv(prefix: str, meta: dict, tensors: dict) -> IntConv:
    kw = {f: meta[f] for f in _V1_CONV_FIELDS}
    return IntConv(weight=tensors[prefix + ".weight"], bias=tensors.get(prefix + ".bias"), M=tensors[prefix + ".M"],
                   shift=tensors[prefix + ".shift"], acc_dtype=getattr(torch, meta["acc_dtype"]),
                   w_scale=tensors.get(prefix + ".w_scale"), **kw)


def migrate_v1(meta: dict, tensors: dict) -> Program:
    """A version-1 file (hand-walked blocks) -> the same integers as a program."""
    blocks = [IntBlock(convs=[_v1_conv(f"blocks.{b}.convs.{i}", m, tensors) for i, m in enumerate(blk["convs"])],
                       residual=[_v1_conv(f"blocks.{b}.residual.{i}", m, tensors) for i, m in enumerate(blk["residual"])],
                       dense=blk["dense"])
              for b, blk in enumerate(meta["blocks"])]
    return emit_convasr(blocks, _v1_conv("decoder", meta["decoder"], tensors), meta["input_scale"], meta["input_bits"])


def load(path) -> tuple[dict, Program, dict, dict]:
    """(float model config, program, info, front end state) of an .aqz file (version 2, or version 1
    migrated to a program); every error names the file."""
    path = Path(path)
    payload = read_payload(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an intasr integer model file")
    version = payload.get("version")
    if version not in (1, VERSION):
        raise CheckpointError(f"{path}: integer model format version {version!r} is not supported (this intasr "
                              f"reads versions 1 and {VERSION}); regenerate it with `intasr quantize`")
    try:
        meta, tensors = json.loads(payload["meta"]), payload["tensors"]
        if not isinstance(meta, dict) or not isinstance(tensors, dict):
            raise TypeError("meta and tensors must be a mapping")
        program = migrate_v1(meta, tensors) if version == 1 else program_from_file(meta["program"], tensors)
        frontend = {k: tensors["frontend." + k] for k in meta.get("frontend", [])}
        return meta["config"], program, meta.get("info"), frontend
    except ProgramError as e:   # names the op and the tensor
        raise CheckpointError(f"{path}: refused before running: {first_line(e)}; regenerate it with "
                              f"`intasr quantize`") from e
    except (KeyError, TypeError, ValueError, AttributeError, IndexError, RecursionError, RuntimeError,
            OverflowError) as e:
        raise CheckpointError(f"{path}: malformed integer model (version {version}): {first_line(e)}; "
                              f"regenerate it with `intasr quantize`") from e
