"""Loop-based plain-Python oracles of specs/baselines.md, one per clause family.

Written from the spec text, token by token, with the math module only: no numpy
vectorisation and nothing imported from espo_ref, so that the oracle never shares code
with the implementation it checks. Inputs are lists of lists; configs are read by
attribute (any object with the fields of the spec's config table).
"""

from __future__ import annotations

import math


def positions(mask):
    return [(b, t) for b, row in enumerate(mask) for t, m in enumerate(row) if m]


def lengths(mask):
    return [sum(1 for m in row if m) for row in mask]


def weights(mask, mode, max_len=None):
    """[BASE-AGG] [BASE-AGG-EMPTY] w_t per token, 0 on padding."""
    L = lengths(mask)
    n_tok = sum(L)
    n = sum(1 for x in L if x > 0)
    M = len(mask[0]) if max_len is None else max_len
    w = [[0.0] * len(row) for row in mask]
    for b, t in positions(mask):
        if mode == "token-mean":
            w[b][t] = 1.0 / n_tok
        elif mode == "seq-mean-token-mean":
            w[b][t] = 1.0 / (n * L[b])
        elif mode == "seq-mean-token-sum":
            w[b][t] = 1.0 / n
        elif mode == "seq-mean-token-sum-norm":
            w[b][t] = 1.0 / (n * M)
        else:
            raise ValueError(mode)
    return w


def agg(per_token, mask, mode, max_len=None):
    w = weights(mask, mode, max_len)
    return sum(w[b][t] * per_token[b][t] for b, t in positions(mask))


def _zeros(mask, value=0.0):
    return [[value] * len(row) for row in mask]


def _out(mask):
    return {
        "loss": 0.0,
        "grad": _zeros(mask),
        "ratio": _zeros(mask),
        "high": _zeros(mask, False),
        "low": _zeros(mask, False),
        "clamped": _zeros(mask, False),
    }


def _fractions(out, mask):
    n_tok = len(positions(mask))
    high = sum(1 for b, t in positions(mask) if out["high"][b][t])
    low = sum(1 for b, t in positions(mask) if out["low"][b][t])
    out["clipfrac_high"] = high / n_tok
    out["clipfrac_low"] = low / n_tok
    out["clipfrac"] = (high + low) / n_tok
    out["clamped_frac"] = sum(1 for b, t in positions(mask) if out["clamped"][b][t]) / n_tok
    return out


def _clamp_token(x, c):
    if c is None:
        return x, False
    if x > c:
        return c, True
    if x < -c:
        return -c, True
    return x, False


def ppo_clip(logp, old_logp, mask, adv, cfg):
    """[BASE-GRPO] [BASE-GRPO-DUALCLIP] [BASE-DAPO] [BASE-RATIO-CLAMP] token by token."""
    out = _out(mask)
    out["dual"] = _zeros(mask, False)
    w = weights(mask, cfg.loss_agg_mode, cfg.max_len)
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    for b, t in positions(mask):
        x, clamped = _clamp_token(logp[b][t] - old_logp[b][t], cfg.log_ratio_clamp)
        r = math.exp(x)
        A = adv[b][t]
        loss = max(-A * r, -A * min(max(r, lo), hi))
        high = A > 0 and r > hi
        low = A < 0 and r < lo
        dual = False
        if cfg.dual_clip is not None and A < 0:
            dual = r > cfg.dual_clip
            loss = min(loss, -A * cfg.dual_clip)
        out["loss"] += w[b][t] * loss
        if not (high or low or dual or clamped):
            out["grad"][b][t] = -w[b][t] * A * r
        out["ratio"][b][t] = r
        out["high"][b][t], out["low"][b][t] = high, low
        out["dual"][b][t], out["clamped"][b][t] = dual, clamped
    out = _fractions(out, mask)
    out["clipfrac_dual"] = sum(1 for b, t in positions(mask) if out["dual"][b][t]) / len(positions(mask))
    return out


def gspo(logp, old_logp, mask, adv, cfg):
    """[BASE-GSPO] [BASE-GSPO-SEQ] response by response."""
    out = _out(mask)
    w = weights(mask, cfg.loss_agg_mode, cfg.max_len)
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    for b, row in enumerate(mask):
        toks = [t for t, m in enumerate(row) if m]
        if not toks:
            continue
        total = 0.0
        for t in toks:
            total += logp[b][t] - old_logp[b][t]
        log_s = total / len(toks)
        clamped = cfg.log_ratio_clamp is not None and log_s > cfg.log_ratio_clamp
        if clamped:
            log_s = cfg.log_ratio_clamp
        s = math.exp(log_s)
        token_grads = []
        for t in toks:
            A = adv[b][t]
            out["loss"] += w[b][t] * -min(s * A, min(max(s, lo), hi) * A)
            high = A > 0 and s > hi
            low = A < 0 and s < lo
            g = 0.0 if (high or low or clamped) else -w[b][t] * A * s
            token_grads.append(g)
            out["ratio"][b][t] = s
            out["high"][b][t], out["low"][b][t], out["clamped"][b][t] = high, low, clamped
        for t, g in zip(toks, token_grads):
            out["grad"][b][t] = g if cfg.level == "token" else sum(token_grads) / len(toks)
    return _fractions(out, mask)


def gmpo(logp, old_logp, mask, adv, cfg):
    """[BASE-GMPO] response by response."""
    out = _out(mask)
    w = weights(mask, cfg.loss_agg_mode, cfg.max_len)
    for b, row in enumerate(mask):
        toks = [t for t, m in enumerate(row) if m]
        if not toks:
            continue
        clipped_sum, adv_sum, passes = 0.0, 0.0, {}
        for t in toks:
            x = logp[b][t] - old_logp[b][t]
            A = adv[b][t]
            c = min(max(x, -cfg.eps_low), cfg.eps_high)
            if A > 0:
                lc = min(x, c)
                out["high"][b][t] = x > cfg.eps_high
                passes[t] = not out["high"][b][t]
            elif A < 0:
                lc = max(x, c)
                out["low"][b][t] = x < -cfg.eps_low
                passes[t] = not out["low"][b][t]
            else:
                lc = 0.0
                passes[t] = False
            clipped_sum += lc
            adv_sum += A
        L = len(toks)
        rho = math.exp(clipped_sum / L)
        seq_loss = -(adv_sum / L) * rho
        W = sum(w[b][t] for t in toks)
        for t in toks:
            out["loss"] += w[b][t] * seq_loss
            out["ratio"][b][t] = rho
            if passes[t]:
                out["grad"][b][t] = W * seq_loss / L
    return _fractions(out, mask)


def cispo(logp, old_logp, mask, adv, cfg):
    """[BASE-CISPO] token by token."""
    out = _out(mask)
    w = weights(mask, cfg.loss_agg_mode, cfg.max_len)
    lo, hi = 1.0 - cfg.eps_low, 1.0 + cfg.eps_high
    capped = 0
    for b, t in positions(mask):
        x, clamped = _clamp_token(logp[b][t] - old_logp[b][t], cfg.log_ratio_clamp)
        r = math.exp(x)
        A = adv[b][t]
        v = min(max(r, lo), hi)
        out["loss"] += w[b][t] * (-v * A * logp[b][t])
        out["grad"][b][t] = -w[b][t] * v * A
        out["ratio"][b][t] = r
        out["high"][b][t] = A > 0 and r > hi
        out["low"][b][t] = A < 0 and r < lo
        out["clamped"][b][t] = clamped
        capped += r > hi or r < lo
    out = _fractions(out, mask)
    out["capped_frac"] = capped / len(positions(mask))
    return out
