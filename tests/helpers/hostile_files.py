"""Valid and hostile files of each kind the command line reads ([CONF-FILES]), for
tests/test_files.py, tests/test_file_probes.py and bench/fuzz_files.py.

``READERS`` maps a kind of file to (its file name, the valid file, the function that reads it as
the command line does). ``files(kind)`` is a hypothesis strategy of hostile files of that kind:
random bytes, the valid file with bytes flipped, cut, inserted or deleted, the valid JSON with
a value replaced by a random JSON value, deep nesting, many containers, and for zips: huge
declared shapes and sizes, object and structured dtypes, compressed tensor members, members
declaring more than the file holds. ``outcome(kind, path)`` reads one file and says how it
ended: "loaded", "refused: <kind of reason>", or raises AssertionError when the reader broke
the contract (another exception, a message on more than one line or not naming the file).
"""

from __future__ import annotations

import io
import json
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

# --- building files --------------------------------------------------------------------------


def npy_bytes(descr: str, shape, data: bytes = b"", *, version=(1, 0), fortran: bool = False,
              header: str | None = None) -> bytes:
    """An .npy file: its header says ``descr`` and ``shape`` (whatever the data holds)."""
    text = header if header is not None else repr({"descr": descr, "fortran_order": fortran, "shape": tuple(shape)})
    fmt = "<H" if version == (1, 0) else "<I"
    lead = 6 + 2 + struct.calcsize(fmt)
    pad = -(lead + len(text) + 1) % 64
    head = (text + " " * pad + "\n").encode("latin1")
    return b"\x93NUMPY" + bytes(version) + struct.pack(fmt, len(head)) + head + data


def raw_zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip written by hand: each member (name, stored bytes, method, crc, declared size), so that
    the declared size and the CRC may be anything."""
    out, central = io.BytesIO(), []
    for name, payload, method, crc, size in members:
        offset = out.tell()
        raw_name = name.encode()
        out.write(struct.pack("<4s5H3I2H", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(payload), size,
                              len(raw_name), 0) + raw_name)
        out.write(payload)
        central.append(struct.pack("<4s6H3I5H2I", b"PK\x01\x02", 20, 20, 0, method, 0, 0, crc, len(payload), size,
                                   len(raw_name), 0, 0, 0, 0, 0, offset) + raw_name)
    start = out.tell()
    for record in central:
        out.write(record)
    out.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(central), len(central), out.tell() - start, start, 0))
    return out.getvalue()


def deflated_zeros(prefix: bytes, zeros: int) -> tuple[bytes, int]:
    """(a raw deflate stream of ``prefix`` then ``zeros`` zero bytes, its CRC-32), built from one
    compressed MiB of zeros repeated (each block starts afresh after a full flush): 1.6 GB of
    zeros in about 1.5 MB and a second."""
    mib = 1 << 20
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = block.compress(bytes(mib)) + block.flush(zlib.Z_FULL_FLUSH)
    full, rest = divmod(zeros, mib)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = tail.compress(bytes(rest)) + tail.flush()
    crc = zlib.crc32(prefix)
    for _ in range(full):
        crc = zlib.crc32(_ZERO_MIB, crc)
    crc = zlib.crc32(bytes(rest), crc)
    return first + chunk * full + last, crc


_ZERO_MIB = bytes(1 << 20)


def npz_bomb(path: Path, elements: int = 200_000_000) -> Path:
    """[CONF-FILES] issue 20's probe: a ~1.5 MB .npz whose one array (float64, [1, elements]) would
    decompress to 8 * elements bytes (1.6 GB for the default)."""
    header = npy_bytes("<f8", (1, elements))
    stream, crc = deflated_zeros(header, 8 * elements)
    path.write_bytes(raw_zip([("inputs.logp.npy", stream, zipfile.ZIP_DEFLATED, crc, len(header) + 8 * elements)]))
    return path


def npz_of(arrays: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    """An .npz of ready .npy bytes (name without .npy -> bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as z:
        for name, data in arrays.items():
            z.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def encode(x) -> dict:
    from espo_ref.conformance.arrays import encode as enc

    return enc(np.asarray(x))


LOGP = np.array([[-1.0, -0.5, -0.7, -2.0], [-0.3, -1.2, -0.9, -0.1]])
BATCH = dict(logp=LOGP, old_logp=LOGP - np.array([[0.01, -0.02, 0.03, 0.0], [0.2, -0.3, 0.0, 0.1]]),
             entropy=np.array([[1.0, 2.0, 2.0, 0.5], [0.1, 0.2, 2.5, 1.0]]),
             mask=np.array([[1, 1, 1, 1], [1, 1, 1, 0]], bool), advantages=np.array([1.0, -1.0]))
CONFIG = {"vocab_size": 16}
TOKENS = [["a", "b", "c", "d"], ["e", "f", "g"]]


def batch_npz() -> bytes:
    from espo_ref.explain import save_batch

    path = Path(_tmp()) / "b.npz"
    save_batch(path, BATCH, CONFIG, tokens=TOKENS, logged={"loss": 0.25, "step": 3})
    return path.read_bytes()


def batch_json() -> bytes:
    return json.dumps({"inputs": {k: encode(v) for k, v in BATCH.items()}, "config": CONFIG, "tokens": TOKENS,
                       "logged": {"loss": 0.25, "step": 3}}).encode()


def _tmp() -> str:
    import tempfile

    global _TMP
    if _TMP is None:
        _TMP = tempfile.mkdtemp(prefix="espo-ref-files-")
    return _TMP


_TMP = None


def state_json() -> bytes:
    from espo_ref.train.checkpoint import rng_states

    host, _ = rng_states()
    return json.dumps({"step": 3, "data_position": 3, "rng": host, "config": {"algo": "espo"},
                       "summary": {"warm_start_loss_first": 1.0}}).encode()


def config_json() -> bytes:
    from espo_ref.train.config import TrainConfig

    return TrainConfig(steps=3, out_dir="runs/x").to_json().encode()


def tensor_file() -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save({"weight": torch.zeros(3), "bias": torch.ones(2, dtype=torch.float64)}, buffer)
    return buffer.getvalue()


VALID = {
    "batch.npz": batch_npz,
    "batch.json": batch_json,
    "latest.json": lambda: b'{"step": 1, "path": "step-000001"}\n',
    "state.json": state_json,
    "config.json": config_json,
    "metrics.jsonl": lambda: b"".join(json.dumps({"step": i, "reward": 0.5 * i, "sample": "x"}).encode() + b"\n"
                                      for i in range(1, 4)),
    "task.jsonl": lambda: b'{"prompt": "1+1?", "answer": 2}\n{"prompt": "hi", "answer": "yo", "response": " yo"}\n',
    "tensor.pt": tensor_file,
}
JSON_KINDS = ("batch.json", "latest.json", "state.json", "config.json")
JSONL_KINDS = ("metrics.jsonl", "task.jsonl")
TORCH_KINDS = ("state.json", "config.json", "tensor.pt", "latest.json")  # their readers import torch


_VALID_CACHE: dict[str, bytes] = {}


def valid(kind: str) -> bytes:
    if kind not in _VALID_CACHE:
        _VALID_CACHE[kind] = VALID[kind]()
    return _VALID_CACHE[kind]


# --- reading them as the command line does ---------------------------------------------------


def read_batch(path: Path):
    """explain: load, the config, the reference on it (what decides exit 0 or 2)."""
    from espo_ref.explain import espo_config_of, load_batch, token_view

    batch = load_batch(path)
    token_view(batch, espo_config_of(batch))


def read_latest(path: Path):
    from espo_ref.train import checkpoint as ckpt

    (path.parent / "step-000001").mkdir(exist_ok=True)
    ckpt.latest_checkpoint(path.parent)


def read_state(path: Path):
    """load_state, then what the trainer does with it: restore the RNG states (the process's own
    states are put back after), take the step, the summary and the config."""
    import random as pyrandom

    import torch

    from espo_ref.train import checkpoint as ckpt

    state = ckpt.load_state(path.parent)
    saved = pyrandom.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        ckpt.restore_rng(state["rng"], {"torch": torch.get_rng_state()})
    finally:
        pyrandom.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.set_rng_state(saved[2])
    int(state["step"]), dict(state.get("summary", {})), dict(state["config"])


def read_config(path: Path):
    from espo_ref.train.cli import config_of

    config_of({"out_dir": str(path.parent)}, path)


def read_metrics_file(path: Path):
    from espo_ref.train.metrics import read_metrics

    records = read_metrics(path)
    [r.get("step", 0) <= 2 for r in records]  # what --resume does with them


def read_task(path: Path):
    from espo_ref.train.tasks import load_jsonl

    load_jsonl(path)


def read_tensors(path: Path):
    from espo_ref.train import checkpoint as ckpt

    ckpt.load_weights(path)


READERS = {
    "batch.npz": read_batch,
    "batch.json": read_batch,
    "latest.json": read_latest,
    "state.json": read_state,
    "config.json": read_config,
    "metrics.jsonl": read_metrics_file,
    "task.jsonl": read_task,
    "tensor.pt": read_tensors,
}
FILE_NAMES = {"batch.npz": "b.npz", "batch.json": "b.json", "latest.json": "latest.json", "state.json": "state.json",
              "config.json": "config.json", "metrics.jsonl": "metrics.jsonl", "task.jsonl": "data.jsonl",
              "tensor.pt": "weights.pt"}


def write(folder: Path, kind: str, data: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / FILE_NAMES[kind]
    path.write_bytes(data)
    return path


def reason_kind(message: str, path: Path) -> str:
    """A refusal's message without the file and the values: the kind of reason, for counting."""
    text = message.replace(str(path), "FILE").replace(str(path.parent), "DIR")
    text = re.sub(r"'[^']*'|\"[^\"]*\"", "'...'", text)
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)", "(...)", text)
    text = re.sub(r"(?<![\w-])-?\d[\d,.]*(?:e[+-]?\d+)?", "N", text)
    return text[:90]


def outcome(kind: str, path: Path) -> str:
    """'loaded' or 'refused: <reason kind>'; AssertionError when the contract is broken."""
    try:
        READERS[kind](path)
    except ValueError as e:  # FileError, BatchError, TrainInputError, ESPOInputError: all ValueErrors
        message = str(e)
        assert message and "\n" not in message and "\r" not in message, f"{kind}: not one line: {message!r}"
        assert str(path) in message or str(path.parent) in message, f"{kind}: does not name the file: {message!r}"
        assert "Traceback" not in message
        return "refused: " + reason_kind(message, path)
    except Exception as e:  # noqa: BLE001 - the contract says: never
        raise AssertionError(f"{kind}: {type(e).__name__}: {e}"[:2000]) from e
    return "loaded"


# --- hostile files ---------------------------------------------------------------------------

MAX_SIZE = 4000
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=6), inner, max_size=5),
    max_leaves=20,
)


@st.composite
def mutated(draw, base: bytes) -> bytes:
    """The valid file with 1-4 byte-level mutations."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "byte"]), label="mutation")
        at = draw(st.integers(0, max(0, len(data) - 1)), label="at")
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7), label="bit")
        elif kind == "byte" and data:
            data[at] = draw(st.integers(0, 255), label="value")
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16), label="inserted")
        elif kind == "delete":
            del data[at:at + draw(st.integers(1, 16), label="deleted")]
    return bytes(data)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value[:6]):
            yield from _paths(v, prefix + (i,))


def _replace(value, path, new):
    if not path:
        return new
    value = json.loads(json.dumps(value))
    node = value
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    return value


@st.composite
def json_swapped(draw, base: bytes) -> bytes:
    """The valid JSON with one value (anywhere) replaced by a random JSON value, or a key removed."""
    value = json.loads(base)
    paths = list(_paths(value))
    path = draw(st.sampled_from(paths), label="path")
    if path and draw(st.booleans(), label="remove"):
        parent = _replace(value, (), value)
        node = parent
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return json.dumps(parent).encode()
    return json.dumps(_replace(value, path, draw(json_values, label="value"))).encode()


DEPTHS = (63, 64, 65, 1000, 200_000)


@st.composite
def deep_json(draw) -> bytes:
    """Nesting at and past the limit, as arrays, objects, or brackets inside strings."""
    n = draw(st.sampled_from(DEPTHS), label="depth")
    form = draw(st.sampled_from(["arrays", "objects", "unclosed", "in-string", "escaped", "containers"]), label="form")
    if form == "arrays":
        return b"[" * n + b"]" * n
    if form == "objects":
        return b'{"a":' * n + b"1" + b"}" * n
    if form == "unclosed":
        return b"[" * n
    if form == "in-string":  # not nested at all: a string of brackets
        return b'{"a": "' + b"[" * n + b'"}'
    if form == "escaped":  # an escaped quote does not end the string; an escaped backslash does not escape
        return b'{"a": "\\"' + b"[" * n + b'\\\\"' + b"[" * min(n, 70) + b"]" * min(n, 70) + b"}"
    return b"[" + b"[]," * (n if n < 2000 else (1 << 20)) + b"[]]"


@st.composite
def jsonl_lines(draw, base: bytes) -> bytes:
    """The valid JSONL with one line replaced by random JSON, random bytes or a deep nesting."""
    lines = base.split(b"\n")
    at = draw(st.integers(0, len(lines) - 1), label="line")
    lines[at] = draw(st.one_of(json_values.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40),
                               deep_json()), label="new line")
    return b"\n".join(lines)


DESCRS = ("<f8", "<f4", "|b1", "<i8", "<u4", "<c16", "<U5", "|S3", "|O", "|V8", "<M8[s]", "[('a', '<f8')]", ">f8",
          "<f2")
SHAPES = ((2, 4), (2,), (), (0,), (1 << 40,), (2, 1 << 21), (1 << 22, 1), (1 << 31, 1 << 31), (-1, 4), (1,) * 40)


@st.composite
def npz_crafted(draw) -> bytes:
    """A .npz whose members' headers say anything: huge or negative shapes, object and structured
    dtypes, other format versions, data shorter or longer than the header says, a lying
    declared size, a deflate stream that expands far beyond its declared size."""
    members = {k: np.asarray(v) for k, v in BATCH.items()}
    out = {f"inputs.{k}": _npy(v) for k, v in members.items()}
    out["config_json"] = _npy(np.str_(json.dumps(CONFIG)))
    out["logged_json"] = _npy(np.str_(json.dumps({"loss": 0.25})))
    out["tokens"] = _npy(np.array([row + [""] * (4 - len(row)) for row in TOKENS]))
    name = draw(st.sampled_from(sorted(out)), label="member")
    form = draw(st.sampled_from(["header", "version", "short", "long", "lying-size", "bomb", "text"]), label="form")
    if form == "header":
        descr = draw(st.sampled_from(DESCRS), label="descr")
        shape = draw(st.sampled_from(SHAPES), label="shape")
        if descr.startswith("["):
            header = "{'descr': " + descr + ", 'fortran_order': False, 'shape': " + repr(tuple(shape)) + "}"
            out[name] = npy_bytes("", (), b"\0" * 16, header=header)
        else:
            out[name] = npy_bytes(descr, shape, b"\0" * 64)
    elif form == "version":
        out[name] = npy_bytes("<f8", (2, 4), bytes(64), version=draw(st.sampled_from([(2, 0), (3, 0), (9, 9)])))
    elif form == "short":
        out[name] = out[name][:-draw(st.integers(1, 8), label="cut")]
    elif form == "long":
        out[name] = out[name] + draw(st.binary(min_size=1, max_size=16), label="extra")
    elif form == "text":
        out[name] = _npy(np.str_(draw(st.one_of(deep_json(), json_values.map(lambda v: json.dumps(v).encode())),
                                      label="json").decode("utf-8", "replace")))
    if form in ("lying-size", "bomb"):
        entries = []
        for key, data in out.items():
            crc = zlib.crc32(data)
            size = len(data)
            stream = zlib.compressobj(9, zlib.DEFLATED, -15)
            payload = stream.compress(data) + stream.flush()
            if key == name and form == "lying-size":
                size = draw(st.sampled_from([0, 1, size - 1, size + 1, 2**32 - 1]), label="declared")
            if key == name and form == "bomb":  # declares what the header says, which is huge
                header = npy_bytes("<f8", (1, 40_000_000))
                payload, crc = deflated_zeros(header, 320_000_000)
                size = len(header) + 320_000_000
            entries.append((f"{key}.npy", payload, zipfile.ZIP_DEFLATED, crc, size))
        return raw_zip(entries)
    return npz_of(out)


def _npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


@st.composite
def tensor_crafted(draw) -> bytes:
    """torch.save's zip with a member compressed, a declared size larger than the file, a member
    duplicated, or a raw pickle."""
    base = valid("tensor.pt")
    form = draw(st.sampled_from(["compressed", "overlap", "raw-pickle", "legacy"]), label="form")
    if form == "raw-pickle":
        import pickle

        return pickle.dumps({"weight": [1.0, 2.0]}, protocol=draw(st.integers(2, 5), label="protocol"))
    if form == "legacy":
        import torch

        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(2)}, buffer, _use_new_zipfile_serialization=False)
        return buffer.getvalue()
    with zipfile.ZipFile(io.BytesIO(base)) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    if form == "compressed":
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in members:
                z.writestr(name, data)
        return buffer.getvalue()
    # overlap: every data member declares far more than it stores
    return raw_zip([(name, data, 0, zlib.crc32(data), len(data) * (50 if "/data/" in name else 1))
                    for name, data in members])


def files(kind: str):
    """[CONF-FILES] Hostile files of ``kind`` (bytes)."""
    base = valid(kind)
    options = [st.binary(max_size=MAX_SIZE), mutated(base)]
    if kind in JSON_KINDS:
        options += [json_swapped(base), deep_json(), json_values.map(lambda v: json.dumps(v).encode())]
    if kind in JSONL_KINDS:
        options += [jsonl_lines(base), deep_json()]
    if kind == "batch.npz":
        options += [npz_crafted()]
    if kind == "tensor.pt":
        options += [tensor_crafted()]
    return st.one_of(options)


def kinds(with_torch: bool) -> list[str]:
    return [k for k in READERS if with_torch or k not in TORCH_KINDS]

