"""[CONF-FILES] The readers of the files the command line reads, one per kind of file.

Every file ``espo-ref`` reads goes through one of these: explain's batch files
(:func:`read_npz`, :func:`read_json`), a run's files on ``train --resume`` (``latest.json``,
``state.json``, ``config.json``: :func:`read_json_object`; ``metrics.jsonl`` and
``rollouts.jsonl``: :func:`read_jsonl`), a task's JSONL (:func:`read_jsonl`), tensor files
(:func:`check_tensor_file`, before ``torch.load(weights_only=True)``), and conform's report and
xfail files. Each bounds what it may allocate *before* allocating it: the file's size, JSON's
nesting depth and number of containers (counted by a scan of the bytes, so that a JSON nested
200,000 deep never reaches the recursive parser), a JSONL line's length, and a ``.npz``'s
members, their declared sizes and each array's shape and dtype, read from the zip directory and
the ``.npy`` headers before any array is decompressed (pickles are never loaded). Every failure
is a :class:`FileError`: one line naming the file, and the line or the key.
"""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ESPOInputError

KiB, MiB, GiB = 1 << 10, 1 << 20, 1 << 30

#: the deepest JSON nesting any file may have (a batch needs 4, a checkpoint's state.json 4)
MAX_DEPTH = 64
#: JSON objects and arrays a file may hold (each costs ~60-250 bytes of memory whatever its size)
MAX_CONTAINERS = 1 << 20
#: latest.json, state.json, config.json of a run; a conformance report (--from)
RUN_FILE_BYTES = 16 * MiB
REPORT_BYTES = 256 * MiB
#: metrics.jsonl, rollouts.jsonl: a line, the whole file
RUN_LOG_LINE_BYTES = 16 * MiB
RUN_LOG_BYTES = 1 * GiB
#: a task's JSONL data set: a line (a prompt of a million characters fits), the whole file
TASK_LINE_BYTES = 64 * MiB
TASK_BYTES = 4 * GiB
#: explain's batches: a .json file; a .npz file and its arrays decompressed; its members; an array's elements
BATCH_JSON_BYTES = 32 * MiB
BATCH_NPZ_BYTES = 256 * MiB
BATCH_MEMBERS = 1024
BATCH_ELEMENTS = 1 << 22
#: --xfail-file
TEXT_BYTES = 16 * MiB
#: tensor files (torch.save's zip): members, and the bytes of its central directory
TENSOR_MEMBERS = 1 << 20
TENSOR_DIRECTORY_BYTES = 256 * MiB

# C0 and C1 controls, DEL and the bidirectional overrides: shown as escapes in a message
_UNSAFE = {c: f"\\x{c:02x}" for c in (*range(0x00, 0x20), 0x7F, *range(0x80, 0xA0))}
_UNSAFE.update({c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))})
_REASON_CHARS = 600


def one_line(text: str) -> str:
    """``text`` on one line: every control character (newlines too) shown as its escape."""
    return str(text).translate(_UNSAFE)


def _size(n: int) -> str:
    for unit, name in ((GiB, "GiB"), (MiB, "MiB"), (KiB, "KiB")):
        if n >= unit and n % unit == 0:
            return f"{n // unit} {name}"
    return f"{n:,} bytes"


class FileError(ESPOInputError):
    """[CONF-FILES] A file that cannot be read as its kind. The message is one line: the file,
    then its line number (``path:3: ...``) or key (``path: inputs.logp: ...``), then what is wrong.
    ``path``, ``where`` and ``reason`` keep the parts."""

    def __init__(self, path, reason: str, where: int | str | None = None):
        self.path, self.where = str(path), where
        self.reason = one_line(reason)
        if len(self.reason) > _REASON_CHARS:
            self.reason = self.reason[:_REASON_CHARS] + "..."
        if where is None:
            place = self.path
        elif isinstance(where, int):
            place = f"{self.path}:{where}"
        else:
            place = f"{self.path}: {where}"
        super().__init__(one_line(f"{place}: {self.reason}"))

    def __reduce__(self):
        return type(self), (self.path, self.reason, self.where)


# --- bytes ---------------------------------------------------------------------------------


def _stat(path: Path, *, regular: bool = False) -> os.stat_result:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileError(path, "no such file") from None
    except OSError as e:
        raise FileError(path, f"cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise FileError(path, "is a folder, not a file")
    if regular and not stat.S_ISREG(st.st_mode):
        raise FileError(path, "is not a regular file")
    return st


def _too_large(path, size: int | None, limit: int, what: str) -> FileError:
    """``size`` None: found while reading (a file that grows, a pipe)."""
    if size is None:
        return FileError(path, f"more than the {_size(limit)} {what} may have; refused after reading that much")
    return FileError(path, f"{size:,} bytes, more than the {_size(limit)} {what} may have; refused before reading it")


def read_bytes(path, max_bytes: int, what: str = "such a file") -> bytes:
    """[CONF-FILES] The bytes of a file of at most ``max_bytes`` (checked on its size, then while
    reading: a file that grows, a pipe)."""
    path = Path(path)
    st = _stat(path)
    if st.st_size > max_bytes:
        raise _too_large(path, st.st_size, max_bytes, what)
    chunks, total = [], 0
    try:
        with open(path, "rb") as f:
            want = min(max_bytes, st.st_size) + 1
            while True:
                chunk = f.read(want)
                if not chunk:
                    break
                chunks.append(chunk)
                total += len(chunk)
                if total > max_bytes:
                    raise _too_large(path, None, max_bytes, what)
                want = min(64 * KiB, max_bytes + 1 - total)
    except OSError as e:
        raise FileError(path, f"cannot read it ({e.strerror or e})") from None
    return b"".join(chunks)


def read_text(path, max_bytes: int = TEXT_BYTES, what: str = "such a file") -> str:
    """[CONF-FILES] A UTF-8 text file of at most ``max_bytes``."""
    data = read_bytes(path, max_bytes, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileError(path, f"not UTF-8 text ({e.reason} at byte {e.start})") from None


# --- JSON ----------------------------------------------------------------------------------

_KEEP = b'"[]{}'
_NOT_STRUCTURAL = bytes(c for c in range(256) if c not in _KEEP)
_CHUNK = 1 << 20


def json_shape(data: bytes) -> tuple[int, int]:
    """(the deepest nesting, the number of objects and arrays) of a JSON text, from its bytes
    without parsing it: brackets inside strings do not count. For any text, valid or not, the
    nesting the parser reaches before it stops is at most the depth returned."""
    if data.count(b"[") + data.count(b"{") == 0:
        return 0, 0
    # escapes as JSON reads them: a pair of backslashes, then an escaped quote (a run of k
    # backslashes is k // 2 pairs and, for odd k, one escape of the next character)
    s = data.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _NOT_STRUCTURAL)
    depth = deepest = containers = 0
    inside = 0  # 1 inside a string
    for start in range(0, len(s), _CHUNK):
        a = np.frombuffer(s, dtype=np.uint8, count=min(_CHUNK, len(s) - start), offset=start)
        quote = a == ord('"')
        outside = ((np.cumsum(quote, dtype=np.int64) + inside) & 1) == 0  # a bracket is not a quote
        opens = outside & ((a == ord("[")) | (a == ord("{")))
        closes = outside & ((a == ord("]")) | (a == ord("}")))
        steps = opens.astype(np.int64) - closes
        running = depth + np.cumsum(steps)
        if running.size:
            deepest = max(deepest, int(running.max()))
            depth = int(running[-1])
        containers += int(opens.sum())
        inside = (inside + int(quote.sum())) & 1
    return deepest, containers


def parse_json(data: bytes | str, path, where: int | str | None = None, *, max_depth: int = MAX_DEPTH,
               max_containers: int = MAX_CONTAINERS, jsonl: bool = False) -> Any:
    """[CONF-FILES] The value of a JSON text (bytes: UTF-8) from ``path`` (at line or key
    ``where``); nesting and containers bounded before parsing. FileError otherwise."""
    if isinstance(data, str):
        text, raw = data, data.encode("utf-8", "surrogatepass")
    else:
        raw = data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise FileError(path, f"not UTF-8 ({e.reason} at byte {e.start})", where) from None
    deepest, containers = json_shape(raw)
    if deepest > max_depth:
        raise FileError(path, f"JSON nested {deepest:,} levels deep, more than the {max_depth} allowed; "
                              f"refused before parsing", where)
    if containers > max_containers:
        raise FileError(path, f"JSON of {containers:,} objects and arrays, more than the {max_containers:,} "
                              f"allowed; refused before parsing", where)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise FileError(path, f"not valid JSON ({e.msg if jsonl else e})", where) from None
    except (ValueError, RecursionError) as e:  # an int of more than 4300 digits
        raise FileError(path, f"not valid JSON ({e})", where) from None


def read_json(path, *, max_bytes: int = RUN_FILE_BYTES, max_depth: int = MAX_DEPTH,
              max_containers: int = MAX_CONTAINERS, what: str = "such a file") -> Any:
    """[CONF-FILES] The JSON value in a file of at most ``max_bytes``, nested at most ``max_depth``."""
    return parse_json(read_bytes(path, max_bytes, what), path, max_depth=max_depth, max_containers=max_containers)


def read_json_object(path, **limits) -> dict:
    """[CONF-FILES] :func:`read_json`, which must be a JSON object."""
    value = read_json(path, **limits)
    if not isinstance(value, dict):
        raise FileError(path, f"expected a JSON object, got {json_type(value)}")
    return value


def json_type(value) -> str:
    """The JSON name of a parsed value's type (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "an array", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def read_jsonl(path, *, max_line_bytes: int, max_bytes: int, max_depth: int = MAX_DEPTH,
               max_containers: int = MAX_CONTAINERS, torn_last: bool = False,
               what: str = "such a file") -> list[tuple[int, Any]]:
    """[CONF-FILES] (line number, value) of each non-blank line of a JSON Lines file: each line at
    most ``max_line_bytes`` (read no further), the file at most ``max_bytes``, every line UTF-8
    and JSON. ``torn_last``: a last line that is not valid JSON (a process killed while it wrote
    it) is dropped instead of refused."""
    path = Path(path)
    st = _stat(path)
    if st.st_size > max_bytes:
        raise _too_large(path, st.st_size, max_bytes, what)
    out, pending, total, lineno = [], None, 0, 0
    try:
        with open(path, "rb") as f:
            while True:
                raw = f.readline(max_line_bytes + 1)
                if not raw:
                    break
                lineno += 1
                total += len(raw)
                if total > max_bytes:
                    raise _too_large(path, None, max_bytes, what)
                if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                    raise FileError(path, f"a line longer than the {_size(max_line_bytes)} a line may have; "
                                          f"refused before reading it whole", lineno)
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise FileError(path, f"not UTF-8 ({e.reason} at byte {e.start})", lineno) from None
                if not line.strip():
                    continue
                if pending is not None:
                    raise pending
                try:
                    value = parse_json(line, path, lineno, max_depth=max_depth, max_containers=max_containers,
                                       jsonl=True)
                except FileError as e:
                    if torn_last and e.reason.startswith("not valid JSON"):
                        pending = e  # refused unless it is the last line
                        continue
                    raise
                out.append((lineno, value))
    except OSError as e:
        raise FileError(path, f"cannot read it ({e.strerror or e})") from None
    return out


# --- zip archives: .npz and torch tensor files ---------------------------------------------

_EOCD, _EOCD64_LOCATOR, _EOCD64 = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def zip_directory(f, size: int, path) -> tuple[int, int]:
    """(entries, bytes of the central directory) from a zip's end record, found where Python's
    zipfile finds it (the last 22 bytes, else the last end signature in the trailing 64 KiB; its
    zip64 record just before), read before the directory itself. FileError when there is none
    (not a zip, or a truncated one)."""
    tail_len = min(size, 22 + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    if len(tail) >= 22 and tail[-22:-18] == _EOCD and tail[-2:] == b"\0\0":
        at = len(tail) - 22
    else:
        at = tail.rfind(_EOCD)
    if at < 0 or len(tail) - at < 22:
        raise FileError(path, "not a zip archive (no end-of-directory record: not a zip, or truncated)")
    entries, directory = struct.unpack_from("<HI", tail, at + 10)
    record = size - tail_len + at
    if record >= 20 + 56:
        f.seek(record - 20)
        if f.read(4) == _EOCD64_LOCATOR:
            f.seek(record - 20 - 56)
            zip64 = f.read(56)
            if zip64[:4] == _EOCD64:
                entries, directory = struct.unpack_from("<QQ", zip64, 32)
    return entries, directory


# what reading a zip or an .npy header raises on a malformed file
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, OSError, EOFError, ValueError, struct.error, KeyError, TypeError,
               NotImplementedError, RuntimeError, OverflowError, SyntaxError, UnicodeDecodeError, IndexError)


def _open_zip(f, path, size: int, max_members: int, max_directory: int) -> zipfile.ZipFile:
    entries, directory = zip_directory(f, size, path)
    if entries > max_members:
        raise FileError(path, f"a zip of {entries:,} members, more than the {max_members:,} allowed; refused "
                              f"before reading its directory")
    if directory > max_directory or directory > size:
        raise FileError(path, f"a zip directory of {directory:,} bytes (at most {min(max_directory, size):,}); "
                              f"refused before reading it")
    f.seek(0)
    try:
        archive = zipfile.ZipFile(f)
    except _ZIP_ERRORS as e:
        raise FileError(path, f"not a readable zip archive ({type(e).__name__}: {e})") from None
    if len(archive.infolist()) > max_members:
        raise FileError(path, f"a zip of more than {max_members:,} members")
    return archive


#: dtype kinds an .npz array may have: bool, int, uint, float, complex, str, bytes (never object, void, datetime)
NPY_KINDS = "biufcUS"


def _npy_header(member, key: str, path):
    """(shape, fortran_order, dtype, data offset) of an .npy member, from its header alone."""
    from numpy.lib import format as npy

    version = npy.read_magic(member)
    if version == (1, 0):
        shape, fortran, dtype = npy.read_array_header_1_0(member, max_header_size=10000)
    elif version == (2, 0):
        shape, fortran, dtype = npy.read_array_header_2_0(member, max_header_size=10000)
    else:
        raise FileError(path, f"an .npy of format version {version[0]}.{version[1]} (1.0 and 2.0 are read)", key)
    if dtype.hasobject:
        raise FileError(path, "holds Python objects (a pickle); files are read without pickles", key)
    if dtype.kind not in NPY_KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise FileError(path, f"an array of dtype {dtype} (numbers, booleans or strings are read)", key)
    if len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise FileError(path, f"an array of shape {shape!r}"[:200], key)
    return shape, fortran, dtype, member.tell()


def read_npz(path, *, max_file_bytes: int = BATCH_NPZ_BYTES, max_bytes: int = BATCH_NPZ_BYTES,
             max_members: int = BATCH_MEMBERS, max_elements: int | None = BATCH_ELEMENTS) -> dict[str, np.ndarray]:
    """[CONF-FILES] The arrays of a ``.npz`` (name without ``.npy`` -> array), never a pickle.

    Before anything is decompressed: the file's size, its number of members (from the zip's
    end record, before the directory is read), each member's declared uncompressed size (their
    sum at most ``max_bytes``), and each ``.npy`` header (format, dtype: no object arrays, shape:
    at most ``max_elements`` elements, shape times item size equal to the declared size). Only
    then is each array read, exactly its declared bytes. Members that are not ``.npy`` are
    ignored, as ``np.load`` leaves them unread."""
    path = Path(path)
    st = _stat(path, regular=True)
    if st.st_size > max_file_bytes:
        raise _too_large(path, st.st_size, max_file_bytes, "a .npz")
    try:
        with open(path, "rb") as f:
            archive = _open_zip(f, path, st.st_size, max_members, max_members * KiB)
            members = {}
            for info in archive.infolist():
                if not info.filename.endswith(".npy") or info.is_dir():
                    continue
                key = info.filename[:-4]
                if key in members:
                    raise FileError(path, "a member the zip holds twice", key)
                if info.flag_bits & 0x1:
                    raise FileError(path, "an encrypted member", key)
                members[key] = info
            declared = sum(info.file_size for info in members.values())
            if declared > max_bytes:
                raise FileError(path, f"its arrays declare {declared:,} bytes decompressed, more than the "
                                      f"{_size(max_bytes)} allowed; refused before decompressing anything")
            headers = {}
            for key, info in members.items():
                try:
                    with archive.open(info) as member:
                        shape, fortran, dtype, offset = _npy_header(member, key, path)
                except FileError:
                    raise
                except _ZIP_ERRORS as e:
                    raise FileError(path, f"not a readable .npy member ({type(e).__name__}: {e})", key) from None
                count = math.prod(shape)
                if max_elements is not None and count > max_elements:
                    raise FileError(path, f"an array of shape {tuple(shape)}: {count:,} elements, more than the "
                                          f"{max_elements:,} allowed; refused before decompressing it", key)
                nbytes = count * dtype.itemsize
                if info.file_size != offset + nbytes:
                    raise FileError(path, f"its header says shape {tuple(shape)} of {dtype} ({nbytes:,} bytes) "
                                          f"but the member declares {info.file_size - offset:,} bytes of data", key)
                headers[key] = (shape, fortran, dtype, offset, nbytes)
            arrays = {}
            for key, (shape, fortran, dtype, offset, nbytes) in headers.items():
                try:
                    with archive.open(members[key]) as member:
                        member.read(offset)
                        data = member.read(nbytes)
                        member.read(1)  # at the end: the CRC is checked
                except _ZIP_ERRORS as e:
                    raise FileError(path, f"not a readable .npy member ({type(e).__name__}: {e})", key) from None
                if len(data) != nbytes:
                    raise FileError(path, f"truncated: {len(data):,} of its {nbytes:,} bytes", key)
                if dtype.itemsize == 0:
                    array = np.zeros(shape, dtype=dtype)
                else:
                    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
                arrays[key] = array
            return arrays
    except OSError as e:
        raise FileError(path, f"cannot read it ({e.strerror or e})") from None


def check_tensor_file(path, *, max_members: int = TENSOR_MEMBERS,
                      max_directory: int = TENSOR_DIRECTORY_BYTES) -> None:
    """[CONF-FILES] A tensor file as ``torch.save`` writes it, checked before ``torch.load``: a zip
    whose members are all stored uncompressed, each with the same compressed and declared size,
    declaring together no more bytes than the file holds; so that nothing the loader reads can
    expand beyond the file's own size. Legacy (pre-zip) files and raw pickles are refused."""
    path = Path(path)
    st = _stat(path, regular=True)
    try:
        with open(path, "rb") as f:
            try:
                archive = _open_zip(f, path, st.st_size, max_members, max_directory)
            except FileError as e:
                if e.reason.startswith("not a zip"):
                    raise FileError(path, "not a torch tensor file (not the zip archive torch.save writes; "
                                          "legacy files and raw pickles are not loaded)") from None
                raise
            declared = 0
            for info in archive.infolist():
                name = one_line(info.filename)[:200]
                if info.compress_type != zipfile.ZIP_STORED:
                    raise FileError(path, "a compressed member (torch.save stores its members uncompressed); "
                                          "refused: it could expand beyond the file's size", name)
                if info.compress_size != info.file_size:
                    raise FileError(path, f"a stored member that declares {info.file_size:,} bytes but holds "
                                          f"{info.compress_size:,}; refused", name)
                declared += info.file_size
            if declared > st.st_size:
                raise FileError(path, f"its members declare {declared:,} bytes, more than the file's "
                                      f"{st.st_size:,}; refused")
    except OSError as e:
        raise FileError(path, f"cannot read it ({e.strerror or e})") from None
