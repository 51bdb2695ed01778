"""Random espo_loss batches for the torch-vs-numpy tests, in the dtype under test.

``batches(dtype)`` draws a padded batch over every ESPOConfig option (empty and length-1
rows, entropy ties with 0.0 and -0.0, edge values, large and small log-ratios, NaN padding)
whose float values are those the torch side will see; ``run_numpy`` / ``run_torch`` run
both backends on it. Needs torch (the test modules importorskip it first).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st

import espo_ref as core
import espo_ref.torch as et

from .masks import random_mask

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device"))]
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges", "none", "token")
SPLIT_GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges")
TOP_FRACTIONS = (0.2, 0.1, 0.28, 0.5, 1.0, 1 / 3, 0.30000000000000004, 0.01)
EDGE_SETS = ((0.5,), (0.25, 0.75), (0.1, 0.5, 0.9), (0.3, 0.31))
VOCABS = (2, 16, 151936)
FIXED_EPS = ((3e-4, 4e-4), (0.2, 0.28), (0.0, 0.0))


# ------------------------------------------------------------------ strategies


@st.composite
def configs(draw, grouping=None, **fixed):
    """An ESPOConfig over every option of [ESPO-CONFIG]."""
    grouping = grouping or draw(st.sampled_from(GROUPINGS), label="grouping")
    kw = dict(vocab_size=draw(st.sampled_from(VOCABS), label="vocab_size"), grouping=grouping,
              alpha=draw(st.sampled_from((0.02, 0.1, 0.0, 1.0)), label="alpha"),
              top_fraction=draw(st.sampled_from(TOP_FRACTIONS), label="top_fraction"),
              ratio_form=draw(st.sampled_from(("gspo_token", "literal")), label="ratio_form"),
              eps_reading=draw(st.sampled_from(("group_mean", "token_over_groups")), label="eps_reading"),
              clip=draw(st.sampled_from(("adaptive", "fixed")), label="clip"),
              log_ratio_clamp=draw(st.sampled_from((10.0, 1.0, None)), label="log_ratio_clamp"))
    if kw["clip"] == "fixed":
        kw["eps_low"], kw["eps_high"] = draw(st.sampled_from(FIXED_EPS), label="fixed_eps")
    if grouping == "entropy_ranges":
        kw["entropy_edges"] = draw(st.sampled_from(EDGE_SETS), label="entropy_edges")
    if grouping in SPLIT_GROUPINGS:
        kw["drop_low_group"] = draw(st.booleans(), label="drop_low_group")
    kw.update(fixed)
    return core.ESPOConfig(**kw)


@st.composite
def batches(draw, dtype="float64", grouping=None, per_token_adv=None, **fixed):
    """A padded batch: shapes with empty and length-1 rows, entropy ties (0.0 and -0.0 among
    them), edge values, large and small log-ratios, clamped groups, NaN padding."""
    config = draw(configs(grouping, **fixed), label="config")
    B = draw(st.integers(1, 6), label="B")
    T = draw(st.integers(1, 14), label="T")
    seed = draw(st.integers(0, 2**32 - 1), label="seed")
    rng = np.random.default_rng(seed)
    mask = random_mask(draw, rng, B, T)
    log_v = config.log_vocab
    entropy_kind = draw(st.sampled_from(("ties", "continuous", "edges")), label="entropy_kind")
    if entropy_kind == "ties":
        pool = np.array([0.0, -0.0, 0.5 * log_v, 0.25 * log_v, log_v, -5e-5, log_v + 5e-5])
        entropy = rng.choice(pool, (B, T))
    elif entropy_kind == "edges":
        cuts = np.array(list(config.entropy_edges) + [0.5, 0.2]) * log_v
        entropy = rng.choice(np.concatenate([cuts, np.nextafter(cuts, 0), np.nextafter(cuts, 99)]), (B, T))
    else:
        entropy = rng.uniform(0.0, log_v, (B, T))
    scale = draw(st.sampled_from((1e-4, 1e-2, 0.3, 3.0, 30.0)), label="log_ratio_scale")
    if config.log_ratio_clamp is None and dtype != "float64":
        scale = min(scale, 3.0)  # keep exp() of float32 finite without a clamp
    logp = rng.uniform(-8.0, 0.0, (B, T))
    old_logp = logp - rng.normal(0.0, scale, (B, T)) - rng.normal(0.0, scale, (B, 1))
    if per_token_adv is None:
        per_token_adv = draw(st.booleans(), label="per_token_adv")
    shape = (B, T) if per_token_adv else (B,)
    adv = rng.choice(np.array([-1.5, -0.3, 0.0, 0.7, 2.0, rng.normal()]), shape)
    torch_dtype = DTYPES[dtype]
    # the values the torch side will see, given to both sides
    logp = torch.tensor(logp).to(torch_dtype).double().numpy()
    old_logp = torch.tensor(old_logp).to(torch_dtype).double().numpy()
    if dtype == "bfloat16":  # entropy stays float32 (a bfloat16 entropy could leave its range)
        entropy = entropy.astype(np.float32).astype(np.float64)
    elif dtype == "float32":
        entropy = entropy.astype(np.float32).astype(np.float64)
    for arr in (logp, old_logp, entropy):
        arr[~mask] = np.nan
    return dict(logp=logp, old_logp=old_logp, entropy=entropy, mask=mask, advantages=adv,
                config=config, dtype=dtype)


def to_torch(batch, device, requires_grad=True):
    dtype = DTYPES[batch["dtype"]]
    ent_dtype = torch.float64 if batch["dtype"] == "float64" else torch.float32
    logp = torch.tensor(batch["logp"], dtype=dtype, device=device, requires_grad=requires_grad)
    return dict(logp=logp,
                old_logp=torch.tensor(batch["old_logp"], dtype=dtype, device=device),
                entropy=torch.tensor(batch["entropy"], dtype=ent_dtype, device=device),
                mask=torch.tensor(batch["mask"], device=device),
                advantages=torch.tensor(batch["advantages"], dtype=dtype, device=device))


def run_numpy(batch):
    return core.espo_loss(batch["logp"], batch["old_logp"], batch["entropy"], batch["mask"],
                          batch["advantages"], batch["config"])


def run_torch(batch, device, validate=True):
    args = to_torch(batch, device)
    result = et.espo_loss(args["logp"], args["old_logp"], args["entropy"], args["mask"],
                          args["advantages"], batch["config"], validate=validate)
    result.loss.backward()
    return result, args["logp"].grad


def host(x):
    return x.detach().cpu().to(torch.float64).numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
