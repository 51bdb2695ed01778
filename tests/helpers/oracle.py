"""A loop-based oracle of the ESPO core, written from specs/ESPO.md alone.

Plain Python: loops over responses and tokens, Python floats, ``math.fsum`` for every sum,
``fractions.Fraction`` where exactness is pinned (n_high, the advantage mean and variance).
It never imports the vectorised core: the thing tested does not produce its own expected
values. Inputs are array-likes indexed ``[b][t]``; outputs are nested lists. Padding
positions are never read, so they may hold anything.

Where the spec leaves a value undefined, the oracle returns NaN there and the tests skip
it (none at present).
"""

from __future__ import annotations

import math
from fractions import Fraction



def _rows(x):
    """A [B, T] array-like as a list of lists of Python values."""
    return [list(row) for row in x]


def _mean(values):
    values = [float(v) for v in values]
    return math.fsum(values) / len(values)


# ---------------------------------------------------------------- [ESPO-ENT]


def oracle_entropy_of(logits, temperature=1.0):
    """[ESPO-ENT] e = -sum_v p_v log p_v of one distribution p = softmax(logits / T)."""
    z = [float(x) / temperature for x in logits]
    finite = [x for x in z if x != -math.inf]
    top = max(finite)
    shifted = [x - top for x in finite]
    log_s = math.log(math.fsum(math.exp(x) for x in shifted))
    e = -math.fsum(math.exp(x - log_s) * (x - log_s) for x in shifted)
    return max(e, 0.0)


def oracle_token_entropy(logits, temperature=1.0):
    """[ESPO-ENT] Eq. 6 over the last axis of a nested list, by recursion."""
    if logits and isinstance(logits[0], (list, tuple)):
        return [oracle_token_entropy(row, temperature) for row in logits]
    return oracle_entropy_of(logits, temperature)


# ---------------------------------------------------------------- [ESPO-ENT-DOMAIN]


def oracle_clamp_entropy(entropy, valid, config):
    """[ESPO-ENT-DOMAIN] response entropies clamped below at 0 before any use.

    ``valid[b][t]`` says which positions are response tokens; the others are not read.
    """
    return [
        [max(float(e), 0.0) if ok else None for e, ok in zip(row, vrow)]
        for row, vrow in zip(_rows(entropy), _rows(valid))
    ]


# ---------------------------------------------------------------- [ESPO-GROUP]


def oracle_high_group_size(length, top_fraction):
    """[ESPO-GROUP-TOPFRAC] clamp(ceil(rho L), 1, L) on the decimal value of rho; 0 if L = 0."""
    if length == 0:
        return 0
    rho = Fraction(repr(top_fraction))
    n = math.ceil(rho * length)
    return min(max(n, 1), length)


def oracle_entropy_groups(entropy, mask, config):
    """[ESPO-GROUP] Eq. 7: group index per response token, -1 on padding."""
    mask = _rows(mask)
    entropy = oracle_clamp_entropy(entropy, mask, config)
    B = len(mask)
    T = len(mask[0]) if B else 0
    groups = [[-1] * T for _ in range(B)]
    log_v = math.log(config.vocab_size)
    if config.grouping == "top_fraction":
        for b in range(B):
            positions = [t for t in range(T) if mask[b][t]]
            n_high = oracle_high_group_size(len(positions), config.top_fraction)
            ranked = sorted(positions, key=lambda t: (-float(entropy[b][t]), t))
            for rank, t in enumerate(ranked):
                groups[b][t] = 0 if rank < n_high else 1
    elif config.grouping == "batch_top_fraction":
        tokens = [(b, t) for b in range(B) for t in range(T) if mask[b][t]]
        n_high = oracle_high_group_size(len(tokens), config.top_fraction)
        ranked = sorted(tokens, key=lambda bt: (-float(entropy[bt[0]][bt[1]]), bt[0], bt[1]))
        for rank, (b, t) in enumerate(ranked):
            groups[b][t] = 0 if rank < n_high else 1
    elif config.grouping == "entropy_ranges":
        for b in range(B):
            for t in range(T):
                if mask[b][t]:
                    u = float(entropy[b][t]) / log_v
                    groups[b][t] = sum(1 for c in config.entropy_edges if c > u)
    elif config.grouping == "none":
        for b in range(B):
            for t in range(T):
                if mask[b][t]:
                    groups[b][t] = 0
    elif config.grouping == "token":
        for b in range(B):
            for t in range(T):
                if mask[b][t]:
                    groups[b][t] = t
    else:
        raise AssertionError(config.grouping)
    return groups


def oracle_trained(groups, config):
    """[ESPO-GROUP-DROPLOW] response tokens that enter the objective."""
    return [[g >= 0 and (not config.drop_low_group or g == 0) for g in row] for row in groups]


def oracle_members(groups, b):
    """{group index: [positions]} of response b."""
    members = {}
    for t, g in enumerate(groups[b]):
        if g >= 0:
            members.setdefault(g, []).append(t)
    return members


def oracle_num_groups(groups, trained, b):
    """K_i: the trained non-empty groups of response b."""
    return len({g for t, g in enumerate(groups[b]) if trained[b][t]})


# ---------------------------------------------------------------- [ESPO-CLIP]


def oracle_group_clip_eps(entropy, groups, config):
    """[ESPO-CLIP] / [ESPO-CLIP-TOKEN] Eq. 8 per token, 0 on padding.

    group_mean: alpha * mean_{t in tau} e_t / log V (all tokens of tau, dropped included).
    token_over_groups: alpha * e_t / (log V * K_i), with K_i = 1 for a response without a
    trained group (its eps is diagnostic only).
    """
    entropy = oracle_clamp_entropy(entropy, [[g >= 0 for g in row] for row in groups], config)
    log_v = math.log(config.vocab_size)
    trained = oracle_trained(groups, config)
    eps = [[0.0] * len(row) for row in groups]
    for b in range(len(groups)):
        if config.eps_reading == "group_mean":
            for g, positions in oracle_members(groups, b).items():
                mean_e = _mean(entropy[b][t] for t in positions)
                for t in positions:
                    eps[b][t] = config.alpha * mean_e / log_v
        else:
            k = oracle_num_groups(groups, trained, b)
            for t, g in enumerate(groups[b]):
                if g >= 0:
                    eps[b][t] = config.alpha * float(entropy[b][t]) / (log_v * max(k, 1))
    return eps


def oracle_clip_bounds(entropy, groups, config):
    """[ESPO-CLIP-FIXED] (eps_low, eps_high) per token: Eq. 8 twice, or the constants."""
    if config.clip == "adaptive":
        eps = oracle_group_clip_eps(entropy, groups, config)
        return eps, [row[:] for row in eps]
    low = [[config.eps_low if g >= 0 else 0.0 for g in row] for row in groups]
    high = [[config.eps_high if g >= 0 else 0.0 for g in row] for row in groups]
    return low, high


# ---------------------------------------------------------------- [ESPO-RATIO]


def oracle_group_log_ratio(logp, old_logp, groups):
    """[ESPO-RATIO] Eq. 10: log s_tau = mean_{t in tau}(logp_t - old_logp_t), 0 on padding."""
    logp = _rows(logp)
    old_logp = _rows(old_logp)
    out = [[0.0] * len(row) for row in groups]
    for b in range(len(groups)):
        for g, positions in oracle_members(groups, b).items():
            log_s = _mean(float(logp[b][t]) - float(old_logp[b][t]) for t in positions)
            for t in positions:
                out[b][t] = log_s
    return out


# ---------------------------------------------------------------- [ESPO-ADV]


def oracle_grpo_advantages(rewards, prompt_ids, valid=None, ddof=1, eps=1e-6):
    """[ESPO-ADV] Eq. 11 with the exact mean and variance (Fractions)."""
    B = len(rewards)
    valid = [True] * B if valid is None else [bool(v) for v in valid]
    out = [0.0] * B
    prompts = {}
    for i in range(B):
        prompts.setdefault(prompt_ids[i], []).append(i)
    for members in prompts.values():
        G = [i for i in members if valid[i]]
        if len(G) < 2:
            continue
        R = {i: Fraction(float(rewards[i])) for i in G}
        mu = sum(R.values()) / len(G)
        var = sum((R[i] - mu) ** 2 for i in G) / (len(G) - ddof)
        if var == 0:
            continue  # all rewards equal: R - mu = 0 exactly, so A = 0 (not 0/0)
        sigma = math.sqrt(var)
        for i in G:
            out[i] = float(R[i] - mu) / (sigma + eps)
    return out


# ---------------------------------------------------------------- [ESPO-OBJ]


def _adv_at(advantages, b, t):
    row = advantages[b]
    if isinstance(row, (list, tuple)) or hasattr(row, "__len__"):
        return float(row[t])
    return float(row)


def oracle_espo_loss(logp, old_logp, entropy, mask, advantages, config):
    """[ESPO-OBJ] Eq. 5 token by token; returns a dict of every output and the metrics.

    Extra keys for the tests: ``clamped`` (bool [B, T]), ``terms`` (w_t * surrogate_t of the
    trained tokens, to judge the conditioning of the sum), ``K`` (K_i per response).
    """
    logp, old_logp, mask = _rows(logp), _rows(old_logp), _rows(mask)
    entropy = oracle_clamp_entropy(entropy, mask, config)
    advantages = [list(a) if hasattr(a, "__len__") else a for a in advantages]
    B = len(mask)
    T = len(mask[0]) if B else 0
    groups = oracle_entropy_groups(entropy, mask, config)
    trained = oracle_trained(groups, config)
    eps_low, eps_high = oracle_clip_bounds(entropy, groups, config)
    log_s = oracle_group_log_ratio(logp, old_logp, groups)

    N = sum(1 for b in range(B) if any(mask[b]))
    K = [oracle_num_groups(groups, trained, b) for b in range(B)]
    size = {}  # (b, g) -> trained tokens of the group
    for b in range(B):
        for t in range(T):
            if trained[b][t]:
                size[(b, groups[b][t])] = size.get((b, groups[b][t]), 0) + 1

    zeros = lambda v=0.0: [[v] * T for _ in range(B)]  # noqa: E731
    ratio, grad, weight = zeros(), zeros(), zeros()
    clipped_high, clipped_low, clamped = zeros(False), zeros(False), zeros(False)
    terms = []
    for b in range(B):
        for t in range(T):
            if groups[b][t] < 0:
                continue
            log_r = float(logp[b][t]) - float(old_logp[b][t])
            log_v = log_s[b][t] if config.ratio_form == "gspo_token" else log_s[b][t] + log_r
            if config.log_ratio_clamp is not None and log_v > config.log_ratio_clamp:
                clamped[b][t] = True
                log_v = config.log_ratio_clamp
            v = math.exp(log_v)
            ratio[b][t] = v
            if not trained[b][t]:
                continue
            A = _adv_at(advantages, b, t)
            lo, hi = 1.0 - eps_low[b][t], 1.0 + eps_high[b][t]
            clipped_high[b][t] = A > 0 and v > hi
            clipped_low[b][t] = A < 0 and v < lo
            w = 1.0 / (N * K[b] * size[(b, groups[b][t])])
            weight[b][t] = w
            surrogate = min(v * A, min(max(v, lo), hi) * A)
            terms.append(w * surrogate)
            if not (clipped_high[b][t] or clipped_low[b][t] or clamped[b][t]):
                grad[b][t] = -w * A * v
    loss = -math.fsum(terms)

    # [ESPO-METRICS]
    resp = [(b, t) for b in range(B) for t in range(T) if groups[b][t] >= 0]
    n_tok = len(resp)
    high = [(b, t) for b, t in resp if config.grouping == "token" or groups[b][t] == 0]
    low = [(b, t) for b, t in resp if not (config.grouping == "token" or groups[b][t] == 0)]
    is_clip = lambda bt: clipped_high[bt[0]][bt[1]] or clipped_low[bt[0]][bt[1]]  # noqa: E731
    frac = lambda n, d: n / d if d else 0.0  # noqa: E731
    mean_over = lambda vals: _mean(vals) if vals else 0.0  # noqa: E731
    trained_bt = [(b, t) for b, t in resp if trained[b][t]]
    metrics = {
        "tokens": float(n_tok),
        "responses": float(N),
        "clipfrac_high": frac(sum(clipped_high[b][t] for b, t in resp), n_tok),
        "clipfrac_low": frac(sum(clipped_low[b][t] for b, t in resp), n_tok),
        "clipfrac": frac(sum(is_clip(bt) for bt in resp), n_tok),
        "clipfrac_high_group": frac(sum(is_clip(bt) for bt in high), len(high)),
        "clipfrac_low_group": frac(sum(is_clip(bt) for bt in low), len(low)),
        "clamped_frac": frac(sum(clamped[b][t] for b, t in resp), n_tok),
        "eps_mean_high_group": mean_over([eps_high[b][t] for b, t in high]),
        "eps_mean_low_group": mean_over([eps_high[b][t] for b, t in low]),
        "high_group_tokens": float(len(high)),
        "low_group_tokens": float(len(low)),
        "trained_tokens": float(len(trained_bt)),
        "groups_mean": mean_over([K[b] for b in range(B) if any(mask[b])]),
        "entropy_mean": mean_over([entropy[b][t] for b, t in resp]),
        "entropy_mean_high_group": mean_over([entropy[b][t] for b, t in high]),
        "entropy_mean_low_group": mean_over([entropy[b][t] for b, t in low]),
        "ratio_mean": mean_over([ratio[b][t] for b, t in trained_bt]),
        "approx_kl": mean_over(
            [
                (math.exp(lr) - 1.0) - lr
                for lr in (float(logp[b][t]) - float(old_logp[b][t]) for b, t in resp)
            ]
        ),
    }
    return {
        "loss": loss,
        "grad": grad,
        "ratio": ratio,
        "log_ratio": log_s,
        "clipped_high": clipped_high,
        "clipped_low": clipped_low,
        "clamped": clamped,
        "groups": groups,
        "eps": eps_high,
        "eps_low": eps_low,
        "eps_high": eps_high,
        "weight": weight,
        "trained": trained,
        "metrics": metrics,
        "terms": terms,
        "K": K,
    }
