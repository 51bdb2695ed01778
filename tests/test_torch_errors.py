"""[ESPO-INPUT] Every bad input raises ESPOInputError with the numpy core's message, word for
word, from the torch backend (a table: one row per bad input, the same values given to
both backends)."""

from __future__ import annotations

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import espo_ref as core  # noqa: E402
import espo_ref.torch as et  # noqa: E402
from espo_ref.errors import ESPOInputError  # noqa: E402

from helpers.asserts import error_messages  # noqa: E402

CFG = core.ESPOConfig(vocab_size=16)
B, T = 3, 4


def good():
    rng = np.random.default_rng(0)
    logp = rng.uniform(-3, 0, (B, T))
    mask = np.ones((B, T), dtype=bool)
    mask[2, 2:] = False
    return dict(logp=logp, old_logp=logp - 0.01, entropy=rng.uniform(0, 2, (B, T)), mask=mask,
                advantages=np.array([1.0, -0.5, 0.3]))


def with_(**changes):
    out = good()
    for key, fn in changes.items():
        out[key] = fn(out[key])
    return out


def put(idx, value):
    def fn(a):
        a = np.array(a, dtype=np.result_type(a, type(value)) if not isinstance(value, float) else a.dtype)
        a[idx] = value
        return a
    return fn


LOSS_CASES = {
    "logp_1d": with_(logp=lambda a: a[0]),
    "logp_bool": with_(logp=lambda a: a > -1),
    "logp_complex": with_(logp=lambda a: a.astype(np.complex128)),
    "logp_object": with_(logp=lambda a: a.astype(object)),
    "old_logp_shape": with_(old_logp=lambda a: a[:, :2]),
    "old_logp_bool": with_(old_logp=lambda a: a > -1),
    "mask_shape": with_(mask=lambda a: a[:2]),
    "mask_int_2": with_(mask=lambda a: np.where(np.arange(T) == 3, 2, a.astype(np.int64))),
    "mask_float_half": with_(mask=lambda a: np.where(np.arange(T) == 1, 0.5, a.astype(np.float32))),
    "mask_nan": with_(mask=lambda a: np.where(np.arange(T) == 0, np.nan, a.astype(np.float64))),
    "mask_complex": with_(mask=lambda a: a.astype(np.complex64)),
    "logp_nan": with_(logp=put((1, 2), np.nan)),
    "logp_inf": with_(logp=put((0, 0), -np.inf)),
    "old_logp_inf": with_(old_logp=put((2, 1), np.inf)),
    "entropy_nan": with_(entropy=put((0, 3), np.nan)),
    "entropy_negative": with_(entropy=put((1, 1), -1e-3)),
    "entropy_above_log_v": with_(entropy=put((1, 0), np.log(16) + 1e-3)),
    "entropy_shape": with_(entropy=lambda a: a[:, :3]),
    "entropy_1d": with_(entropy=lambda a: a[0]),
    "advantages_length": with_(advantages=lambda a: a[:2]),
    "advantages_2d_shape": with_(advantages=lambda a: np.ones((B, T + 1))),
    "advantages_3d": with_(advantages=lambda a: np.ones((B, T, 1))),
    "advantages_nan_response": with_(advantages=put(1, np.nan)),
    "advantages_nan_token": with_(advantages=lambda a: np.where(np.arange(T) == 2, np.nan, np.ones((B, T)))),
    "advantages_bool": with_(advantages=lambda a: a > 0),
    "no_response_token": with_(mask=lambda a: np.zeros_like(a)),
}


def tensor(x, device):
    arr = np.asarray(x)
    if arr.dtype.kind in "OUS":
        return arr  # torch cannot hold it: the backend is given the numpy array
    return torch.from_numpy(np.ascontiguousarray(arr)).to(device)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", sorted(LOSS_CASES))
def test_ESPO_INPUT_torch_espo_loss_error_messages_equal_numpy(case, device):
    """[ESPO-INPUT] espo_loss: same error type and message as the core for each bad input."""
    a = LOSS_CASES[case]
    got, want = error_messages(
        lambda: core.espo_loss(a["logp"], a["old_logp"], a["entropy"], a["mask"], a["advantages"], CFG),
        lambda: et.espo_loss(*(tensor(a[k], device) for k in ("logp", "old_logp", "entropy", "mask", "advantages")),
                             CFG))
    assert got == want


def test_ESPO_INPUT_and_ESPO_RATIO_CLAMP_torch_config_and_overflow_errors_equal_numpy():
    """[ESPO-INPUT] [ESPO-RATIO-CLAMP] a non-config, and a float64 ratio that overflows
    without a clamp, give the core's messages."""
    a = good()
    args = [a[k] for k in ("logp", "old_logp", "entropy", "mask", "advantages")]
    targs = [torch.from_numpy(x) for x in args]
    assert error_messages(lambda: core.espo_loss(*args, {"vocab_size": 16}),
                          lambda: et.espo_loss(*targs, {"vocab_size": 16}))[0].startswith("config must be")
    got, want = error_messages(lambda: core.espo_loss(*args, {"vocab_size": 16}),
                               lambda: et.espo_loss(*targs, {"vocab_size": 16}))
    assert got == want
    big = with_(old_logp=lambda x: x - 800.0)
    cfg = CFG.replace(log_ratio_clamp=None)
    args = [big[k] for k in ("logp", "old_logp", "entropy", "mask", "advantages")]
    got, want = error_messages(lambda: core.espo_loss(*args, cfg),
                               lambda: et.espo_loss(*(torch.from_numpy(x) for x in args), cfg))
    assert got == want and "overflows float64" in got


def test_ESPO_RATIO_CLAMP_torch_float32_overflow_names_float32():
    """[ESPO-RATIO-CLAMP] without a clamp, a float32 ratio overflows near exp(88.7) where the
    float64 core would not: the backend raises the core's message naming float32."""
    a = with_(old_logp=lambda x: x - 100.0)
    args = [torch.from_numpy(a[k]).float() for k in ("logp", "old_logp", "entropy")]
    with pytest.raises(ESPOInputError, match="overflows float32 at response position"):
        et.espo_loss(*args, torch.from_numpy(a["mask"]), torch.from_numpy(a["advantages"]),
                     CFG.replace(log_ratio_clamp=None))


def test_ESPO_INPUT_torch_component_error_messages_equal_numpy():
    """[ESPO-INPUT] [ESPO-GROUP] [ESPO-CLIP] [ESPO-RATIO] [ESPO-ENT] [ESPO-ADV]
    [ESPO-GROUP-TOPFRAC] the building blocks' checks, message for message."""
    a = good()
    g = core.entropy_groups(a["entropy"], a["mask"], CFG)
    t = {k: torch.from_numpy(np.asarray(v)) for k, v in a.items()}
    tg = torch.from_numpy(g)
    rows = [
        (lambda: core.entropy_groups(a["entropy"], a["mask"] * 3, CFG),
         lambda: et.entropy_groups(t["entropy"], t["mask"].long() * 3, CFG)),
        (lambda: core.entropy_groups(a["entropy"], a["mask"], None),
         lambda: et.entropy_groups(t["entropy"], t["mask"], None)),
        (lambda: core.high_group_size(np.array([3, -1]), 0.2),
         lambda: et.high_group_size(torch.tensor([3, -1]), 0.2)),
        (lambda: core.high_group_size(np.array([3.0]), 0.2),
         lambda: et.high_group_size(torch.tensor([3.0], dtype=torch.float64), 0.2)),
        (lambda: core.high_group_size(np.array([3]), 1.5),
         lambda: et.high_group_size(torch.tensor([3]), 1.5)),
        (lambda: core.group_clip_eps(a["entropy"], g.astype(float), CFG),
         lambda: et.group_clip_eps(t["entropy"], tg.double(), CFG)),
        (lambda: core.group_clip_eps(a["entropy"], g[:, :2], CFG),
         lambda: et.group_clip_eps(t["entropy"], tg[:, :2], CFG)),
        (lambda: core.group_clip_eps(a["entropy"], g - 2, CFG),
         lambda: et.group_clip_eps(t["entropy"], tg - 2, CFG)),
        (lambda: core.group_clip_eps(np.where(g == 0, np.inf, a["entropy"]), g, CFG),
         lambda: et.group_clip_eps(torch.where(tg == 0, torch.inf, t["entropy"]), tg, CFG)),
        (lambda: core.group_log_ratio(a["logp"], a["old_logp"][:2], g),
         lambda: et.group_log_ratio(t["logp"], t["old_logp"][:2], tg)),
        (lambda: core.group_log_ratio(np.where(g == 1, np.nan, a["logp"]), a["old_logp"], g),
         lambda: et.group_log_ratio(torch.where(tg == 1, torch.nan, t["logp"]), t["old_logp"], tg)),
        (lambda: core.token_entropy(np.ones((2, 3), dtype=bool)),
         lambda: et.token_entropy(torch.ones(2, 3, dtype=torch.bool))),
        (lambda: core.token_entropy(np.ones((2, 0))), lambda: et.token_entropy(torch.ones(2, 0))),
        (lambda: core.token_entropy(np.ones((2, 3)), 0.0), lambda: et.token_entropy(torch.ones(2, 3), 0.0)),
        (lambda: core.token_entropy(np.array([[0.0, np.nan], [1.0, 2.0]])),
         lambda: et.token_entropy(torch.tensor([[0.0, np.nan], [1.0, 2.0]]))),
        (lambda: core.token_entropy(np.array([[0.0, 1.0], [-np.inf, -np.inf]])),
         lambda: et.token_entropy(torch.tensor([[0.0, 1.0], [-np.inf, -np.inf]]))),
        (lambda: core.grpo_advantages(np.ones(3), np.zeros(2, dtype=int)),
         lambda: et.grpo_advantages(torch.ones(3), torch.zeros(2, dtype=torch.int64))),
        (lambda: core.grpo_advantages(np.ones(3), np.zeros(3)),
         lambda: et.grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.float64))),
        (lambda: core.grpo_advantages(np.ones(3), np.zeros(3, dtype=int), np.array([1, 2, 0])),
         lambda: et.grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.int64), torch.tensor([1, 2, 0]))),
        (lambda: core.grpo_advantages(np.ones(3), np.zeros(3, dtype=int), ddof=2),
         lambda: et.grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.int64), ddof=2)),
        (lambda: core.grpo_advantages(np.ones(3), np.zeros(3, dtype=int), eps=-1.0),
         lambda: et.grpo_advantages(torch.ones(3), torch.zeros(3, dtype=torch.int64), eps=-1.0)),
        (lambda: core.grpo_advantages(np.array([1.0, np.nan, 0.0]), np.zeros(3, dtype=int)),
         lambda: et.grpo_advantages(torch.tensor([1.0, np.nan, 0.0], dtype=torch.float64),
                                    torch.zeros(3, dtype=torch.int64))),
    ]
    for i, (fn_numpy, fn_torch) in enumerate(rows):
        got, want = error_messages(fn_numpy, fn_torch)
        assert got == want, f"row {i}"


def test_ESPO_INPUT_torch_accepts_and_rejects_what_numpy_does():
    """[ESPO-INPUT] [ESPO-ENT] [ESPO-GROUP-TOPFRAC] [ESPO-ADV] issue 12: the torch backend
    rejects exactly what the core rejects, word for word. A 0-d numpy input stays 0-d (it
    became shape (1,), so ``token_entropy(np.float64(3.0))`` returned 0 and a scalar advantage
    passed with B = 1), and a non-finite top_fraction is an ESPOInputError, not a Fraction
    error."""
    a = good()
    one = {k: v[:1] for k, v in a.items()}
    t1 = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in one.items()}
    scalar = np.float64(0.5)
    rows = [
        (lambda: core.token_entropy(np.float64(3.0)), lambda: et.token_entropy(np.float64(3.0))),
        (lambda: core.token_entropy(np.array(3.0)), lambda: et.token_entropy(np.array(3.0))),
        (lambda: core.espo_loss(one["logp"], one["old_logp"], one["entropy"], one["mask"], scalar, CFG),
         lambda: et.espo_loss(t1["logp"], t1["old_logp"], t1["entropy"], t1["mask"], scalar, CFG)),
        (lambda: core.grpo_loss(one["logp"], one["old_logp"], one["mask"], np.array(0.5)),
         lambda: et.grpo_loss(t1["logp"], t1["old_logp"], t1["mask"], np.array(0.5))),
        (lambda: core.grpo_advantages(np.float64(1.0), np.int64(0)),
         lambda: et.grpo_advantages(np.float64(1.0), np.int64(0))),
        (lambda: core.high_group_size(np.array([3]), math.nan), lambda: et.high_group_size(torch.tensor([3]), math.nan)),
        (lambda: core.high_group_size(np.array([3]), math.inf), lambda: et.high_group_size(torch.tensor([3]), math.inf)),
        (lambda: core.high_group_size(np.array([3]), "0.2"), lambda: et.high_group_size(torch.tensor([3]), "0.2")),
        (lambda: core.token_entropy(np.ones((1, 2)), np.True_), lambda: et.token_entropy(torch.ones(1, 2), np.True_)),
    ]
    for i, (fn_numpy, fn_torch) in enumerate(rows):
        got, want = error_messages(fn_numpy, fn_torch)
        assert got == want, f"row {i}: torch {got!r} != numpy {want!r}"
    # a 0-d length is accepted by both, with the same value
    assert int(et.high_group_size(np.int64(5), 0.2)) == int(core.high_group_size(np.int64(5), 0.2)) == 1


def test_ESPO_CONFIG_torch_accepts_numpy_scalars_as_numbers():
    """[ESPO-CONFIG] numpy integers and floats are accepted by the torch functions wherever
    the core accepts Python numbers, with the core's values."""
    x = np.array([[0.0, 1.0, 2.0], [3.0, -np.inf, 0.5]])
    assert torch.equal(et.token_entropy(torch.tensor(x), np.float32(0.5)), et.token_entropy(torch.tensor(x), 0.5))
    assert et.high_group_size(torch.tensor([5, 25]), np.float64(0.28)).tolist() == [2, 7]
    r, ids = torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64), torch.tensor([0, 0, 0])
    assert torch.equal(et.grpo_advantages(r, ids, ddof=np.int64(0), eps=np.float32(0.0)),
                       et.grpo_advantages(r, ids, ddof=0, eps=0.0))
    h = torch.randn(3, 4, dtype=torch.float64)
    w = torch.randn(5, 4, dtype=torch.float64)
    tok = torch.tensor([0, 1, 4])
    lp_a, e_a = et.token_logprobs_and_entropy(h, w, tok, temperature=np.float32(0.5), chunk_size=np.int64(2))
    lp_b, e_b = et.token_logprobs_and_entropy(h, w, tok, temperature=0.5, chunk_size=2)
    assert torch.equal(lp_a, lp_b) and torch.equal(e_a, e_b)


@pytest.mark.parametrize("backend", ["numpy", "torch"])
@pytest.mark.parametrize("argument", ["logp", "old_logp", "entropy", "mask", "advantages"])
def test_ESPO_INPUT_a_meta_tensor_is_an_error_naming_the_argument(backend, argument):
    """A tensor on the meta device (a shape without data) is refused naming its argument, in both
    backends and in every loss that takes it (torch's own error names nothing)."""
    import espo_ref as core_module
    import espo_ref.torch as torch_module
    from espo_ref.baselines import GSPOConfig

    B, T = 2, 3
    args = {"logp": torch.zeros(B, T), "old_logp": torch.zeros(B, T), "entropy": torch.zeros(B, T),
            "mask": torch.ones(B, T, dtype=torch.bool), "advantages": torch.zeros(B)}
    args[argument] = torch.empty_like(args[argument], device="meta")
    module = torch_module if backend == "torch" else core_module
    with pytest.raises(core_module.ESPOInputError, match=rf"^{argument} "):
        module.espo_loss(*args.values(), core_module.ESPOConfig(vocab_size=10))
    if argument != "entropy":
        losses = torch_module if backend == "torch" else core_module.baselines
        with pytest.raises(core_module.ESPOInputError, match=rf"^{argument} "):
            losses.gspo_loss(args["logp"], args["old_logp"], args["mask"], args["advantages"], GSPOConfig())
