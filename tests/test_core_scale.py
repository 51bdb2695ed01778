"""The core is vectorised: it runs on 64 x 4096 tokens quickly, and its source holds no
Python loop over arrays (issue 2: "no Python loop over responses or tokens")."""

from __future__ import annotations

import ast
import re
import time
from pathlib import Path

import numpy as np
import pytest

import espo_ref
from espo_ref import ESPOConfig

CORE = Path(espo_ref.__file__).parent
CORE_FILES = ("grouping", "clipping", "ratio", "advantage", "objective", "_segments", "entropy", "_checks")
HIDDEN_LOOPS = ("vectorize", "frompyfunc", "apply_along_axis", "apply_over_axes")
# Comprehensions that iterate over something other than responses or tokens: the axes of an
# array, the index of the first bad element (for an error message), the config's edges.
ALLOWED_ITERABLES = (
    re.compile(r"^range\(\w+\.ndim\)$"),
    re.compile(r"^np\.argwhere\(.*\)\[0\]$", re.S),
    re.compile(r"entropy_edges"),
)


def _loops(path: Path) -> list[str]:
    src = path.read_text()
    found = []
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            found.append(f"{path.name}:{node.lineno} {type(node).__name__}")
        elif isinstance(node, (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
            for gen in node.generators:
                it = ast.get_source_segment(src, gen.iter)
                if not any(p.search(it) for p in ALLOWED_ITERABLES):
                    found.append(f"{path.name}:{node.lineno} comprehension over {it!r}")
        elif isinstance(node, ast.Attribute) and node.attr in HIDDEN_LOOPS:
            found.append(f"{path.name}:{node.lineno} np.{node.attr} (a Python loop in disguise)")
    return found


@pytest.mark.parametrize("name", CORE_FILES)
def test_core_source_has_no_python_loop_over_arrays(name):
    path = CORE / f"{name}.py"
    assert path.exists(), f"core file {path} is missing"
    loops = _loops(path)
    assert not loops, "the numpy core must be vectorised; found: " + "; ".join(loops)


def test_loop_detector_finds_loops(tmp_path):
    """The detector itself: a for loop, a comprehension over tokens and np.vectorize are found."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import numpy as np\n"
        "def f(x):\n"
        "    for row in x:\n        pass\n"
        "    y = [v * 2 for v in x]\n"
        "    return np.vectorize(abs)(x)\n"
    )
    assert len(_loops(bad)) == 3
    ok = tmp_path / "ok.py"
    ok.write_text("def f(x, c):\n    return [1 for a in range(x.ndim)], [e for e in c.entropy_edges]\n")
    assert _loops(ok) == []


@pytest.mark.parametrize("grouping", ["top_fraction", "batch_top_fraction", "token"])
def test_espo_loss_runs_on_64_x_4096(grouping):
    rng = np.random.default_rng(0)
    B, T = 64, 4096
    cfg = ESPOConfig(vocab_size=151936, grouping=grouping)
    lengths = rng.integers(0, T + 1, size=B)
    mask = np.arange(T)[None, :] < lengths[:, None]
    mask[0] = True
    old_logp = -rng.exponential(1.0, size=(B, T))
    logp = old_logp + rng.normal(0.0, 0.05, size=(B, T))
    entropy = rng.uniform(0.0, cfg.log_vocab, size=(B, T))
    adv = rng.normal(size=B)
    start = time.perf_counter()
    result = espo_ref.espo_loss(logp, old_logp, entropy, mask, adv, cfg)
    elapsed = time.perf_counter() - start
    assert np.isfinite(result.loss) and result.grad.shape == (B, T)
    assert result.metrics["tokens"] == float(mask.sum())
    assert elapsed < 10.0, f"espo_loss on {B} x {T} took {elapsed:.2f} s: not vectorised?"
