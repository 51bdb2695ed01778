"""Vectorised per-(response, group) reductions, the torch mirror of espo_ref/_segments.py.

A group is the pair (row b, group id g); its statistics live in a [B, W] table with
W = max group id + 1. ``width`` may be given (espo_loss knows it from the config: 2 for
top_fraction, 1 for none, T for token, len(edges) + 1 for entropy_ranges); when it is
not, it is read from the data, which is a host sync. Tokens outside ``include`` belong to
no group.

The sums are deterministic on CPU (``scatter_add`` walks each row in order). On CUDA a
table of at most ``DENSE_WIDTH`` columns is reduced densely (a [B, W, T] masked sum,
deterministic and free of atomic contention on a handful of addresses per row); wider
tables use ``scatter_add``, whose float atomics make the last bits run-dependent.
"""

from __future__ import annotations

import torch

DENSE_WIDTH = 8


def in_range(mean: torch.Tensor) -> torch.Tensor:
    """[ESPO-INPUT] A mean of finite values summed scaled is within rounding of the true mean, which lies in
    [min, max] of the values: an inf there is the rounding of the dtype's +-max."""
    top = torch.finfo(mean.dtype).max
    return mean.clamp(-top, top)


def power_of_two_above(n: int) -> int:
    """[ESPO-RATIO] The least k >= 0 with 2**k >= n: a sum of n values scaled by 2**-k stays in range."""
    return max(int(n) - 1, 0).bit_length()


class Segments:
    """Group statistics of the included tokens of a [B, T] group-id tensor."""

    def __init__(self, groups: torch.Tensor, include: torch.Tensor, width: int | None = None):
        """``groups`` int [B, T]; ``include`` bool [B, T]; ``width`` W if known (else a sync)."""
        B, T = groups.shape
        self.shape = (B, T)
        self.include = include
        if width is None:
            width = int(torch.where(include, groups, 0).max()) + 1 if groups.numel() else 1
        self.width = max(int(width), 1)
        self.index = torch.where(include, groups, 0).to(torch.int64)
        self.counts = self.sums(include.to(torch.int32), clean=True)

    def sums(self, values: torch.Tensor, clean: bool = False) -> torch.Tensor:
        """Per-group sums [B, W] of the included values (excluded tokens never enter).

        ``clean=True`` promises that ``values`` is already 0 outside ``include``.
        """
        src = values if clean else torch.where(
            self.include, values, torch.zeros((), dtype=values.dtype, device=values.device))
        B, W = self.shape[0], self.width
        if W == 1:
            return src.sum(dim=1, keepdim=True)
        if src.device.type == "cpu" or W > DENSE_WIDTH:
            out = torch.zeros((B, W), dtype=src.dtype, device=src.device)
            return out.scatter_add(1, self.index, src)
        ids = torch.arange(W, device=src.device).view(1, W, 1)
        onehot = self.index.unsqueeze(1) == ids
        return torch.where(onehot, src.unsqueeze(1), torch.zeros((), dtype=src.dtype, device=src.device)).sum(dim=2)

    def means(self, values: torch.Tensor, clean: bool = False) -> torch.Tensor:
        """Per-group means (0 for empty groups).

        Summed scaled by 2**-k (2**k >= T) and divided by the scaled count: the same value as
        sum / count for values in the normal range (power-of-two scaling is exact, so every
        rounding is the same), and no sum of finite values leaves the float range (the core's
        fallback, without computing twice or a host sync).
        """
        k = power_of_two_above(self.shape[1])
        if k == 0:  # at most one token per group: no sum to overflow
            return self.sums(values, clean) / self.counts.clamp(min=1).to(values.dtype)
        sums = self.sums(values * 2.0 ** -k, clean)
        return in_range(sums / (self.counts.clamp(min=1).to(sums.dtype) * 2.0 ** -k))

    def to_tokens(self, per_group: torch.Tensor) -> torch.Tensor:
        """Broadcast a per-group [B, W] table back to the tokens (0 outside ``include``)."""
        values = per_group.gather(1, self.index)
        return torch.where(self.include, values, torch.zeros((), dtype=values.dtype, device=values.device))

    def groups_per_row(self) -> torch.Tensor:
        """K_i: the number of non-empty groups of each row."""
        return (self.counts > 0).sum(dim=1)


def group_segments(groups: torch.Tensor, trained: torch.Tensor, drop_low_group: bool,
                   width: int | None = None) -> tuple[Segments, Segments]:
    """(response segments, trained segments) of a group tensor, built once per loss: the same
    object unless ``drop_low_group`` leaves response tokens untrained ([ESPO-GROUP-DROPLOW])."""
    seg = Segments(groups, groups >= 0, width)
    return seg, (Segments(groups, trained, seg.width) if drop_low_group else seg)
