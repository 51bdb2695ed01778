"""Vectorised per-(response, group) reductions, the torch mirror of espo_ref/_segments.py.

A group is the pair (row b, group id g); its statistics live in a [B, W] table with
W = max group id + 1. ``width`` may be given (espo_loss knows it from the config: 2 for
top_fraction, 1 for none, T for token, len(edges) + 1 for entropy_ranges); when it is
not, it is read from the data, which is a host sync. Tokens outside ``include`` belong to
no group.

A table of at most ``DENSE_WIDTH`` columns is reduced densely: each group's members become a
float factor (1 on the group's tokens, 0 elsewhere), a group's sum is one product and one row
sum, and a table goes back to the tokens as a sum of column x factor. Products by 1 and 0 are
exact, so these equal the masked sums and gathers (for values finite outside the group) at a
fraction of the cost of ``torch.where``/``scatter_add``/``gather``; deterministic on every
device. Wider tables (``token`` grouping) use ``scatter_add`` and ``gather``, whose float
atomics make the last bits run-dependent on CUDA.
"""

from __future__ import annotations

import torch

DENSE_WIDTH = 8


def as_bytes(mask: torch.Tensor) -> torch.Tensor:
    """A boolean tensor's bytes (0/1) as uint8, without a copy."""
    return mask.view(torch.uint8)


def factor(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask as 0/1 of ``dtype`` (eager: through its bytes, several times faster than a
    bool cast on CPU; compiled: the plain cast, which the compiler fuses)."""
    if torch.compiler.is_compiling():
        return mask.to(dtype)
    return as_bytes(mask).to(dtype)


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

    def __init__(self, groups: torch.Tensor, include: torch.Tensor, width: int | None = None, *,
                 members: list[torch.Tensor] | None = None):
        """``groups`` int [B, T]; ``include`` bool [B, T]; ``width`` W if known (else a sync).
        ``members`` (keyword-only): the W boolean masks of the groups' included tokens, when the
        caller has them already (the top-fraction selection does)."""
        B, T = groups.shape
        self.shape = (B, T)
        self.include = include
        if width is None:
            width = int(torch.where(include, groups, 0).max()) + 1 if groups.numel() else 1
        self.width = max(int(width), 1)
        self.dense = self.width <= DENSE_WIDTH
        self._factors: dict = {}
        if self.dense:
            if members is None:
                members = [include] if self.width == 1 else [include & (groups == w) for w in range(self.width)]
            self.members = members
            count = (lambda mb: mb.sum(dim=1)) if torch.compiler.is_compiling() else (lambda mb: as_bytes(mb).sum(dim=1))
            self.counts = torch.stack([count(mb) for mb in members], dim=1)
        else:
            self.index = torch.where(include, groups, 0).to(torch.int64)
            self.counts = self.sums(include.to(torch.int32), clean=True)

    def factors(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """The members as 0/1 factors of ``dtype`` (cached)."""
        if dtype not in self._factors:
            self._factors[dtype] = [factor(mb, dtype) for mb in self.members]
        return self._factors[dtype]

    def sums(self, values: torch.Tensor, clean: bool = False) -> torch.Tensor:
        """Per-group sums [B, W] of the included values (excluded tokens never enter).

        ``clean=True`` promises that ``values`` is finite (0 or anything finite) outside ``include``.
        """
        src = values if clean else torch.where(
            self.include, values, torch.zeros((), dtype=values.dtype, device=values.device))
        if self.dense:
            return torch.stack([(src * f).sum(dim=1) for f in self.factors(src.dtype)], dim=1)
        out = torch.zeros((self.shape[0], self.width), dtype=src.dtype, device=src.device)
        return out.scatter_add(1, self.index, src)

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
        """Broadcast a per-group [B, W] table back to the tokens (0 outside ``include``).
        Dense tables must be finite (a product by 0 stands for "not this group")."""
        if self.dense:
            if per_group.dtype == torch.bool and torch.compiler.is_compiling():
                out = per_group[:, :1] & self.members[0]
                for w in range(1, self.width):
                    out = out | (per_group[:, w:w + 1] & self.members[w])
                return out
            if per_group.dtype == torch.bool:  # in bytes: a broadcast bool & is ~20x slower on CPU (eager)
                table = as_bytes(per_group)
                out = table[:, :1] * as_bytes(self.members[0])
                for w in range(1, self.width):
                    out = out + table[:, w:w + 1] * as_bytes(self.members[w])
                return out.view(torch.bool)  # members are disjoint: every byte is 0 or 1
            factors = self.factors(per_group.dtype)
            out = per_group[:, :1] * factors[0]
            for w in range(1, self.width):
                out = torch.addcmul(out, per_group[:, w:w + 1], factors[w])
            return out
        values = per_group.gather(1, self.index)
        return torch.where(self.include, values, torch.zeros((), dtype=values.dtype, device=values.device))

    def groups_per_row(self) -> torch.Tensor:
        """K_i: the number of non-empty groups of each row."""
        return (self.counts > 0).sum(dim=1)


def group_segments(groups: torch.Tensor, trained: torch.Tensor, drop_low_group: bool,
                   width: int | None = None, *, include: torch.Tensor | None = None,
                   members: list[torch.Tensor] | None = None) -> tuple[Segments, Segments]:
    """(response segments, trained segments) of a group tensor, built once per loss: the same
    object unless ``drop_low_group`` leaves response tokens untrained ([ESPO-GROUP-DROPLOW]).
    ``include`` (the response tokens, groups >= 0) and ``members`` when the caller has them."""
    seg = Segments(groups, groups >= 0 if include is None else include, width, members=members)
    if not drop_low_group:
        return seg, seg
    members = [trained & mb for mb in seg.members] if seg.dense else None
    return seg, Segments(groups, trained, seg.width, members=members)
