"""[ESPO-METRICS] [BASE-METRICS] The metrics of a step of several micro-batches: merged from the
parts' metrics they equal the metrics of the micro-batches taken as one batch (the oracle:
the core run on the concatenated tokens), in both backends, without a host sync in torch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import espo_ref
import espo_ref.torch as et
from espo_ref import ESPOConfig, ESPOInputError
from espo_ref.baselines import GSPOConfig

B, T = 5, 16


def micro_batch(seed: int, empty_high: bool = False):
    rng = np.random.default_rng(seed)
    old = -rng.exponential(1.0, (B, T))
    logp = old + 0.4 * rng.standard_normal((B, T))
    entropy = rng.uniform(0.0, 3.0, (B, T))
    mask = rng.uniform(size=(B, T)) < 0.7
    mask[:, 0] = True
    advantages = rng.standard_normal(B)
    return logp, old, entropy, mask, advantages


def concatenated(parts):
    return [np.concatenate([p[i] for p in parts]) for i in range(5)]


@pytest.mark.parametrize("grouping", ["top_fraction", "entropy_ranges", "none", "token"])
def test_ESPO_METRICS_merged_step_equals_the_concatenated_batch(grouping):
    config = ESPOConfig(vocab_size=1000, grouping=grouping,
                        **({"entropy_edges": (0.2, 0.35)} if grouping == "entropy_ranges" else {}))
    parts = [micro_batch(seed) for seed in range(3)]
    whole = espo_ref.espo_loss(*concatenated(parts), config).metrics
    core = espo_ref.merge_metrics([espo_ref.espo_loss(*p, config).metrics for p in parts])
    device = et.merge_metrics([et.espo_loss(*[torch.as_tensor(x) for x in p], config).metrics for p in parts])
    assert isinstance(device, et.DeviceMetrics)
    for key, want in whole.items():
        assert core[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key
        assert device[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key


def test_ESPO_METRICS_empty_bucket_is_left_out_not_averaged_as_zero():
    """A micro-batch without low-bucket tokens (grouping none) next to one with them: its
    0.0 for the empty bucket must not pull the step's value down."""
    parts = [micro_batch(0), micro_batch(1)]
    ranges = ESPOConfig(vocab_size=1000, grouping="entropy_ranges", entropy_edges=(0.2,))
    low_only = list(parts[0])
    low_only[2] = np.full((B, T), 0.1)  # every token below the edge: the high bucket is empty
    first = espo_ref.espo_loss(*low_only, ranges).metrics
    second = espo_ref.espo_loss(*parts[1], ranges).metrics
    assert first["high_group_tokens"] == 0 and first["eps_mean_high_group"] == 0.0
    assert second["high_group_tokens"] > 0
    for merged in (espo_ref.merge_metrics([first, second]),
                   et.merge_metrics([et.espo_loss(*[torch.as_tensor(x) for x in p], ranges).metrics
                                     for p in (low_only, parts[1])])):
        assert merged["eps_mean_high_group"] == pytest.approx(second["eps_mean_high_group"], rel=1e-12)
        assert merged["clipfrac_high_group"] == pytest.approx(second["clipfrac_high_group"], rel=1e-12)
        assert merged["high_group_tokens"] == second["high_group_tokens"]
        assert merged["tokens"] == first["tokens"] + second["tokens"]
        # a plain mean of the parts' values is what the old logging did: it differs here
        assert merged["eps_mean_high_group"] != pytest.approx(
            (first["eps_mean_high_group"] + second["eps_mean_high_group"]) / 2, rel=1e-6)


@pytest.mark.parametrize("loss", ["grpo_loss", "gspo_loss", "cispo_loss"])
def test_BASE_METRICS_merged_step_equals_the_concatenated_batch(loss):
    parts = [micro_batch(seed)[:2] + micro_batch(seed)[3:] for seed in range(3)]
    whole = getattr(espo_ref.baselines, loss)(*[np.concatenate([p[i] for p in parts]) for i in range(4)]).metrics
    core = espo_ref.merge_metrics([getattr(espo_ref.baselines, loss)(*p).metrics for p in parts])
    device = et.merge_metrics([getattr(et, loss)(*[torch.as_tensor(x) for x in p]).metrics for p in parts])
    for key, want in whole.items():
        assert core[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key
        assert device[key] == pytest.approx(want, rel=1e-12, abs=1e-15), key


def test_merge_is_device_side_until_read():
    """Merging DeviceMetrics reads nothing: the parts stay unread, and one read fetches all."""
    config = ESPOConfig(vocab_size=1000)
    parts = [et.espo_loss(*[torch.as_tensor(x) for x in micro_batch(s)], config, validate=False).metrics
             for s in range(2)]
    merged = et.merge_metrics(parts)
    assert all(p._values is None for p in parts) and merged._values is None
    assert math.isfinite(merged["approx_kl"]) and merged._values is not None


def test_merge_refuses_parts_of_different_losses_and_no_parts():
    espo = et.espo_loss(*[torch.as_tensor(x) for x in micro_batch(0)], ESPOConfig(vocab_size=1000)).metrics
    p = micro_batch(0)
    gspo = et.gspo_loss(*[torch.as_tensor(x) for x in (p[0], p[1], p[3], p[4])], GSPOConfig()).metrics
    with pytest.raises(ESPOInputError, match="other metric keys"):
        et.merge_metrics([espo, gspo])
    with pytest.raises(ESPOInputError, match="at least one"):
        espo_ref.merge_metrics([])


def test_a_value_set_by_hand_is_merged_on_the_host():
    """Metrics edited after the loss (a caller's override) merge by the core's rule."""
    config = ESPOConfig(vocab_size=1000)
    parts = [et.espo_loss(*[torch.as_tensor(x) for x in micro_batch(s)], config).metrics for s in range(2)]
    parts[1]["approx_kl"] = math.inf
    merged = et.merge_metrics(parts)
    assert merged["approx_kl"] == math.inf
    assert merged["tokens"] == parts[0]["tokens"] + parts[1]["tokens"]
