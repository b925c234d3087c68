"""Mutations of real files: byte-level (truncations, bit flips, interesting integers, chunk moves,
splices) and format-aware (zip and tar members, .npy headers, JSON and YAML trees, WAV / FLAC /
.hama header fields, forged-checksum blob edits).

Every mutator takes ``draw`` (``hypothesis``' ``data.draw``: every choice is a strategy draw, so a
failing input is reproduced from the same choices) and returns ``(bytes, label)``; the label
names the mutation (it is what the results file counts)."""
from __future__ import annotations

import io
import json
import struct
import tarfile
import zipfile

from hypothesis import strategies as st

INTERESTING = (0, 1, 2, 3, 7, 8, 15, 16, 31, 32, 63, 64, 127, 128, 255, 256, 0x7FFF, 0x8000, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32, (1 << 63) - 1, 1 << 63, (1 << 64) - 1)
INTERESTING_SIGNED = (0, 1, -1, 2, -2, 127, -128, 255, 32767, -32768, 65535, 2**31 - 1, -2**31, 2**32,
                      2**53, 2**62, 2**63 - 1, -2**63, 10**12, 10**30, -10**30)


def _pos(draw, n: int) -> int:
    return draw(st.integers(0, max(0, n - 1)))


def mutate_bytes(draw, data: bytes, others: list[bytes] = ()) -> tuple[bytes, str]:
    """One or a few byte-level edits."""
    b = bytearray(data)
    kind = draw(st.sampled_from(["truncate", "bitflip", "bytes", "int", "delete", "duplicate", "insert", "splice",
                                 "zero_tail"]))
    n = len(b)
    if n == 0 or kind == "insert":
        at = _pos(draw, n + 1)
        junk = draw(st.binary(min_size=1, max_size=64))
        b[at:at] = junk * draw(st.sampled_from([1, 1, 16, 1024]))
        return bytes(b), "insert"
    if kind == "truncate":
        cut = draw(st.one_of(st.integers(0, n - 1), st.integers(max(0, n - 64), n - 1), st.integers(0, min(n - 1, 256))))
        return bytes(b[:cut]), "truncate"
    if kind == "bitflip":
        for _ in range(draw(st.integers(1, 8))):
            i = _pos(draw, n)
            b[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(b), "bitflip"
    if kind == "bytes":
        for _ in range(draw(st.integers(1, 4))):
            i = _pos(draw, n)
            b[i] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF, draw(st.integers(0, 255))]))
        return bytes(b), "bytes"
    if kind == "int":
        width, fmt = draw(st.sampled_from([(2, "H"), (4, "I"), (8, "Q")]))
        i = _pos(draw, max(1, n - width + 1))
        v = draw(st.sampled_from(INTERESTING)) % (1 << (8 * width))
        endian = draw(st.sampled_from("<>"))
        b[i:i + width] = struct.pack(endian + fmt, v)[: max(0, min(width, n - i))]
        return bytes(b[:n]), "int"
    if kind == "delete":
        i = _pos(draw, n)
        del b[i:i + draw(st.integers(1, max(1, min(4096, n - i))))]
        return bytes(b), "delete"
    if kind == "duplicate":
        i = _pos(draw, n)
        chunk = b[i:i + draw(st.integers(1, 4096))]
        j = _pos(draw, n + 1)
        b[j:j] = chunk * draw(st.sampled_from([1, 2, 64]))
        return bytes(b), "duplicate"
    if kind == "zero_tail":
        i = _pos(draw, n)
        b[i:] = bytes(n - i)
        return bytes(b), "zero_tail"
    # splice: the head of this file, the tail of another
    other = draw(st.sampled_from(list(others))) if others else data
    i, j = _pos(draw, n), _pos(draw, len(other))
    return bytes(b[:i]) + other[j:], "splice"


# ------------------------------------------------------------------ JSON / YAML trees

def deep_nesting(depth: int, kind: str = "list") -> str:
    return ("[" * depth + "]" * depth) if kind == "list" else ('{"a":' * depth + "1" + "}" * depth)


def weird_value(draw):
    return draw(st.sampled_from([
        None, True, False, 0, -1, 1, 2**31, 2**63, -2**63, 2**64 + 5, 10**100, 1e308, -1e308, 0.5, float("nan"),
        float("inf"), float("-inf"), "", "x", "int8", "float32", "object", "../../etc/passwd", "\x00", [], [1, 2],
        [[1]], {}, {"a": 1}, "A" * 10000, list(range(100))]))


def mutate_tree(draw, obj, depth: int = 0):
    """A copy of a JSON-like tree with one node replaced, removed, or given a wrong type."""
    if isinstance(obj, dict) and obj and depth < 12 and draw(st.booleans()):
        key = draw(st.sampled_from(sorted(obj, key=str)))
        out = dict(obj)
        what = draw(st.sampled_from(["descend", "descend", "descend", "delete", "replace", "rename"]))
        if what == "descend":
            out[key] = mutate_tree(draw, obj[key], depth + 1)
        elif what == "delete":
            del out[key]
        elif what == "rename":
            out[str(key) + "_"] = out.pop(key)
        else:
            out[key] = weird_value(draw)
        return out
    if isinstance(obj, list) and obj and depth < 12 and draw(st.booleans()):
        out = list(obj)
        i = _pos(draw, len(obj))
        what = draw(st.sampled_from(["descend", "descend", "descend", "delete", "replace", "swap", "dup"]))
        if what == "descend":
            out[i] = mutate_tree(draw, obj[i], depth + 1)
        elif what == "delete":
            del out[i]
        elif what == "swap":
            j = _pos(draw, len(obj))
            out[i], out[j] = out[j], out[i]
        elif what == "dup":
            out.insert(i, out[i])
        else:
            out[i] = weird_value(draw)
        return out
    if isinstance(obj, bool) or obj is None:
        return weird_value(draw)
    if isinstance(obj, int):
        return draw(st.sampled_from([obj + 1, obj - 1, -obj, 0, obj * 1000, *INTERESTING_SIGNED, weird_value(draw)]))
    if isinstance(obj, float):
        return draw(st.sampled_from([obj * 1e30, -obj, 0.0, float("nan"), float("inf"), 1e-300, weird_value(draw)]))
    if isinstance(obj, str):
        return draw(st.sampled_from([obj + "x", "", obj * 100, "int64", "uint8", "float64", "conv1d", "logits",
                                     "input", weird_value(draw)]))
    return weird_value(draw)


def mutate_json_text(draw, text: str) -> tuple[str, str]:
    """A JSON document mutated as a tree (most of the time) or as text (deep nesting, junk)."""
    kind = draw(st.sampled_from(["tree", "tree", "tree", "tree", "nesting", "text"]))
    if kind == "nesting":
        depth = draw(st.sampled_from([100, 1000, 10**4, 10**5]))
        obj = json.loads(text)
        if isinstance(obj, dict) and obj:
            key = draw(st.sampled_from(sorted(obj)))
            nested = deep_nesting(depth, draw(st.sampled_from(["list", "dict"])))
            body = json.dumps({k: (None if k == key else v) for k, v in obj.items()})
            return body.replace(f'{json.dumps(key)}: null', f"{json.dumps(key)}: {nested}", 1), "json_nesting"
        return deep_nesting(depth), "json_nesting"
    if kind == "text":
        b, label = mutate_bytes(draw, text.encode("utf-8"))
        return b.decode("utf-8", "surrogateescape"), "json_bytes_" + label
    return json.dumps(mutate_tree(draw, json.loads(text))), "json_tree"


# ------------------------------------------------------------------ zip containers (.aqz)

def read_zip(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return [(i.filename, z.read(i)) for i in z.infolist()]


def write_zip(members, compress=None) -> bytes:
    """members: [(name, bytes, compression or None)]; CRCs correct."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as z:
        for name, data, comp in members:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = comp if comp is not None else (compress or zipfile.ZIP_STORED)
            z.writestr(info, data)
    return buf.getvalue()


def npy_bytes(shape, descr: str, payload: bytes, fortran: bool = False, version=(1, 0)) -> bytes:
    header = repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}).encode("latin1")
    lenfmt, pre = ("<H", 10) if version == (1, 0) else ("<I", 12)
    header += b" " * ((64 - (pre + len(header) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY" + bytes(version) + struct.pack(lenfmt, len(header)) + header + payload


def mutate_npy(draw, data: bytes) -> tuple[bytes, str]:
    """A .npy member with its header or values changed (wrong dtypes and shapes, NaN, huge sizes)."""
    import numpy as np

    a = np.load(io.BytesIO(data), allow_pickle=False)
    kind = draw(st.sampled_from(["dtype", "shape", "values", "huge", "header_text", "fortran", "empty", "scalar"]))
    if kind == "dtype":
        to = draw(st.sampled_from(["<i1", "<u1", "<i2", "<i4", "<i8", "<u8", "<f4", "<f8", "<f2", "|b1", ">i8", "<c8",
                                   "|O", "<U4", "|S3", "<M8[s]", "|V8"]))
        if to in ("|O", "<U4", "|S3", "<M8[s]", "|V8", "<c8"):
            return npy_bytes(a.shape, to, bytes(a.size * 8)), "npy_dtype_" + to
        b = a.astype(np.dtype(to))
        return npy_bytes(b.shape, b.dtype.str, b.tobytes()), "npy_dtype"
    if kind == "shape":
        shapes = [(a.size,), (1, a.size), (a.size, 1), tuple(reversed(a.shape)), a.shape + (1,), (1,) + a.shape]
        s = draw(st.sampled_from(shapes))
        return npy_bytes(s, a.dtype.str, a.tobytes()), "npy_shape"
    if kind == "values":
        b = a.copy()
        if b.size:
            flat = b.reshape(-1)
            if b.dtype.kind == "f":
                v = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e38, -1e38, 0.0, 1e-45]))
            elif b.dtype.kind in "iu":
                info = np.iinfo(b.dtype)
                v = draw(st.sampled_from([info.min, info.max, 0, -1 if info.min < 0 else 0, 1]))
            else:
                v = not bool(flat[0])
            which = draw(st.sampled_from(["one", "all"]))
            if which == "one":
                flat[_pos(draw, flat.size)] = v
            else:
                flat[:] = v
        return npy_bytes(b.shape, b.dtype.str, b.tobytes(), fortran=False), "npy_values"
    if kind == "huge":
        s = draw(st.sampled_from([(2**40,), (2**31, 2**31), (10**6, 10**6), (-1,), (2**63 - 1,), (0, 2**62)]))
        return npy_bytes(s, a.dtype.str, a.tobytes()), "npy_huge_shape"
    if kind == "header_text":
        junk = draw(st.sampled_from(["{'descr': '<i1', 'fortran_order': False, 'shape': (" + "(" * 500 + ")" * 500 + ")}",
                                     "{'descr': '<i1', 'fortran_order': False, 'shape': (1e9,)}",
                                     "{'descr': [('a', '<i1')], 'fortran_order': False, 'shape': (3,)}",
                                     "{'descr': '<i1', 'shape': (3,)}", "__import__('os').system('x')",
                                     "{'descr': '<i1', 'fortran_order': 'yes', 'shape': (3,)}", "[1, 2]"]))
        h = junk.encode("latin1")
        h += b" " * ((64 - (10 + len(h) + 1) % 64) % 64) + b"\n"
        return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(h)) + h + a.tobytes(), "npy_header_text"
    if kind == "fortran":
        return npy_bytes(a.shape, a.dtype.str, a.tobytes(), fortran=True, version=(2, 0)), "npy_fortran"
    if kind == "scalar":
        return npy_bytes((), a.dtype.str, a.tobytes()[: a.dtype.itemsize]), "npy_scalar"
    return npy_bytes((0,) + a.shape[1:], a.dtype.str, b""), "npy_empty"


# ------------------------------------------------------------------ tar containers (.nemo, LibriSpeech)

def read_tar(data: bytes) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
        for m in tar:
            f = tar.extractfile(m) if m.isfile() else None
            out.append((m, f.read() if f is not None else None))
    return out


def write_tar(members, compression: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compression, format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            else:
                tar.addfile(info)
    return buf.getvalue()


def tar_member(name: str, data: bytes | None = None, type_=tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.mtime = type_, linkname, 0o644, 0
    if data is not None:
        info.size = len(data)
    return info


LINK_TARGETS = ("/etc/passwd", "../../outside.txt", "../outside", "/dev/zero", "/tmp", ".", "..", "a/../../b",
                "/proc/self/environ", "model_weights.ckpt", "./model_config.yaml")


def mutate_tar_structure(draw, members, names_of_interest=()) -> tuple[list, str]:
    """A member list with links, escapes, special files, duplicates, deep nesting or huge sizes."""
    members = [(m, d) for m, d in members]
    kind = draw(st.sampled_from(["symlink", "hardlink", "escape", "absolute", "fifo", "device", "dir_as_file",
                                 "duplicate", "deep", "drop", "swap", "many", "rename"]))
    target_name = draw(st.sampled_from([m.name for m, _ in members] + list(names_of_interest))) if members else "x"
    if kind == "symlink":
        info = tar_member(target_name, type_=tarfile.SYMTYPE, linkname=draw(st.sampled_from(LINK_TARGETS)))
        members = [(m, d) for m, d in members if m.name != target_name] + [(info, None)]
    elif kind == "hardlink":
        info = tar_member(target_name, type_=tarfile.LNKTYPE, linkname=draw(st.sampled_from(LINK_TARGETS)))
        members = [(m, d) for m, d in members if m.name != target_name] + [(info, None)]
    elif kind == "escape":
        name = draw(st.sampled_from(["../", "../../", "a/../../", "./../"])) + target_name.lstrip("./")
        members.append((tar_member(name, b"x"), b"x"))
    elif kind == "absolute":
        members.append((tar_member("/tmp/intasr_fuzz_abs/" + target_name.lstrip("./"), b"x"), b"x"))
    elif kind == "fifo":
        members = [(m, d) for m, d in members if m.name != target_name] + [(tar_member(target_name, type_=tarfile.FIFOTYPE), None)]
    elif kind == "device":
        info = tar_member(target_name, type_=draw(st.sampled_from([tarfile.CHRTYPE, tarfile.BLKTYPE])))
        info.devmajor, info.devminor = 1, 5
        members = [(m, d) for m, d in members if m.name != target_name] + [(info, None)]
    elif kind == "dir_as_file":
        members = [(m, d) for m, d in members if m.name != target_name] + [(tar_member(target_name, type_=tarfile.DIRTYPE), None)]
    elif kind == "duplicate":
        i = _pos(draw, len(members))
        members.append(members[i])
    elif kind == "deep":
        depth = draw(st.sampled_from([50, 500, 3000]))
        members.append((tar_member("d/" * depth + "x.flac", b"x"), b"x"))
    elif kind == "drop" and members:
        del members[_pos(draw, len(members))]
    elif kind == "swap" and len(members) > 1:
        i, j = _pos(draw, len(members)), _pos(draw, len(members))
        (mi, di), (mj, dj) = members[i], members[j]
        members[i], members[j] = (mi, dj), (mj, di)
    elif kind == "many":
        members += [(tar_member(f"junk/{i}.txt", b""), b"") for i in range(draw(st.sampled_from([100, 1000])))]
    elif kind == "rename" and members:
        i = _pos(draw, len(members))
        m, d = members[i]
        m.name = draw(st.sampled_from(["", ".", "./", "\x00x", "a\\..\\..\\b", m.name + "/", "~/" + m.name,
                                       m.name.upper(), "x" * 300]))
    return members, "tar_" + kind


_BOMBS: dict = {}


def tar_bomb(name: str, size: int, compression: str = "gz") -> bytes:
    """A compressed tar whose one member inflates to `size` bytes of zeros (written in 1 MiB pieces;
    made once per process)."""
    key = (name, size, compression)
    if key not in _BOMBS:
        _BOMBS[key] = _tar_bomb(name, size, compression)
    return _BOMBS[key]


def _tar_bomb(name: str, size: int, compression: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:" + compression) as tar:
        info = tar_member(name)
        info.size = size

        class Zeros(io.RawIOBase):
            def __init__(self, n):
                self.n = n

            def readable(self):
                return True

            def readinto(self, b):
                k = min(len(b), self.n)
                b[:k] = bytes(k)
                self.n -= k
                return k

        tar.addfile(info, io.BufferedReader(Zeros(size), 1 << 20))
    return buf.getvalue()


def tar_header_size(data: bytes, size: int, member: int = 0) -> bytes:
    """A plain tar with member `member`'s header size field set to `size` (octal or base-256), checksum fixed."""
    b = bytearray(data)
    off, i = 0, 0
    while off + 512 <= len(b):
        hdr = b[off:off + 512]
        if hdr == bytes(512):
            break
        try:
            cur = int(hdr[124:136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            break
        if i == member:
            field = (f"{size:011o}".encode() + b"\0") if size < 8**11 else (b"\x80" + size.to_bytes(11, "big"))
            b[off + 124:off + 136] = field[:12]
            b[off + 148:off + 156] = b" " * 8
            chk = sum(b[off:off + 512])
            b[off + 148:off + 156] = f"{chk:06o}".encode() + b"\0 "
            return bytes(b)
        off += 512 + -(-cur // 512) * 512
        i += 1
    return bytes(b)


# ------------------------------------------------------------------ audio headers

def wav_fields(draw, data: bytes) -> tuple[bytes, str]:
    """A RIFF/WAVE file with one fmt or data field set to an absurd value."""
    b = bytearray(data)
    fmt = b.find(b"fmt ")
    dat = b.find(b"data")
    fields = {"format": (fmt + 8, "<H"), "channels": (fmt + 10, "<H"), "rate": (fmt + 12, "<I"),
              "byte_rate": (fmt + 16, "<I"), "block_align": (fmt + 20, "<H"), "bits": (fmt + 22, "<H"),
              "data_size": (dat + 4, "<I"), "riff_size": (4, "<I")}
    name = draw(st.sampled_from(sorted(fields)))
    off, f = fields[name]
    if off < 4:
        return bytes(b), "wav_nofield"
    limit = 0xFFFF if f == "<H" else 0xFFFFFFFF
    v = draw(st.sampled_from([0, 1, 2, 3, 7, 8, 11, 1000, 7999, 8000, 22050, 44100, 44101, 48000, 96000, 192000,
                              1000003, 999983, 65535, 2**31 - 1, 2**32 - 1, 1024, 1025, 4096, 24, 32, 64, 3]))
    b[off:off + struct.calcsize(f)] = struct.pack(f, v & limit)
    return bytes(b), f"wav_{name}"


def flac_streaminfo(draw, data: bytes) -> tuple[bytes, str]:
    """A FLAC file with its STREAMINFO sample rate, channels, bits or total samples changed."""
    b = bytearray(data)
    if b[:4] != b"fLaC" or len(b) < 42:
        return bytes(b), "flac_none"
    si = 8  # after "fLaC" and the 4-byte block header
    bits = int.from_bytes(b[si + 10:si + 18], "big")   # rate 20 | channels-1 3 | bps-1 5 | total 36
    name = draw(st.sampled_from(["rate", "channels", "bits", "total", "blocksize", "framesize"]))
    if name == "rate":
        v = draw(st.sampled_from([0, 1, 2, 3, 100, 7999, 44101, 96000, 655350, 999983, (1 << 20) - 1]))
        bits = (bits & ~(((1 << 20) - 1) << 44)) | (v << 44)
    elif name == "channels":
        bits = (bits & ~(7 << 41)) | (draw(st.integers(0, 7)) << 41)
    elif name == "bits":
        bits = (bits & ~(31 << 36)) | (draw(st.integers(0, 31)) << 36)
    elif name == "total":
        v = draw(st.sampled_from([0, 1, (1 << 36) - 1, 1 << 30, 1 << 35]))
        bits = (bits & ~((1 << 36) - 1)) | v
    elif name == "blocksize":
        b[si:si + 4] = struct.pack(">HH", *draw(st.sampled_from([(0, 0), (16, 65535), (65535, 16), (1, 1)])))
        return bytes(b), "flac_blocksize"
    else:
        b[si + 4:si + 10] = bytes.fromhex(draw(st.sampled_from(["000000ffffff", "ffffffffffff", "000000000000"])))
        return bytes(b), "flac_framesize"
    b[si + 10:si + 18] = bits.to_bytes(8, "big")
    return bytes(b), f"flac_{name}"


def wav_bytes(samples: bytes, rate: int, channels: int, bits: int, fmt_tag: int = 1) -> bytes:
    """A WAV file built by hand (any header values, whatever soundfile would write)."""
    block = max(1, channels * bits // 8)
    fmt = struct.pack("<HHIIHH", fmt_tag, channels, rate & 0xFFFFFFFF, (rate * block) & 0xFFFFFFFF, block & 0xFFFF, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(samples)) + samples
    return b"RIFF" + struct.pack("<I", len(body)) + body


# ------------------------------------------------------------------ the C runtime's files

def blob_checksum(body: bytes) -> int:
    from ..program.c_lower import checksum

    return checksum(body)


def forge_blob(draw, data: bytes) -> tuple[bytes, str]:
    """model.bin with its body changed while the header's size and position-weighted checksum still
    match: +d, -2d, +d at three consecutive bytes leave sum(byte * weight) unchanged when the
    weights are consecutive (w, w+1, w+2). What a hostile blob needs to get past a checksum."""
    b = bytearray(data)
    n = len(b)
    if n < 64 + 8:
        return bytes(b), "forge_short"
    for _ in range(draw(st.integers(1, 16))):
        for _try in range(20):
            i = 64 + _pos(draw, n - 64 - 2)
            if (i - 64) % 65521 > 65521 - 3:
                continue
            d = draw(st.sampled_from([1, -1, 2, -2, 7, 32, -32, 60, -60, 100]))
            x0, x1, x2 = b[i] + d, b[i + 1] - 2 * d, b[i + 2] + d
            if 0 <= x0 < 256 and 0 <= x1 < 256 and 0 <= x2 < 256:
                b[i], b[i + 1], b[i + 2] = x0, x1, x2
                break
    return bytes(b), "forge_checksum"
