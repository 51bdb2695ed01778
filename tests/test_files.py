"""[CONF-FILES] The readers of the files the command line reads (espo_ref/_files.py): their bounds,
checked before anything is allocated, their one-line errors naming the file and the line or key,
and a hypothesis fuzz of every reader with hostile files (tests/helpers/hostile_files.py: random
bytes, mutated valid files, deep nesting, huge declared shapes and sizes): each file loads or is
refused in one line naming it, never another exception. bench/fuzz_files.py runs the same fuzz
for many more files."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from espo_ref import _files
from espo_ref._files import FileError, json_shape, parse_json, read_json, read_jsonl, read_npz
from helpers.hostile_files import (READERS, TORCH_KINDS, files, json_values, npy_bytes, npz_bomb, npz_of, outcome,
                                   raw_zip, write)

FUZZ = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])


# --- the error --------------------------------------------------------------------------------


def test_CONF_FILES_an_error_is_one_line_naming_the_file_and_the_line_or_key():
    assert str(FileError("a/b.jsonl", "not UTF-8", 3)) == "a/b.jsonl:3: not UTF-8"
    assert str(FileError("b.json", "must be a number", "logged.loss")) == "b.json: logged.loss: must be a number"
    assert str(FileError("b.json", "bad")) == "b.json: bad"
    text = str(FileError("we\nird\x1b[2J.json", "line\none\r"))
    assert "\n" not in text and "\r" not in text and "\x1b" not in text and "\\x0a" in text
    assert isinstance(FileError("x", "y"), ValueError)  # exit 2 in every command
    import pickle

    again = pickle.loads(pickle.dumps(FileError("b.json", "bad", "inputs.logp")))
    assert (str(again), again.path, again.where, again.reason) == ("b.json: inputs.logp: bad", "b.json", "inputs.logp",
                                                                   "bad")


# --- JSON -------------------------------------------------------------------------------------


def _depth(value) -> int:
    if isinstance(value, (list, dict)):
        inner = value.values() if isinstance(value, dict) else value
        return 1 + max((_depth(v) for v in inner), default=0)
    return 0


def _containers(value) -> int:
    if isinstance(value, (list, dict)):
        inner = value.values() if isinstance(value, dict) else value
        return 1 + sum(_containers(v) for v in inner)
    return 0


tricky_text = st.text(alphabet='[]{}"\\ab\u00e9\u2028', max_size=12)
tricky_json = st.recursive(st.none() | st.integers() | tricky_text,
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
                           max_leaves=25)


@FUZZ
@given(value=tricky_json, ascii_only=st.booleans())
def test_CONF_FILES_the_depth_scan_counts_only_brackets_outside_strings(value, ascii_only):
    """The scan that runs before json.loads gives the depth and the containers of the value, with
    brackets, quotes and backslashes inside strings and keys."""
    text = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert json_shape(text) == (_depth(value), _containers(value))


@pytest.mark.parametrize("text, depth", [
    (b"[" * 200_000, 200_000), (b'["\\\\"' + b"[" * 5, 6), (b'["\\"[[["]', 1), (b'{"a": "]]]]", "b": [[]]}', 3),
    (b'"' + b"[" * 100, 0), (b"]]]][[", 0),
])
def test_CONF_FILES_the_depth_scan_bounds_what_the_parser_would_reach(text, depth):
    """Invalid texts too: the parser never nests deeper than the scan says before it stops."""
    assert json_shape(text)[0] == depth


def test_CONF_FILES_json_nested_200000_deep_is_refused_before_parsing(tmp_path):
    path = tmp_path / "deep.json"
    path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(FileError, match=r"deep\.json: JSON nested 200,000 levels deep, more than the 64"):
        read_json(path)
    with pytest.raises(FileError, match="more than the 64"):  # inside a JSONL line or a string too
        parse_json('{"a": ' + "[" * 65 + "]" * 65 + "}", "x.jsonl", 3)


def test_CONF_FILES_json_limits_size_and_containers(tmp_path):
    path = tmp_path / "big.json"
    path.write_bytes(b"[" + b"[]," * 2000 + b"[]]")
    with pytest.raises(FileError, match="2,002 objects and arrays, more than the 1,000"):
        read_json(path, max_containers=1000)
    with pytest.raises(FileError, match=r"6,004 bytes, more than the 1 KiB .* refused before reading it"):
        read_json(path, max_bytes=1024)
    path.write_bytes(b'{"a": 1' + b"0" * 5000 + b"}")
    with pytest.raises(FileError, match="not valid JSON"):  # Python's limit on an int's digits
        read_json(path)
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(FileError, match=r"big\.json: not UTF-8 \(invalid start byte at byte 7\)"):
        read_json(path)


def test_CONF_FILES_a_pipe_or_a_growing_file_is_bounded_while_reading():
    import os

    from espo_ref._files import read_bytes

    read_end, write_end = os.pipe()
    os.write(write_end, b"x" * 3000)
    os.close(write_end)
    try:
        with pytest.raises(FileError, match="more than the 1 KiB such a file may have; refused after reading"):
            read_bytes(f"/proc/self/fd/{read_end}", 1024)
    finally:
        os.close(read_end)


# --- JSON Lines -------------------------------------------------------------------------------


def test_CONF_FILES_jsonl_lines_are_bounded_and_named(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_bytes(b'{"step": 1}\n' + b'{"x": "' + b"a" * 5000 + b'"}\n')
    with pytest.raises(FileError, match=r"m\.jsonl:2: a line longer than the 1 KiB"):
        read_jsonl(path, max_line_bytes=1024, max_bytes=10**6)
    path.write_bytes(b'{"step": 1}\n\n{"step": 2}\n{"st')
    assert read_jsonl(path, max_line_bytes=1024, max_bytes=10**6, torn_last=True) == [(1, {"step": 1}),
                                                                                      (3, {"step": 2})]
    with pytest.raises(FileError, match=r"m\.jsonl:4: not valid JSON"):
        read_jsonl(path, max_line_bytes=1024, max_bytes=10**6)
    path.write_bytes(b'{"step": 1}\n{"step": "\xc3("}\n')
    with pytest.raises(FileError, match=r"m\.jsonl:2: not UTF-8"):  # never dropped as torn
        read_jsonl(path, max_line_bytes=1024, max_bytes=10**6, torn_last=True)


# --- .npz -------------------------------------------------------------------------------------

npz_arrays = st.dictionaries(
    st.text(alphabet="abcdefgh._", min_size=1, max_size=8),
    hnp.arrays(st.one_of(hnp.boolean_dtypes(), hnp.integer_dtypes(), hnp.unsigned_integer_dtypes(),
                         hnp.floating_dtypes(), hnp.unicode_string_dtypes(max_len=4)),
               hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)),
    max_size=4)


@FUZZ
@given(arrays=npz_arrays, compressed=st.booleans(), fortran=st.booleans())
def test_CONF_FILES_read_npz_reads_what_np_load_reads(tmp_path, arrays, compressed, fortran):
    path = tmp_path / "a.npz"
    arrays = {k: np.asfortranarray(v) if fortran else v for k, v in arrays.items()}
    (np.savez_compressed if compressed else np.savez)(path, **arrays)
    got = read_npz(path)
    with np.load(path, allow_pickle=False) as want:
        assert sorted(got) == sorted(want.files)
        for key in want.files:
            np.testing.assert_array_equal(got[key], want[key])
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape


def test_CONF_FILES_a_decompression_bomb_is_refused_on_its_declared_size_in_little_memory(tmp_path):
    """Issue 20's probe: 1.5 MB of .npz that decompress to 1.6 GB. Refused from the zip directory,
    before any member is opened; peak memory a few MiB (it was 1.6 GB)."""
    path = npz_bomb(tmp_path / "bomb.npz")
    assert path.stat().st_size < 2_000_000
    tracemalloc.start()
    try:
        with pytest.raises(FileError, match="1,600,000,128 bytes decompressed, more than the 256 MiB allowed; "
                                            "refused before decompressing anything"):
            read_npz(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak
    # under a larger byte budget the element count refuses it, from the .npy header alone
    tracemalloc.start()
    try:
        with pytest.raises(FileError, match=r"inputs\.logp: an array of shape \(1, 200000000\): 200,000,000 "
                                            r"elements, more than the 4,194,304"):
            read_npz(path, max_bytes=2**31)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 2**20, peak


def test_CONF_FILES_npz_members_are_counted_from_the_end_record_before_the_directory(tmp_path):
    path = tmp_path / "many.npz"
    path.write_bytes(npz_of({f"m{i}": npy_bytes("<f8", (0,)) for i in range(40)}, zipfile.ZIP_STORED))
    with pytest.raises(FileError, match="a zip of 40 members, more than the 30 allowed; refused before"):
        read_npz(path, max_members=30)
    assert len(read_npz(path)) == 40


@pytest.mark.parametrize("member, word", [
    (npy_bytes("|O", (2,), b"\0" * 16), "holds Python objects (a pickle)"),
    (npy_bytes("|V8", (2,), b"\0" * 16), "an array of dtype |V8"),
    (npy_bytes("<f8", (2, 4), b"\0" * 8), "its header says shape (2, 4) of float64 (64 bytes) but the member "
                                          "declares 8 bytes"),
    (npy_bytes("<f8", (1 << 40,), b""), "1,099,511,627,776 elements"),
    (npy_bytes("<f8", (2,), b"\0" * 16, version=(3, 0)), "format version 3.0"),
    (b"not an npy file at all", "not a readable .npy member"),
])
def test_CONF_FILES_npz_members_are_checked_on_their_header(tmp_path, member, word):
    path = tmp_path / "b.npz"
    path.write_bytes(npz_of({"inputs.logp": member}))
    with pytest.raises(FileError) as info:
        read_npz(path)
    assert str(info.value).startswith(f"{path}: inputs.logp: ") and word in str(info.value)


def test_CONF_FILES_a_truncated_or_lying_npz_is_refused(tmp_path):
    path = tmp_path / "b.npz"
    buffer = io.BytesIO()
    np.savez(buffer, x=np.arange(10.0))
    path.write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(FileError, match="not a zip archive .*truncated"):
        read_npz(path)
    data = npy_bytes("<f8", (4,), b"\0" * 32)
    path.write_bytes(raw_zip([("x.npy", data, zipfile.ZIP_STORED, 12345, len(data))]))  # a wrong CRC
    with pytest.raises(FileError, match=r"x: not a readable \.npy member \(BadZipFile: Bad CRC-32"):
        read_npz(path)


# --- tensor files -----------------------------------------------------------------------------


def test_CONF_FILES_tensor_files_are_stored_zips_that_fit_in_the_file(tmp_path):
    torch = pytest.importorskip("torch")
    from espo_ref._files import check_tensor_file

    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(4)}, path)
    check_tensor_file(path)
    with zipfile.ZipFile(path) as z:
        members = [(i.filename, z.read(i.filename)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    with pytest.raises(FileError, match="a compressed member"):
        check_tensor_file(path)
    path.write_bytes(raw_zip([(name, data, 0, 0, len(data) * 100) for name, data in members]))
    with pytest.raises(FileError, match="declares .* bytes but holds"):
        check_tensor_file(path)
    path.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(FileError, match="not a torch tensor file .*raw pickles are not loaded"):
        check_tensor_file(path)


# --- the fuzz ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(READERS))
@settings(FUZZ, max_examples=200)
@given(data=st.data())
def test_CONF_FILES_fuzz_every_reader_loads_or_refuses_in_one_line(tmp_path, kind, data):
    """[CONF-FILES] Hostile files of each kind: loaded, or refused with one line naming the file;
    any other exception, a message on two lines or not naming the file fails (outcome)."""
    if kind in TORCH_KINDS:
        pytest.importorskip("torch")
    path = write(tmp_path / "fuzz", kind, data.draw(files(kind), label="file"))
    outcome(kind, path)


def test_CONF_FILES_the_valid_file_of_each_kind_loads(tmp_path):
    from helpers.hostile_files import valid

    for kind in sorted(READERS):
        if kind in TORCH_KINDS:
            pytest.importorskip("torch")
        assert outcome(kind, write(tmp_path / kind, kind, valid(kind))) == "loaded", kind


def test_CONF_FILES_json_values_strategy_is_json():
    """The fuzz's random values are JSON (NaN and infinities as Python writes them)."""
    @given(value=json_values)
    def check(value):
        json.loads(json.dumps(value))

    check()


def test_limits_are_the_documented_ones():
    """specs/conformance.md [CONF-FILES] states these numbers."""
    from pathlib import Path

    spec = (Path(__file__).resolve().parent.parent / "specs" / "conformance.md").read_text()
    assert (_files.MAX_DEPTH, _files.MAX_CONTAINERS) == (64, 2**20)
    assert "at most 64 levels of nesting and 2^20 objects and arrays" in spec
    assert _files.BATCH_ELEMENTS == 4_194_304 and "4,194,304 elements" in spec
    assert (_files.BATCH_NPZ_BYTES, _files.BATCH_JSON_BYTES, _files.BATCH_MEMBERS) == (256 * 2**20, 32 * 2**20, 1024)
    assert (_files.RUN_FILE_BYTES, _files.RUN_LOG_LINE_BYTES, _files.RUN_LOG_BYTES) == (16 * 2**20, 16 * 2**20, 2**30)
    assert (_files.TASK_LINE_BYTES, _files.TASK_BYTES, _files.TENSOR_MEMBERS) == (64 * 2**20, 4 * 2**30, 2**20)
