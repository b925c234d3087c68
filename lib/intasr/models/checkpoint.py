"""`.nemo` checkpoint read/write without importing NeMo.

A `.nemo` file is a tar (plain or gzip) holding `model_config.yaml` and `model_weights.ckpt`
(a torch state dict). We never extract to disk: members are read in memory, only regular
files are accepted, and any member whose path is absolute or climbs out with `..` is refused,
so a hostile archive cannot write anywhere. Weights load with `weights_only=True`: a pickle
that carries code is refused, not run.
"""

from __future__ import annotations

import copy
import io
import os
import pickle
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import torch
import yaml

CONFIG_NAME = "model_config.yaml"
WEIGHTS_NAME = "model_weights.ckpt"
MAX_EXPANSION = 20  # a compressed .nemo may hold at most this many times its size (weights compress ~1.1x)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file and the problem."""


def _member_name(path: Path, member: tarfile.TarInfo) -> str:
    p = PurePosixPath(member.name)
    if p.is_absolute() or ".." in p.parts:
        raise CheckpointError(f"{path}: refusing tar member {member.name!r}: its path escapes the archive folder")
    if member.issym() or member.islnk():
        raise CheckpointError(f"{path}: refusing tar member {member.name!r}: links are not allowed in a .nemo")
    if member.isdev() or member.isfifo():
        raise CheckpointError(f"{path}: refusing tar member {member.name!r}: device or fifo")
    parts = [q for q in p.parts if q not in (".", "")]
    return "/".join(parts)


def read_nemo(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], dict[str, bytes]]:
    """Return (config, state_dict, other_files) of a `.nemo` file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    with open(path, "rb") as f:
        if f.read(4) == b"PK\x03\x04":  # a zip: the quantized .aqz container, not a .nemo tar
            raise CheckpointError(f"{path}: is a quantized integer model (.aqz), not a float .nemo; this command "
                                  f"needs the float model it was quantized from")
    files: dict[str, bytes] = {}
    # Members are read into memory, so their sizes are checked first: a plain tar's members fit in
    # the file; a compressed one (.nemo may be gzip'd) may expand at most MAX_EXPANSION times, so a
    # small hostile archive cannot claim gigabytes.
    size = path.stat().st_size
    with open(path, "rb") as f:
        compressed = f.read(6).startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
    budget, total = size * (MAX_EXPANSION if compressed else 1), 0
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = _member_name(path, member)
                if member.isdir():
                    continue
                if not member.isfile():
                    raise CheckpointError(f"{path}: refusing tar member {member.name!r}: not a regular file")
                total += member.size
                if total > budget:
                    raise CheckpointError(f"{path}: refusing tar member {member.name!r}: members claim {total} "
                                          f"bytes, more than a {size}-byte {'compressed ' if compressed else ''}"
                                          f"archive can hold (truncated or hostile)")
                f = tar.extractfile(member)
                files[name] = f.read() if f is not None else b""
    except CheckpointError:
        raise
    except MemoryError:
        raise
    except Exception as e:  # tarfile, gzip and zlib each raise their own types on a damaged file
        raise CheckpointError(f"{path}: not a readable .nemo archive (truncated or corrupt?): {_one_line(e)}") from e

    def find(basename):
        hits = [n for n in files if PurePosixPath(n).name == basename]
        if not hits:
            raise CheckpointError(f"{path}: archive has no {basename} (members: {sorted(files)})")
        return hits[0]

    config_name, weights_name = find(CONFIG_NAME), find(WEIGHTS_NAME)
    try:
        text = files.pop(config_name).decode("utf-8")
        depth = _flow_depth(text)
        if depth > MAX_YAML_DEPTH:   # PyYAML's scanner takes quadratic time in the nesting (10^5: minutes)
            raise CheckpointError(f"{path}: {CONFIG_NAME} nests {depth} brackets deep (more than "
                                  f"{MAX_YAML_DEPTH}: not a model config)")
        config = yaml.safe_load(text)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: {CONFIG_NAME} is not valid YAML: {_one_line(e)}") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: {CONFIG_NAME} is not a mapping")
    state_dict = load_weights(files.pop(weights_name), f"{path}:{WEIGHTS_NAME}")
    return config, state_dict, files


MAX_YAML_DEPTH = 64


def _flow_depth(text: str) -> int:
    """The deepest nesting of YAML flow brackets ([ and {, quoted strings skipped), in linear time."""
    import re

    bare = re.sub(r'"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\n]|\'\')*\'', "", text)
    depth = best = 0
    for ch in re.findall(r"[\[\]{}]", bare):
        depth = depth + 1 if ch in "[{" else max(0, depth - 1)
        best = max(best, depth)
    return best


def _one_line(e: BaseException) -> str:
    """an exception's message on one line (tarfile, torch and YAML messages span several)"""
    text = " ".join(str(e).split())
    return (text[:400] + "...") if len(text) > 400 else (text or type(e).__name__)


def load_weights(data: bytes, where: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{where}: refused: the pickle holds objects other than tensors "
                              f"(weights_only=True): {str(e).splitlines()[0] if str(e) else ''}") from e
    except MemoryError:
        raise
    except Exception as e:
        raise CheckpointError(f"{where}: cannot read weights (truncated or corrupt?): {_one_line(e)}") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{where}: expected a state dict of tensors")
    return obj


def atomic_write_bytes(path: str | os.PathLike, write) -> Path:
    """Call write(fileobj) on a temporary file beside `path`, then rename it into place.

    An interrupted or failing write leaves no half-written file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_nemo(path: str | os.PathLike, config: dict, state_dict: dict[str, torch.Tensor],
               other_files: dict[str, bytes] | None = None) -> Path:
    """Write a `.nemo` tar (uncompressed, like NeMo's `save_to`) atomically.

    The bytes depend on the contents only (same model, same file: issue 12): members in a fixed
    order (config, weights, then other files sorted by name), each with mtime 0, owner 0/0 and
    no user names, mode 0644."""
    members = {CONFIG_NAME: yaml.safe_dump(config, sort_keys=False).encode("utf-8")}
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, buf)
    members[WEIGHTS_NAME] = buf.getvalue()
    members.update(sorted((other_files or {}).items()))

    def write(f):
        with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for name, data in members.items():
                info = tarfile.TarInfo(f"./{name}")
                info.size = len(data)
                info.mode = 0o644
                info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
                tar.addfile(info, io.BytesIO(data))

    return atomic_write_bytes(path, write)


def build_model(config: dict, tokenizer=None):
    """The float model a NeMo config describes, chosen by its encoder `_target_`:
    ConvASREncoder (or no target: the configs this library wrote before Conformer) -> `ConvASR`,
    ConformerEncoder -> `ConformerCTC` (with `tokenizer` for BPE models)."""
    from .conformer import ConformerCTC
    from .convasr import ConvASR

    encoder = config.get("encoder") if isinstance(config, dict) else None
    if not isinstance(encoder, dict):
        raise ValueError("config has no encoder section")
    target = str(encoder.get("_target_") or "ConvASREncoder").rsplit(".", 1)[-1]
    if target in ("ConformerEncoder", "ConformerEncoderAdapter"):
        return ConformerCTC(config, tokenizer=tokenizer)
    if target in ("ConvASREncoder", "ConvASREncoderAdapter"):
        if tokenizer is not None:
            raise ValueError("a tokenizer was given for a ConvASR (character) model")
        return ConvASR(config)
    raise ValueError(f"encoder {encoder.get('_target_')!r} not supported (ConvASREncoder, ConformerEncoder)")


_CONFIG_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError, ZeroDivisionError, OverflowError,
                  RuntimeError, RecursionError, NotImplementedError, AssertionError)
MAX_UNSTORED = 1 << 24   # elements a config may make that are not weights in the file (front-end buffers)


# the front end's sizes: its buffers are computed from the config (NumPy, not on the meta device)
_FRONTEND_LIMITS = {"sample_rate": (1000, 768000), "n_fft": (1, 1 << 16), "features": (1, 4096), "nfilt": (1, 4096),
                    "frame_splicing": (1, 64), "pad_to": (0, 1 << 12), "n_window_size": (1, 1 << 16),
                    "n_window_stride": (1, 1 << 16), "hop_length": (1, 1 << 16), "win_length": (1, 1 << 16)}


def _check_frontend_config(path, pre) -> None:
    if not isinstance(pre, dict):
        return
    for key in (*_FRONTEND_LIMITS, "window_size", "window_stride"):
        v = pre.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            # a string here is multiplied by the sample rate: "A" * 10^4 made a 160 MB string
            raise CheckpointError(f"{path}: preprocessor {key} must be a number, not {type(v).__name__}")
    for key, (lo, hi) in _FRONTEND_LIMITS.items():
        v = pre.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not lo <= v <= hi:
            raise CheckpointError(f"{path}: preprocessor {key} = {v} outside {lo}..{hi}")
    rate = pre.get("sample_rate", 16000)
    for key in ("window_size", "window_stride"):
        v = pre.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and isinstance(rate, (int, float)) and \
                not 0 < v * rate <= 1 << 16:
            raise CheckpointError(f"{path}: preprocessor {key} = {v} s at {rate} Hz: outside 1..65536 samples")


MAX_CONFIG_INT = 1 << 20          # any size in the encoder / decoder sections (channels, kernels, positions)
MAX_LAYERS = 512                  # repeat (ConvASR blocks), n_layers (Conformer)


def _check_model_sizes(path, config: dict) -> None:
    """Sizes in the model sections bounded before even the meta-device build (10^7 repeated blocks
    take minutes to build without memory)."""
    def walk(node, where):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node[:10000]):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, (int, float)) and not isinstance(node, bool):
            key = where.rsplit(".", 1)[-1].split("[")[0]
            limit = MAX_LAYERS if key in ("repeat", "n_layers") else MAX_CONFIG_INT
            if node != node or abs(node) > limit:
                raise CheckpointError(f"{path}: config {where.lstrip('.')} = {node} (more than {limit}: "
                                      f"not a model this reader builds)")
    for section in ("encoder", "decoder"):
        walk(config.get(section), section)


def _check_config_against_weights(path, config: dict, tokenizer, state_dict: dict) -> None:
    """The config's model built without memory (torch's meta device) and compared with the file's
    weights, tensor by tensor, before the real model is built: a config that declares a larger
    model than the weights it ships (filters: 10^7 in a 100 kB file) is refused having allocated
    nothing, so building costs at most what the file holds (plus MAX_UNSTORED recomputed buffers)."""
    _check_frontend_config(path, config.get("preprocessor"))
    _check_model_sizes(path, config)
    try:
        with torch.device("meta"):
            meta = build_model(config, tokenizer)
    except _CONFIG_ERRORS as e:
        raise CheckpointError(f"{path}: unsupported model config: {_one_line(repr(e))}") from e
    stored = getattr(getattr(meta, "featurizer", None), "stored_weights", False)
    unstored = 0
    for key, t in meta.state_dict().items():
        w = state_dict.get(key)
        if w is None:
            if key.startswith("preprocessor.") and not stored:
                unstored += t.numel()
                if unstored > MAX_UNSTORED:
                    raise CheckpointError(f"{path}: the config's front end needs {unstored}+ values of its own "
                                          f"(more than {MAX_UNSTORED}; absurd window or filterbank sizes?)")
                continue
            raise CheckpointError(f"{path}: weights do not match the config: tensor {key!r} "
                                  f"{tuple(t.shape)} missing from {WEIGHTS_NAME}")
        if tuple(w.shape) != tuple(t.shape):
            raise CheckpointError(f"{path}: weights do not match the config: tensor {key!r} is "
                                  f"{tuple(w.shape)} in {WEIGHTS_NAME}, the config makes {tuple(t.shape)}")


def load_model(path: str | os.PathLike):
    """Build a float `ConvASR` or `ConformerCTC` (by the encoder `_target_`) from a `.nemo` file.

    BPE Conformers get their SentencePiece tokenizer from the archive (`tokenizer.model_path:
    nemo:<member>` in the config), read from memory like everything else.
    """
    from ..tokenizer import TokenizerError, tokenizer_from_archive

    config, state_dict, files = read_nemo(path)
    try:
        tokenizer = tokenizer_from_archive(config, files, str(path))
    except TokenizerError as e:
        raise CheckpointError(str(e)) from e
    _check_config_against_weights(path, config, tokenizer, state_dict)
    try:
        model = build_model(config, tokenizer)
    except _CONFIG_ERRORS as e:
        raise CheckpointError(f"{path}: unsupported model config: {_one_line(repr(e))}") from e
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # shape mismatches between config and weights
        lines = str(e).splitlines()
        raise CheckpointError(f"{path}: weights do not match the config: "
                              f"{(lines[1] if len(lines) > 1 else lines[0]).strip()}") from e
    # NeMo keeps the mel filterbank and window as buffers; ours are recomputed from the config
    # and checked equal in the tests, so their absence in a checkpoint is fine. A front end whose
    # buffers are weights (audio.ConvStftFrontend: stored STFT kernels and filterbank) needs them.
    stored = getattr(getattr(model, "featurizer", None), "stored_weights", False)
    missing = [k for k in missing if stored or not k.startswith("preprocessor.")]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the config: missing {missing[:5]}"
                              f"{'...' if len(missing) > 5 else ''}, unexpected {unexpected[:5]}")
    model.eval()
    return model


def save_model(model, path: str | os.PathLike) -> Path:
    """Write `model` as a `.nemo` NeMo can restore; a BPE model's tokenizer goes in as
    `tokenizer.model` (+ the `tokenizer.vocab` / `vocab.txt` NeMo also asks for), referenced
    from the config's `tokenizer` section with NeMo's `nemo:` prefix."""
    config, files = model.config, {}
    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is not None:
        from ..tokenizer import nemo_tokenizer_files

        files, entries = nemo_tokenizer_files(tokenizer)
        config = copy.deepcopy(config)
        config["tokenizer"] = {"dir": None, "type": "bpe", **dict(config.get("tokenizer") or {}), **entries}
        config["tokenizer"]["dir"] = None
    return write_nemo(path, config, model.state_dict(), files)
