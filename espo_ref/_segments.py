"""Vectorised per-(response, group) reductions used by grouping, clipping and the ratio.

A group is the pair (row b, group id g); its flat segment id is b * G + g with
G = max group id + 1. Tokens outside ``include`` belong to no segment.
"""

from __future__ import annotations

import numpy as np

from ._stable import in_range, scaled_sum


class Segments:
    """Flat segment ids of the included tokens of a [B, T] group-id array."""

    def __init__(self, groups: np.ndarray, include: np.ndarray, width: int | None = None):
        """``groups`` int [B, T]; ``include`` bool [B, T]; ``width`` W if known (else read from
        the data)."""
        B, T = groups.shape
        self.shape = (B, T)
        self.include = include
        if width is None:
            width = int(groups[include].max()) + 1 if include.any() else 1
        self.width = max(int(width), 1)
        seg = np.arange(B, dtype=np.int64)[:, None] * self.width + np.where(include, groups, 0)
        self.seg = seg
        self.flat = seg[include]
        self.counts = np.bincount(self.flat, minlength=B * self.width)

    def sums(self, values: np.ndarray) -> np.ndarray:
        return np.bincount(self.flat, weights=values[self.include], minlength=self.counts.size)

    def means(self, values: np.ndarray) -> np.ndarray:
        """Per-segment means (0 for empty segments). A segment whose sum leaves the float range
        (finite values of huge magnitude) is averaged as the sum of value / count instead."""
        size = np.maximum(self.counts, 1)
        with np.errstate(over="ignore", invalid="ignore"):
            means = self.sums(values) / size
        overflow = ~np.isfinite(means)
        if overflow.any():
            with np.errstate(over="ignore", invalid="ignore"):
                scaled = np.bincount(self.flat, weights=scaled_sum(values[self.include], size[self.flat]),
                                     minlength=self.counts.size)
            means = np.where(overflow, in_range(scaled), means)
        return means

    def to_tokens(self, per_segment: np.ndarray) -> np.ndarray:
        """Broadcast a per-segment array back to the tokens (0 outside ``include``)."""
        return np.where(self.include, per_segment[self.seg], 0.0)

    def groups_per_row(self) -> np.ndarray:
        """K_i: the number of non-empty groups of each row."""
        B = self.shape[0]
        return (self.counts.reshape(B, self.width) > 0).sum(axis=1)


def group_segments(groups: np.ndarray, trained: np.ndarray, drop_low_group: bool,
                   width: int | None = None) -> tuple[Segments, Segments]:
    """(response segments, trained segments) of a group array, built once per loss: the same
    object unless ``drop_low_group`` leaves response tokens untrained ([ESPO-GROUP-DROPLOW])."""
    seg = Segments(groups, groups >= 0, width)
    return seg, (Segments(groups, trained, seg.width) if drop_low_group else seg)
