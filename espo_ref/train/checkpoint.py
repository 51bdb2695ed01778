"""Checkpoints: model, optimizer, RNG states, data position and config, written atomically.

A checkpoint is a folder ``checkpoints/step-NNNNNN/`` holding ``weights.pt`` (model
state_dict), ``optimizer.pt``, ``rng.pt`` (torch RNG states) and ``state.json`` (step,
data position, Python and numpy RNG states, the run's config). The folder is written under
a temporary name and renamed into place; then ``checkpoints/latest.json`` (written
atomically) points at it. A reader therefore sees the previous checkpoint or the new one,
never a part. Tensors are read back with ``torch.load(..., weights_only=True)``: nothing
is unpickled but tensors and plain containers.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from .._io import write_atomic

LATEST = "latest.json"


def _save_tensor_file(obj, path: Path) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())


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
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = ckpt_dir / step_dir_name(step)
    tmp = ckpt_dir / f".{final.name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        host_rng, tensor_rng = rng_states()
        _save_tensor_file({k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, tmp / "weights.pt")
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
        kept = sorted((p for p in ckpt_dir.glob("step-*") if p.is_dir()), key=lambda p: p.name)
        for old in kept[:-keep]:
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir) -> Path | None:
    pointer = Path(ckpt_dir) / LATEST
    if not pointer.exists():
        return None
    path = Path(ckpt_dir) / json.loads(pointer.read_text())["path"]
    if not path.is_dir():
        raise FileNotFoundError(f"{pointer} points at {path}, which does not exist")
    return path


def load_checkpoint(path, map_location="cpu") -> dict:
    """{'state': state.json, 'weights', 'optimizer', 'rng'} of a checkpoint folder."""
    path = Path(path)
    load = lambda name: torch.load(path / name, map_location=map_location, weights_only=True)
    return {"state": json.loads((path / "state.json").read_text()), "weights": load("weights.pt"),
            "optimizer": load("optimizer.pt"), "rng": load("rng.pt"), "path": path}


def load_weights(path, map_location="cpu") -> dict:
    """A model state_dict from a ``.pt`` file (weights_only) or a checkpoint folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "weights.pt"
    return torch.load(path, map_location=map_location, weights_only=True)
