"""espo_ref.torch.token_logprobs_and_entropy[_from_logits] [ESPO-ENT]: chunked and fused paths.

Expected values come from a separate float64 oracle (full logits, ``torch.log_softmax``,
autograd) and, for the entropy, from the numpy core's ``token_entropy``; never from the
code under test. Tolerances: rows ("torch-logprob" | "triton-logprob", dtype, kind) of
espo_ref.tolerances. Gradients are compared relative to their tensor's scale (both sides
divided by max|want|), see the rows' comment.

The Triton path runs on CUDA when present, else under the Triton interpreter
(TRITON_INTERPRET=1) on CPU tensors with tiny shapes; it is skipped when triton is missing.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

import espo_ref  # noqa: E402
from espo_ref.errors import ESPOInputError  # noqa: E402
from espo_ref.torch import logprob_entropy as le  # noqa: E402
from espo_ref.torch.logprob_entropy import token_logprobs_and_entropy, token_logprobs_and_entropy_from_logits  # noqa: E402,E501

from espo_ref.tolerances import TOLERANCES  # noqa: E402
from helpers.asserts import assert_close, on_host  # noqa: E402

CLAUSE = "[ESPO-ENT]"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _has_triton() -> bool:
    try:
        return importlib.util.find_spec("triton") is not None
    except (ImportError, ValueError):  # e.g. sys.modules["triton"] = None
        return False


HAS_TRITON = _has_triton()
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MAX_LOGIT = 100.0  # the value rows hold for |z| <= 100; larger examples are rejected, not tolerated


# --------------------------------------------------------------------------- helpers


def naive_f64(hidden, weight, bias, targets, temperature):
    """Oracle: float64 full logits of the (already rounded) inputs, log_softmax, autograd-ready leaves."""
    h = hidden.detach().cpu().double().requires_grad_()
    w = weight.detach().cpu().double().requires_grad_()
    b = bias.detach().cpu().double().requires_grad_() if bias is not None else None
    z = h @ w.T
    if b is not None:
        z = z + b
    logsm = torch.log_softmax(z / temperature, dim=-1)
    logp = logsm.gather(1, targets.cpu()[:, None])[:, 0]
    return logp, z.detach().numpy(), (h, w, b)


def check(got, want, backend, dtype, kind, what, repro):
    """assert_close on the table's row (backend, dtype, kind); gradients relative to max|want|, as
    the table's logprob rows say."""
    got, want = on_host(got).astype(np.float64), on_host(want).astype(np.float64)
    if kind == "grad":
        scale = float(np.max(np.abs(want))) if want.size else 0.0
        # relative to a scale in float32's normal range: a denormal gradient (weights ~1e-45) has
        # no relative precision left, and is compared absolutely (it is 0 within atol)
        if scale >= float(np.finfo(np.float32).tiny):
            got, want = got / scale, want / scale
    assert_close(got, want, (backend, dtype, kind), "ESPO-ENT", f"{what} ({backend}, {dtype}, {kind})",
                 f"\n  repro: {repro}")


def make_inputs(n, h, v, dtype, kind, scale, with_bias, seed, device=DEVICE):
    """hidden [n, h], weight [v, h], bias [v] or None, targets [n]; logits of std ~ ``scale``.

    kind: "normal" (Gaussian logits), "flat" (zero weight: uniform distribution, plus the
    bias if any), "peaked" (each row points at one vocabulary row: a logit ~scale above the
    rest; half of the targets are that row).
    """
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    if kind == "flat":
        weight.zero_()
    elif kind == "peaked":
        weight = weight / weight.norm(dim=1, keepdim=True)
        spike = torch.randint(0, v, (n,), generator=g)
        hidden = scale * weight[spike] + 0.1 * hidden / math.sqrt(h)
    else:
        weight = weight * scale / math.sqrt(h)
    bias = torch.randn(v, generator=g, dtype=torch.float64) if with_bias else None
    targets = torch.randint(0, v, (n,), generator=g)
    if kind == "peaked":
        targets = torch.where(torch.rand(n, generator=g) < 0.5, spike, targets)
    conv = lambda x: x.to(dtype).to(device) if x is not None else None  # noqa: E731
    return conv(hidden), conv(weight), conv(bias), targets.to(device)


def bf16_gradients_conditioned(z64, targets, temperature, grad_out, hidden, weight, bias, want) -> bool:
    """Whether each bf16 gradient is well above its rounding bound. The bf16 rows of the
    tolerance table model the error as ``onehot - p`` rounded to bf16 (relative 2^-9) before
    the products; a gradient whose terms cancel to less than that bound times ``2 / rtol``
    (n = 1, v = 3: terms of +-1 summing to -0.07) cannot meet the table's rtol and is not a
    case of the kernel's accuracy but of the example's."""
    z = z64 / temperature
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    onehot = np.zeros_like(p)
    onehot[np.arange(len(p)), targets.cpu().numpy()] = 1.0
    a = np.abs(onehot - p) * np.abs(grad_out.numpy())[:, None] / temperature  # [n, v]
    bounds = [a @ np.abs(on_host(weight).astype(np.float64)), a.T @ np.abs(on_host(hidden).astype(np.float64))]
    if bias is not None:
        bounds.append(a.sum(axis=0))
    rtol = TOLERANCES[("torch-logprob", "bfloat16", "grad")].rtol
    for bound, w in zip(bounds, want):
        scale = float(np.max(np.abs(w.numpy()))) if w.numel() else 0.0
        if scale > 0 and 2.0 ** -9 * float(bound.max()) > 0.5 * rtol * scale:
            return False
    return True


def run_case(impl, dtype_name, n, h, v, chunk, temperature, kind, scale, with_bias, seed, hypothesis_draw=False):
    dtype = DTYPES[dtype_name]
    hidden, weight, bias, targets = make_inputs(n, h, v, dtype, kind, scale, with_bias, seed)
    want_logp, z64, leaves = naive_f64(hidden, weight, bias, targets, temperature)
    largest = float(np.abs(z64 / temperature).max(initial=0.0))
    if hypothesis_draw:
        assume(largest <= MAX_LOGIT)  # ill-conditioned for the value rows: rejected, not tolerated
    else:
        assert largest <= MAX_LOGIT, f"table case has |z| = {largest} > {MAX_LOGIT}"
    backend = f"{impl}-logprob"
    repro = (f"run_case({impl!r}, {dtype_name!r}, n={n}, h={h}, v={v}, chunk={chunk}, temperature={temperature!r}, "
             f"kind={kind!r}, scale={scale!r}, with_bias={with_bias}, seed={seed})")
    for x in (hidden, weight, bias):
        if x is not None:
            x.requires_grad_(True)
    logp, entropy = token_logprobs_and_entropy(hidden, weight, targets, temperature, bias=bias,
                                               chunk_size=chunk, impl=impl)
    assert logp.dtype == torch.float32 and entropy.dtype == torch.float32, repro
    assert logp.shape == (n,) and entropy.shape == (n,), repro
    assert not entropy.requires_grad, f"{CLAUSE} entropy must be detached; {repro}"
    check(logp, want_logp, backend, dtype_name, "value", "logp", repro)
    check(entropy, espo_ref.token_entropy(z64, temperature), backend, dtype_name, "value", "entropy", repro)
    grad_out = torch.randn(n, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    inputs = [x for x in (hidden, weight, bias) if x is not None]
    got = torch.autograd.grad(logp, inputs, grad_out.to(logp.dtype).to(logp.device))
    want = torch.autograd.grad(want_logp, [x for x in leaves if x is not None], grad_out)
    if hypothesis_draw and dtype_name == "bfloat16":
        # rejected, not tolerated: a gradient whose terms cancel below the bf16 rounding of onehot - p
        assume(bf16_gradients_conditioned(z64, targets, temperature, grad_out, hidden, weight, bias, want))
    for name, g, w in zip(("hidden", "weight", "bias"), got, want):
        assert g.dtype == dtype, f"grad {name} dtype {g.dtype}; {repro}"
        check(g, w, backend, dtype_name, "grad", f"d logp / d {name}", repro)


def run_drawn_case(data, impl, max_n, max_h, max_v, chunks=None):
    """``run_case`` on a drawn case: shape up to (max_n, max_h, max_v), chunk size from
    ``chunks`` (None: the path's own), temperature, logits kind and scale, bias, dtype, seed."""
    n = data.draw(st.integers(1, max_n), label="n")
    h = data.draw(st.integers(1, max_h), label="h")
    v = data.draw(st.integers(1, max_v), label="v")
    chunk = None if chunks is None else data.draw(chunks, label="chunk")
    temperature = data.draw(st.floats(0.25, 4.0), label="temperature")
    kind = data.draw(st.sampled_from(["normal", "flat", "peaked"]), label="kind")
    scale = data.draw(st.floats(0.0, 30.0), label="scale")
    with_bias = data.draw(st.booleans(), label="with_bias")
    dtype_name = data.draw(st.sampled_from(list(DTYPES)), label="dtype")
    seed = data.draw(st.integers(0, 2**31 - 1), label="seed")
    run_case(impl, dtype_name, n, h, v, chunk, temperature, kind, scale, with_bias, seed, hypothesis_draw=True)


# Shapes whose N, H and V are not multiples of the chunk or of the Triton tiles (16).
SHAPES = [  # (n, h, v, chunk)
    (1, 3, 7, None),
    (13, 8, 7, 4),
    (37, 24, 130, 5),
    (21, 16, 1000, 8),
]
CASES = [  # (kind, scale, temperature, with_bias)
    ("normal", 3.0, 1.0, False),
    ("normal", 5.0, 0.7, True),
    ("flat", 0.0, 1.3, False),
    ("flat", 0.0, 1.0, True),
    ("peaked", 40.0, 1.0, False),
    ("peaked", 25.0, 0.5, True),
]


# --------------------------------------------------------------------------- torch path


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "n{}-h{}-v{}-c{}".format(*s))
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}-s{c[1]}-T{c[2]}-{'bias' if c[3] else 'nobias'}")
def test_token_logprobs_and_entropy_torch(dtype_name, shape, case):
    n, h, v, chunk = shape
    kind, scale, temperature, with_bias = case
    run_case("torch", dtype_name, n, h, v, chunk, temperature, kind, scale, with_bias, seed=n * 1000 + v)


@given(data=st.data())
def test_token_logprobs_and_entropy_torch_random(data):
    run_drawn_case(data, "torch", 40, 40, 300, chunks=st.one_of(st.none(), st.integers(1, 50)))


def test_token_logprobs_and_entropy_float64_gradcheck():
    """Finite differences (float64) through the chunked forward and the vocabulary-sliced backward."""
    hidden, weight, bias, targets = make_inputs(9, 5, 23, torch.float64, "normal", 3.0, True, seed=7)
    want_logp, z64, _ = naive_f64(hidden, weight, bias, targets, 0.8)
    logp, entropy = token_logprobs_and_entropy(hidden, weight, targets, 0.8, bias=bias, chunk_size=4, impl="torch")
    assert logp.dtype == torch.float64
    check(logp, want_logp, "torch-logprob", "float64", "value", "logp", "float64 gradcheck case")
    check(entropy, espo_ref.token_entropy(z64, 0.8), "torch-logprob", "float64", "value", "entropy", "float64")
    leaves = [x.detach().clone().requires_grad_() for x in (hidden, weight, bias)]
    assert torch.autograd.gradcheck(
        lambda h, w, b: token_logprobs_and_entropy(h, w, targets, 0.8, bias=b, chunk_size=4, impl="torch")[0],
        leaves)


def test_token_logprobs_and_entropy_without_entropy():
    hidden, weight, bias, targets = make_inputs(11, 6, 50, torch.float32, "normal", 4.0, True, seed=3)
    both = token_logprobs_and_entropy(hidden, weight, targets, bias=bias, chunk_size=3, impl="torch")
    logp, entropy = token_logprobs_and_entropy(hidden, weight, targets, bias=bias, chunk_size=3,
                                               with_entropy=False, impl="torch")
    assert entropy is None
    assert torch.equal(logp, both[0])


def test_token_logprobs_and_entropy_chunk_invariance():
    """Every chunk size gives the same values (row chunks are independent) up to float32 rounding."""
    hidden, weight, bias, targets = make_inputs(17, 8, 97, torch.float32, "normal", 5.0, True, seed=5)
    ref = token_logprobs_and_entropy(hidden, weight, targets, bias=bias, chunk_size=17, impl="torch")
    for chunk in (1, 2, 5, 16, 100):
        got = token_logprobs_and_entropy(hidden, weight, targets, bias=bias, chunk_size=chunk, impl="torch")
        for a, b in zip(got, ref):
            check(a, b, "torch-logprob", "float32", "value", f"chunk {chunk} vs 17", f"chunk={chunk}")


def test_token_logprobs_and_entropy_empty_and_single_item():
    w = torch.randn(5, 4)
    logp, ent = token_logprobs_and_entropy(torch.zeros(0, 4), w, torch.zeros(0, dtype=torch.long), impl="torch")
    assert logp.shape == (0,) and ent.shape == (0,)
    logp, ent = token_logprobs_and_entropy(torch.randn(3, 4), torch.randn(1, 4), torch.zeros(3, dtype=torch.long),
                                           impl="torch")
    assert torch.equal(logp, torch.zeros(3)) and torch.equal(ent, torch.zeros(3)), f"{CLAUSE} V=1: p=1, e=0"


def test_default_chunk_size():
    assert le.default_chunk_size(151_936) == 1728  # 1 GiB of float32 logits, multiple of 64
    assert 1728 * 151_936 * 4 <= 1 << 30
    assert le.default_chunk_size(1 << 40) == 1
    assert le.default_chunk_size(10) == (1 << 30) // 40 - ((1 << 30) // 40) % 64


# --------------------------------------------------------------------------- memory


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (an upper bound on one allocation)."""

    def __init__(self):
        super().__init__()
        self.largest, self.op = 0, None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.numel() > self.largest:
                self.largest, self.op = t.numel(), func
        return out


MEM_N, MEM_H, MEM_V, MEM_CHUNK = 512, 8, 4096, 16  # N x V = 2M elements, chunk x V = 64k


def test_largest_tensor_helper_sees_naive_logits():
    """The helper itself: the naive path makes an [N, V] tensor and it is seen."""
    hidden, weight, _, targets = make_inputs(MEM_N, MEM_H, MEM_V, torch.float32, "normal", 2.0, False, 0, "cpu")
    with LargestTensor() as mode:
        torch.log_softmax(hidden @ weight.T, dim=-1).gather(1, targets[:, None])
    assert mode.largest == MEM_N * MEM_V


def test_token_logprobs_and_entropy_memory_torch():
    """[ESPO-ENT] no op makes a tensor beyond max(chunk x V, V x H, N x H) and nothing [N, V] is saved for backward."""
    hidden, weight, bias, targets = make_inputs(MEM_N, MEM_H, MEM_V, torch.float32, "normal", 2.0, True, 0, "cpu")
    for x in (hidden, weight, bias):
        x.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), LargestTensor() as mode:
        logp, entropy = token_logprobs_and_entropy(hidden, weight, targets, 0.9, bias=bias, chunk_size=MEM_CHUNK,
                                                   impl="torch")
        logp.sum().backward()
    bound = max(MEM_CHUNK * MEM_V, MEM_V * MEM_H, MEM_N * MEM_H)
    assert mode.largest <= bound, f"{CLAUSE} an op ({mode.op}) made {mode.largest} elements > {bound}"
    assert saved, "saved_tensors_hooks saw nothing: the check would be vacuous"
    too_big = [s for s in saved if math.prod(s) > max(MEM_V * MEM_H, MEM_N * MEM_H)]
    assert not too_big, f"{CLAUSE} tensors saved for backward larger than the inputs: {too_big}"


def test_token_logprobs_and_entropy_from_logits_memory():
    logits = torch.randn(MEM_N, MEM_V, requires_grad=True)
    targets = torch.randint(0, MEM_V, (MEM_N,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t), LargestTensor() as m:
        logp, _ = token_logprobs_and_entropy_from_logits(logits, targets, 1.1, chunk_size=MEM_CHUNK)
        logp.sum().backward()
    # the only [N, V] tensors: the input logits (saved, not copied) and its gradient
    assert m.largest == MEM_N * MEM_V
    assert sum(math.prod(t.shape) == MEM_N * MEM_V for t in saved) == 1
    assert any(t is logits for t in saved)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for allocator statistics")
@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_token_logprobs_and_entropy_memory_cuda(impl):
    """Peak extra CUDA memory of forward + backward stays far below the N x V float32 logits."""
    if impl == "triton" and not HAS_TRITON:
        pytest.skip("triton not installed")
    n, h, v, chunk = 8192, 256, 32768, 512
    hidden, weight, _, targets = make_inputs(n, h, v, torch.bfloat16, "normal", 3.0, False, 0)
    hidden.requires_grad_(True)
    weight.requires_grad_(True)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    logp, _ = token_logprobs_and_entropy(hidden, weight, targets, chunk_size=chunk, impl=impl)
    logp.sum().backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    grads = hidden.grad.numel() * 2 + weight.grad.numel() * 2
    budget = 3 * chunk * v * 4 + n * h * 4 + grads  # z, p / g for one chunk, [N, H] float32 accumulator
    assert extra <= budget < n * v * 4 / 2, f"{CLAUSE} {impl}: peak extra {extra} B > {budget} B (N x V x 4 = {n * v * 4})"


# --------------------------------------------------------------------------- from logits


@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n,v,chunk,temperature", [(1, 1, None, 1.0), (13, 7, 4, 0.6), (37, 130, 5, 1.0), (9, 1000, 7, 2.5)])
def test_token_logprobs_and_entropy_from_logits(dtype_name, n, v, chunk, temperature):
    g = torch.Generator().manual_seed(n + v)
    z64 = 6.0 * torch.randn(n, v, generator=g, dtype=torch.float64)
    logits = z64.to(DTYPES[dtype_name]).to(DEVICE).requires_grad_()
    targets = torch.randint(0, v, (n,), generator=g).to(DEVICE)
    z64 = logits.detach().cpu().double().requires_grad_()
    want = torch.log_softmax(z64 / temperature, -1).gather(1, targets.cpu()[:, None])[:, 0]
    logp, entropy = token_logprobs_and_entropy_from_logits(logits, targets, temperature, chunk_size=chunk)
    repro = f"from_logits dtype={dtype_name} n={n} v={v} chunk={chunk} T={temperature}"
    check(logp, want, "torch-logprob", dtype_name, "value", "logp", repro)
    check(entropy, espo_ref.token_entropy(z64.detach().numpy(), temperature), "torch-logprob", dtype_name, "value",
          "entropy", repro)
    grad_out = torch.randn(n, generator=g, dtype=torch.float64)
    (got,) = torch.autograd.grad(logp, logits, grad_out.float().to(DEVICE))
    (exp,) = torch.autograd.grad(want, z64, grad_out)
    assert got.dtype == logits.dtype
    check(got, exp, "torch-logprob", dtype_name, "grad", "d logp / d logits", repro)


def test_token_logprobs_and_entropy_from_logits_neg_inf():
    """[ESPO-ENT] -inf is a vocabulary item of probability zero; entropy and gradient stay finite."""
    logits = torch.tensor([[0.0, -math.inf, 1.0, 2.0], [-math.inf, 3.0, -math.inf, -math.inf]], requires_grad=True)
    targets = torch.tensor([2, 1])
    logp, entropy = token_logprobs_and_entropy_from_logits(logits, targets, chunk_size=1)
    want_e = espo_ref.token_entropy(logits.detach().numpy())
    check(entropy, want_e, "torch-logprob", "float32", "value", "entropy with -inf logits", "neg-inf case")
    assert logp[1].item() == 0.0 and entropy[1].item() == 0.0
    logp.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1].item() == 0.0


def test_token_logprobs_and_entropy_from_logits_gradcheck():
    z = torch.randn(6, 11, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, 11, (6,))
    assert torch.autograd.gradcheck(lambda x: token_logprobs_and_entropy_from_logits(x, t, 1.7, chunk_size=4)[0], (z,))


# --------------------------------------------------------------------------- validation [ESPO-INPUT]


def _good():
    return dict(hidden=torch.randn(4, 3), weight=torch.randn(5, 3), targets=torch.tensor([0, 1, 4, 2]))


BAD_CALLS = [  # (id, overrides, argument named in the message)
    ("hidden-1d", dict(hidden=torch.randn(3)), "hidden"),
    ("hidden-int", dict(hidden=torch.ones(4, 3, dtype=torch.int64)), "hidden"),
    ("hidden-nan", dict(hidden=torch.tensor([[0.0, math.nan, 0.0]] * 4)), "hidden"),
    ("weight-width", dict(weight=torch.randn(5, 2)), "weight"),
    ("weight-dtype", dict(weight=torch.randn(5, 3, dtype=torch.float64)), "weight"),
    ("weight-inf", dict(weight=torch.full((5, 3), math.inf)), "weight"),
    ("targets-float", dict(targets=torch.tensor([0.0, 1.0, 2.0, 3.0])), "targets"),
    ("targets-shape", dict(targets=torch.tensor([0, 1])), "targets"),
    ("targets-high", dict(targets=torch.tensor([0, 1, 5, 2])), "targets"),
    ("targets-negative", dict(targets=torch.tensor([0, -1, 4, 2])), "targets"),
    ("temperature-zero", dict(temperature=0.0), "temperature"),
    ("temperature-inf", dict(temperature=math.inf), "temperature"),
    ("temperature-bool", dict(temperature=True), "temperature"),
    ("bias-shape", dict(bias=torch.randn(4)), "bias"),
    ("bias-nan", dict(bias=torch.tensor([0.0, 0.0, math.nan, 0.0, 0.0])), "bias"),
    ("chunk-zero", dict(chunk_size=0), "chunk_size"),
    ("chunk-float", dict(chunk_size=2.0), "chunk_size"),
    ("with-entropy-int", dict(with_entropy=1), "with_entropy"),
    ("impl-unknown", dict(impl="cuda"), "impl"),
]


@pytest.mark.parametrize("overrides,name", [c[1:] for c in BAD_CALLS], ids=[c[0] for c in BAD_CALLS])
def test_token_logprobs_and_entropy_rejects(overrides, name):
    kwargs = {**_good(), **overrides}
    with pytest.raises(ESPOInputError, match=name):
        token_logprobs_and_entropy(**kwargs)


@pytest.mark.parametrize("logits,name", [
    (torch.tensor([[0.0, math.nan]]), "logits"),
    (torch.tensor([[0.0, math.inf]]), "logits"),
    (torch.tensor([[-math.inf, -math.inf]]), "logits"),
    (torch.zeros(2), "logits"),
])
def test_token_logprobs_and_entropy_from_logits_rejects(logits, name):
    with pytest.raises(ESPOInputError, match=name):
        token_logprobs_and_entropy_from_logits(logits, torch.zeros(logits.shape[0], dtype=torch.long))


def test_impl_auto_is_torch_on_cpu():
    assert le._choose_impl("auto", torch.device("cpu")) == "torch"


# --------------------------------------------------------------------------- Triton path


@pytest.fixture(scope="module")
def triton_path():
    """The Triton module: real kernels on CUDA, else loaded under the interpreter (CPU tensors)."""
    if not HAS_TRITON:
        pytest.skip("triton not installed")
    old = os.environ.get("TRITON_INTERPRET")
    if DEVICE == "cuda":
        mod = le._triton_module()
    else:
        # the interpreter reads the variable when a kernel is defined and again when it runs
        os.environ["TRITON_INTERPRET"] = "1"
        mod = importlib.import_module("espo_ref.torch._triton_logprob")
        if not mod.INTERPRET:
            mod = importlib.reload(mod)
    previous = le._TRITON
    le._TRITON = mod
    yield mod
    le._TRITON = previous
    if DEVICE != "cuda":
        if old is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = old


TRITON_CASES = [  # (dtype, shape, case): tiny under the interpreter
    ("float32", (37, 24, 130, 5), CASES[1]),
    ("bfloat16", (37, 24, 130, 5), CASES[1]),
    ("float32", (13, 8, 7, 4), CASES[2]),
    ("bfloat16", (21, 16, 100, 8), CASES[4]),
    ("float32", (19, 40, 150, 6), CASES[5]),
    ("bfloat16", (1, 3, 7, None), CASES[0]),
]


@pytest.mark.parametrize("dtype_name,shape,case", TRITON_CASES,
                         ids=[f"{d}-n{s[0]}-h{s[1]}-v{s[2]}-{c[0]}" for d, s, c in TRITON_CASES])
def test_token_logprobs_and_entropy_triton(triton_path, dtype_name, shape, case):
    n, h, v, chunk = shape
    kind, scale, temperature, with_bias = case
    run_case("triton", dtype_name, n, h, v, chunk, temperature, kind, scale, with_bias, seed=n * 1000 + v)


def test_token_logprobs_and_entropy_triton_matches_torch(triton_path):
    """Both paths on one input: the fused online log-sum-exp equals the chunked one."""
    hidden, weight, bias, targets = make_inputs(29, 20, 200, torch.float32, "normal", 6.0, True, seed=11)
    a = token_logprobs_and_entropy(hidden, weight, targets, 1.2, bias=bias, chunk_size=7, impl="torch")
    b = token_logprobs_and_entropy(hidden, weight, targets, 1.2, bias=bias, impl="triton")
    for x, y, what in zip(a, b, ("logp", "entropy")):
        check(y, x, "triton-logprob", "float32", "value", f"triton vs torch {what}", "matches_torch")


@settings(max_examples=8)
@given(data=st.data())
def test_token_logprobs_and_entropy_triton_random(triton_path, data):
    small = DEVICE == "cpu"
    run_drawn_case(data, "triton", 24 if small else 300, 24 if small else 200, 150 if small else 3000)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_token_logprobs_and_entropy_triton_gpu_tiles(triton_path):
    """GPU tile sizes (128 x 128 x 64, vocabulary slices of 2048) on shapes spanning several tiles."""
    run_case("triton", "bfloat16", 2500, 300, 5000, None, 0.9, "normal", 6.0, True, seed=1)  # 20 row blocks: 3 groups
    run_case("triton", "float32", 333, 130, 4100, None, 1.0, "peaked", 30.0, False, seed=2)
