"""ESPO loss, default options only, written by an outsider from specs/ only.

Sources: specs/ESPO.md ([ESPO-CONFIG], [ESPO-ENT-DOMAIN], [ESPO-GROUP-TOPFRAC], [ESPO-CLIP],
[ESPO-RATIO], [ESPO-RATIO-TOKEN], [ESPO-RATIO-CLAMP], [ESPO-CLIPMASK], [ESPO-AGG],
[ESPO-INPUT]) and specs/conformance.md. No code of espo_ref/ was read. Options other than the
defaults (grouping=top_fraction, eps_reading=group_mean, ratio_form=gspo_token,
clip=adaptive, drop_low_group=False, finite log_ratio_clamp) raise NotImplementedError.
"""
import math
import numbers
from fractions import Fraction

import torch


def _num(x):
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)


def _check_config(c):
    def bad(field, why):
        raise ValueError(f"config.{field}={getattr(c, field, None)!r}: {why}")
    V = c.vocab_size
    if not isinstance(V, numbers.Integral) or isinstance(V, bool) or V < 2:
        bad("vocab_size", "must be an int >= 2")
    for f in ("alpha", "eps_low", "eps_high", "entropy_tolerance"):
        if not _num(getattr(c, f)) or getattr(c, f) < 0:
            bad(f, "must be finite and >= 0")
    if not _num(c.top_fraction) or not 0 < c.top_fraction <= 1:
        bad("top_fraction", "must be in (0, 1]")
    edges = tuple(c.entropy_edges)
    if any(not _num(e) or not 0 < e < 1 for e in edges) or any(
            a >= b for a, b in zip(edges, edges[1:])):
        bad("entropy_edges", "must be strictly increasing, each in (0, 1)")
    choices = {"grouping": ("top_fraction", "batch_top_fraction", "entropy_ranges", "none",
                            "token"), "clip": ("adaptive", "fixed"),
               "eps_reading": ("group_mean", "token_over_groups"),
               "ratio_form": ("gspo_token", "literal")}
    for f, ok in choices.items():
        if getattr(c, f) not in ok:
            bad(f, f"must be one of {ok}")
    if not isinstance(c.drop_low_group, bool):
        bad("drop_low_group", "must be a bool")
    if c.grouping == "entropy_ranges" and not edges:
        bad("entropy_edges", "must be non-empty for grouping=entropy_ranges")
    if c.drop_low_group and c.grouping in ("none", "token"):
        bad("drop_low_group", "needs a grouping with an entropy split")
    lrc = c.log_ratio_clamp
    if lrc is not None and (not _num(lrc) or lrc <= 0):
        bad("log_ratio_clamp", "must be finite > 0 or None")
    for f, default in (("grouping", "top_fraction"), ("clip", "adaptive"),
                       ("eps_reading", "group_mean"), ("ratio_form", "gspo_token"),
                       ("drop_low_group", False)):
        if getattr(c, f) != default:
            raise NotImplementedError(f"option {f}={getattr(c, f)!r} is not implemented")
    if lrc is None:
        raise NotImplementedError("option log_ratio_clamp=None is not implemented")


def _check_finite(name, x, mask):
    bad = mask & ~torch.isfinite(x)
    if bad.any():
        pos = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}: non-finite value {x[pos].item()} at response position {pos}")


def _high_group_size(L, rho):
    """n_high = clamp(ceil(rho L), 1, L), exactly on the decimal value of rho; 0 when L = 0."""
    fr = Fraction(repr(float(rho)))
    p, q = fr.numerator, fr.denominator
    if p * max(int(L.max()), 1) + q < 2 ** 62:          # exact in int64
        n = (p * L + q - 1) // q
    else:                                                 # exact in Python ints, per distinct L
        u, inv = torch.unique(L, return_inverse=True)
        n = torch.tensor([-(-p * int(l) // q) for l in u.tolist()], dtype=torch.int64)[inv]
    return torch.minimum(torch.clamp(n, min=1), L) * (L > 0)


def espo_loss(logp, old_logp, entropy, mask, advantages, config):
    _check_config(config)
    if logp.dim() != 2:
        raise ValueError(f"logp must be 2-D [B, T], got shape {tuple(logp.shape)}")
    for name, x in (("old_logp", old_logp), ("entropy", entropy), ("mask", mask)):
        if tuple(x.shape) != tuple(logp.shape):
            raise ValueError(f"{name} shape {tuple(x.shape)} does not match logp {tuple(logp.shape)}")
    if advantages.dim() not in (1, 2) or tuple(advantages.shape) not in (
            tuple(logp.shape[:1]), tuple(logp.shape)):
        raise ValueError(f"advantages must be [B] or [B, T], got {tuple(advantages.shape)}")
    for name, x in (("logp", logp), ("old_logp", old_logp), ("entropy", entropy),
                    ("advantages", advantages)):
        if x.dtype == torch.bool or x.is_complex() or not x.is_floating_point():
            raise ValueError(f"{name}: dtype {x.dtype} is not a real floating dtype")
    if mask.dtype != torch.bool:
        notbin = (mask != 0) & (mask != 1)
        if notbin.any():
            pos = tuple(int(i) for i in notbin.nonzero()[0])
            raise ValueError(f"mask: value {mask[pos].item()} at {pos} is neither 0 nor 1")
        mask = mask != 0
    adv = advantages if advantages.dim() == 2 else advantages[:, None].expand_as(logp)
    for name, x in (("logp", logp), ("old_logp", old_logp), ("entropy", entropy),
                    ("advantages", adv)):
        _check_finite(name, x, mask)
    if not mask.any():
        raise ValueError("mask: the batch has no response token")
    logV, tol = math.log(config.vocab_size), float(config.entropy_tolerance)
    e64 = entropy.detach().double()
    out = mask & ((e64 < -tol) | (e64 > logV + tol))
    if out.any():
        pos = tuple(int(i) for i in out.nonzero()[0])
        raise ValueError(f"entropy {e64[pos].item()} at response position {pos} is outside "
                         f"[-{tol}, log V + {tol}] (log V = {logV})")

    dt = torch.float64 if logp.dtype == torch.float64 else torch.float32   # [CONF-COMPARE]
    zero = torch.zeros((), dtype=dt, device=logp.device)
    lp = torch.where(mask, logp.to(dt), zero)                 # padding -> 0 before arithmetic
    olp = torch.where(mask, old_logp.detach().to(dt), zero)
    ent = torch.where(mask, entropy.detach().to(dt), zero).clamp(min=0)   # [ESPO-ENT-DOMAIN]
    A = torch.where(mask, adv.detach().to(dt), zero)

    # [ESPO-GROUP-TOPFRAC]: stable descending rank, earlier position first on ties
    L = mask.sum(1)
    n_high = _high_group_size(L, config.top_fraction)
    key = torch.where(mask, ent, torch.full_like(ent, -math.inf))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices
    T = logp.shape[1]
    rank = torch.empty_like(order).scatter_(
        1, order, torch.arange(T, device=logp.device).expand_as(order).contiguous())
    high = mask & (rank < n_high[:, None])
    low = mask & ~high
    K = high.any(1).to(dt) + low.any(1).to(dt)

    def per_group(x):  # group mean of x broadcast to each token of the group
        hm, lm = high.to(dt), low.to(dt)
        mh = (x * hm).sum(1) / hm.sum(1).clamp(min=1)
        ml = (x * lm).sum(1) / lm.sum(1).clamp(min=1)
        return torch.where(high, mh[:, None], torch.where(low, ml[:, None], zero))

    size = torch.where(high, high.sum(1, keepdim=True), low.sum(1, keepdim=True)).to(dt)
    eps = config.alpha * per_group(ent) / logV                # [ESPO-CLIP]
    log_s = per_group(lp.detach() - olp)                      # [ESPO-RATIO], unclamped
    c = float(config.log_ratio_clamp)
    clamped = mask & (log_s > c)                              # strictly above binds
    tok = torch.where(clamped, zero, lp - lp.detach())        # [ESPO-RATIO-TOKEN]
    v = torch.exp(log_s.clamp(max=c)) * torch.exp(tok)        # value s, d/dlogp_t = s
    # [ESPO-CLIPMASK] strict inequalities; the clipped branch is constant
    ch = mask & (A > 0) & (v.detach() > 1 + eps)
    cl = mask & (A < 0) & (v.detach() < 1 - eps)
    sur = torch.where(ch, (1 + eps) * A, torch.where(cl, (1 - eps) * A, v * A))
    N = (L > 0).sum().to(dt)                                  # [ESPO-AGG]
    w = torch.where(mask, 1.0 / (N * K[:, None] * size.clamp(min=1)), zero)
    return -(w * torch.where(mask, sur, zero)).sum()
