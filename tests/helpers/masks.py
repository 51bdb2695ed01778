"""Response masks for the torch-vs-numpy hypothesis tests: prefix rows, holes, full rows,
and rows of length 0 and 1, always with at least one response token."""

import numpy as np
from hypothesis import strategies as st


def random_mask(draw, rng: np.random.Generator, B: int, T: int) -> np.ndarray:
    layout = draw(st.sampled_from(("prefix", "random", "ones", "short")), label="mask_layout")
    if layout == "prefix":
        mask = np.arange(T)[None, :] < rng.integers(0, T + 1, B)[:, None]
    elif layout == "random":
        mask = rng.random((B, T)) < rng.uniform(0.2, 1.0)
    elif layout == "ones":
        mask = np.ones((B, T), dtype=bool)
    else:  # rows of length 0 and 1
        mask = np.zeros((B, T), dtype=bool)
        mask[np.arange(B), rng.integers(0, T, B)] = rng.random(B) < 0.7
    mask[rng.integers(0, B), rng.integers(0, T)] = True  # at least one response token
    return mask
