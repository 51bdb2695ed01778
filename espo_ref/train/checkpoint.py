"""Checkpoints: model, optimizer, RNG states, data position and config, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding ``weights.pt`` (model
state_dict), ``optimizer.pt``, ``rng.pt`` (torch RNG states) and ``state.json`` (step,
data position, Python and numpy RNG states, the run's config). The folder is written under
a temporary name and renamed into place; then ``checkpoints/latest.json`` (written
atomically) points at it. A reader therefore sees the previous checkpoint or the new one,
never a part. Tensors are read back with ``torch.load(..., weights_only=True)``: nothing
is unpickled but tensors and plain containers, and only from a file ``check_tensor_file``
accepted (a zip whose members are stored uncompressed and fit in the file). ``latest.json``
and ``state.json`` are read with their size and nesting bounded, and ``state.json``'s step,
RNG states, config and summary are checked for their types before anything uses them
[CONF-FILES].

Safety: ``latest.json`` may only name a ``step-NNNNNN`` folder inside the same
``checkpoints/`` folder; a temporary folder ``.step-NNNNNN.tmp-PID`` left by a process
killed while it wrote a checkpoint is removed on the next start or resume of the run
(``remove_stale_temp``), never one of a process that is still alive. A write that fails
(a full disk) raises ``CheckpointWriteError`` naming the path and the cause; the previous
checkpoint stays the latest.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from .._files import RUN_FILE_BYTES, FileError, check_tensor_file, json_type, read_json_object
from .._io import write_atomic
from .errors import CheckpointWriteError, TrainInputError, describe_os_error, os_error_in

LATEST = "latest.json"
STEP_DIR = re.compile(r"step-\d{6,}")
TEMP_DIR = re.compile(r"\.step-\d{6,}\.tmp-(\d+)")


def _writer(path: Path):
    """The file a tensor file is written through (a seam for the disk-full test)."""
    return open(path, "wb")


def _save_tensor_file(obj, path: Path) -> None:
    with _writer(path) as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


def cpu_state_dict(model) -> dict:
    """The model's weights as CPU tensors of their own (what a weights file holds)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def save_weights(model, path) -> Path:
    """The model's state_dict as one tensor file, written atomically: a temporary file in the
    same folder, flushed to disk, then renamed onto ``path`` (the warm-start file several runs
    start from). Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        _save_tensor_file(cpu_state_dict(model), tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def rng_states() -> tuple[dict, dict]:
    """(JSON-able Python/numpy RNG states, torch RNG state tensors)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    host = {"python": [version, list(internal), gauss],
            "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]}
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["cuda"] = torch.cuda.get_rng_state_all()
    return host, tensors


def restore_rng(host: dict, tensors: dict) -> None:
    version, internal, gauss = host["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = host["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(tensors["cuda"])


def step_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def save_checkpoint(ckpt_dir, step: int, model, optimizer, config_dict: dict, state: dict | None = None,
                    keep: int = 2) -> Path:
    """Write the checkpoint of ``step`` atomically, point latest.json at it, and keep the
    newest ``keep`` checkpoints (0: keep all)."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / step_dir_name(step)
    try:
        return _save_checkpoint(ckpt_dir, final, step, model, optimizer, config_dict, state, keep)
    except (OSError, RuntimeError) as e:
        cause = os_error_in(e)
        if cause is None:
            raise
        try:
            last = latest_checkpoint(ckpt_dir)
        except TrainInputError:
            last = None
        kept = f"the last good checkpoint is {last}" if last else "no checkpoint was written before"
        raise CheckpointWriteError(f"cannot write checkpoint {final}: {describe_os_error(cause)}; {kept}") from e


def _save_checkpoint(ckpt_dir: Path, final: Path, step, model, optimizer, config_dict, state, keep) -> Path:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        host_rng, tensor_rng = rng_states()
        _save_tensor_file(cpu_state_dict(model), tmp / "weights.pt")
        _save_tensor_file(optimizer.state_dict() if optimizer is not None else {}, tmp / "optimizer.pt")
        _save_tensor_file(tensor_rng, tmp / "rng.pt")
        record = {"step": step, "data_position": step, "rng": host_rng, "config": config_dict, **(state or {})}
        write_atomic(tmp / "state.json", json.dumps(record, indent=1, sort_keys=True) + "\n")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_atomic(ckpt_dir / LATEST, json.dumps({"step": step, "path": final.name}) + "\n")
    if keep:
        kept = sorted((p for p in ckpt_dir.iterdir() if STEP_DIR.fullmatch(p.name) and p.is_dir()
                       and not p.is_symlink()), key=lambda p: int(p.name[len("step-"):]))
        for old in kept[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    except OSError:
        return True  # unknown: keep the folder
    return True


def remove_stale_temp(ckpt_dir) -> list[Path]:
    """Remove the temporary checkpoint folders ``.step-NNNNNN.tmp-PID`` of processes that
    are no longer alive (a kill during a checkpoint write leaves one, as large as a
    checkpoint). Nothing else is touched. Returns the folders removed."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    removed = []
    for entry in sorted(ckpt_dir.iterdir()):
        found = TEMP_DIR.fullmatch(entry.name)
        if not found or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(found.group(1))
        if pid != os.getpid() and _alive(pid):
            continue  # a live process may be writing it
        shutil.rmtree(entry)
        removed.append(entry)
    return removed


def latest_checkpoint(ckpt_dir) -> Path | None:
    """The checkpoint folder ``latest.json`` points at, or None without a latest.json. The
    pointer must name a ``step-NNNNNN`` folder directly inside ``ckpt_dir`` (TrainInputError
    otherwise: nothing outside the run's checkpoints folder is followed)."""
    ckpt_dir = Path(ckpt_dir)
    pointer = ckpt_dir / LATEST
    if not pointer.exists():
        return None
    try:
        name = read_json_object(pointer, max_bytes=RUN_FILE_BYTES, what="a checkpoint pointer")["path"]
    except FileError as e:
        raise TrainInputError(f"{pointer}: not a checkpoint pointer ({e.reason})") from None
    except KeyError as e:
        raise TrainInputError(f"{pointer}: not a checkpoint pointer (KeyError: {e})") from None
    if not isinstance(name, str) or not STEP_DIR.fullmatch(name):
        raise TrainInputError(f"{pointer}: 'path' must name a step-NNNNNN folder inside {ckpt_dir}, got {name!r}; "
                              f"refusing to follow it")
    path = ckpt_dir / name
    if path.is_symlink() or path.resolve().parent != ckpt_dir.resolve():
        raise TrainInputError(f"{pointer} points at {path}, which leads outside {ckpt_dir}; refusing to follow it")
    if not path.is_dir():
        raise TrainInputError(f"{pointer} points at {path}, which does not exist")
    return path


def _load_tensors(path: Path, map_location):
    """torch.load with weights_only=True; a file that holds anything but tensors and plain
    containers, or is not a torch file, is a TrainInputError naming it."""
    import warnings

    try:
        check_tensor_file(path)
    except FileError as e:
        raise TrainInputError(str(e)) from None
    try:
        with warnings.catch_warnings():  # torch warns about a raw pickle's protocol before refusing it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:
        raise TrainInputError(f"{path}: cannot read ({e.strerror or e})") from e
    except pickle.UnpicklingError as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        found = next((line for line in lines if "GLOBAL" in line), None)
        if found is not None:  # a pickle that would call or build something: refused, never run
            raise TrainInputError(f"{path}: refused: the file holds objects other than tensors "
                                  f"({found.rstrip('.')}); only plain tensor files are loaded (weights_only)") from e
        after = [lines[i + 1] for i, line in enumerate(lines[:-1]) if "WeightsUnpickler error" in line]
        detail = after[0] if after else (lines[0] if lines else type(e).__name__)
        raise TrainInputError(f"{path}: not a torch tensor file ({detail})") from e
    except Exception as e:  # a file that is not a torch file: KeyError, RuntimeError, EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise TrainInputError(f"{path}: not a torch tensor file ({type(e).__name__}: {first})") from e


def load_checkpoint(path, map_location="cpu") -> dict:
    """{'state': state.json, 'weights', 'optimizer', 'rng'} of a checkpoint folder, each checked
    for what it must hold (a state_dict, an optimizer's state_dict, the RNG state tensors)."""
    path = Path(path)
    loaded = {"state": load_state(path), "weights": load_weights(path, map_location),
              "optimizer": _load_tensors(path / "optimizer.pt", map_location),
              "rng": _load_tensors(path / "rng.pt", map_location), "path": path}
    optimizer = loaded["optimizer"]
    if not isinstance(optimizer, dict) or not {"state", "param_groups"} <= set(optimizer):
        raise TrainInputError(f"{path / 'optimizer.pt'}: not an optimizer's state_dict (a dict with 'state' and "
                              f"'param_groups'), got {type(optimizer).__name__}")
    rng, want = loaded["rng"], torch.get_rng_state()
    torch_state = rng.get("torch") if isinstance(rng, dict) else None
    if not isinstance(torch_state, torch.Tensor) or torch_state.dtype != want.dtype or \
            torch_state.shape != want.shape:
        raise TrainInputError(f"{path / 'rng.pt'}: not the RNG states of a checkpoint ('torch': a {want.dtype} "
                              f"tensor of shape {tuple(want.shape)})")
    cuda = rng.get("cuda", [])
    if not isinstance(cuda, (list, tuple)) or not all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8
                                                       for t in cuda):
        raise TrainInputError(f"{path / 'rng.pt'}: 'cuda' must be a list of uint8 RNG state tensors")
    return loaded


def _uint32s(value, n: int) -> bool:
    return isinstance(value, list) and len(value) == n and all(type(v) is int and 0 <= v < 2**32 for v in value)


def _number(value) -> bool:
    return type(value) in (int, float) and abs(value) < float("inf")


def check_rng_state(host) -> str | None:
    """What is wrong with the Python and numpy RNG states of a state.json (None: nothing), as
    ``rng_states`` writes them and ``restore_rng`` restores them."""
    if not isinstance(host, dict) or set(host) != {"python", "numpy"}:
        return f"must be an object with 'python' and 'numpy', got {json_type(host)}" + (
            f" with {sorted(host)}" if isinstance(host, dict) else "")
    python = host["python"]
    if not (isinstance(python, list) and len(python) == 3 and python[0] == 3 and type(python[0]) is int
            and _uint32s(python[1], 625) and python[1][-1] <= 624 and (python[2] is None or _number(python[2]))):
        return "'python' must be [3, 625 ints in [0, 2**32) (the last <= 624), null or a number] (random.getstate)"
    numpy = host["numpy"]
    if not (isinstance(numpy, list) and len(numpy) == 5 and numpy[0] == "MT19937" and _uint32s(numpy[1], 624)
            and type(numpy[2]) is int and 0 <= numpy[2] <= 624 and numpy[3] in (0, 1) and type(numpy[3]) is int
            and _number(numpy[4])):
        return "'numpy' must be ['MT19937', 624 ints in [0, 2**32), an int in [0, 624], 0 or 1, a number] " \
               "(numpy.random.get_state)"
    return None


def load_state(path) -> dict:
    """[CONF-FILES] A checkpoint's state.json (step, RNG states, the run's config), without its
    tensors: its size and nesting bounded, and each field of the type the trainer uses (step an
    int >= 0, the RNG states as rng_states writes them, config and summary objects)."""
    state_file = Path(path) / "state.json"
    try:
        state = read_json_object(state_file, max_bytes=RUN_FILE_BYTES, what="a checkpoint's state.json")
    except FileError as e:
        raise TrainInputError(str(e)) from None
    if not isinstance(state.get("config"), dict) or "step" not in state:
        raise TrainInputError(f"{state_file}: not a checkpoint state (no 'step' and 'config')")
    step = state["step"]
    if type(step) is not int or step < 0:
        raise TrainInputError(str(FileError(state_file, f"must be an int >= 0, got {json_type(step)} {step!r}"[:200],
                                            "step")))
    problem = check_rng_state(state.get("rng"))
    if problem:
        raise TrainInputError(str(FileError(state_file, problem, "rng")))
    if not isinstance(state.get("summary", {}), dict):
        raise TrainInputError(str(FileError(state_file, f"must be an object, got {json_type(state['summary'])}",
                                            "summary")))
    return state


def load_weights(path, map_location="cpu") -> dict:
    """A model state_dict from a ``.pt`` file (weights_only) or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    weights = _load_tensors(path, map_location)
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise TrainInputError(f"{path}: not a state_dict (a dict of tensors), got {type(weights).__name__}")
    return weights
