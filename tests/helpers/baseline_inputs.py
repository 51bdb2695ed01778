"""The bad inputs of [BASE-INPUT], one table for the numpy tests (test_baselines.py) and the
torch tests (test_torch_baselines.py): each row changes some arguments of ``GOOD``."""

import numpy as np

ARGUMENTS = ("logp", "old_logp", "mask", "advantages")
GOOD = (np.array([[-1.0, -2.0]]), np.array([[-1.0, -1.5]]), np.array([[True, True]]), np.array([1.0]))

BAD_INPUTS = [  # (the arguments changed, a word the message holds, what is bad)
    ({"logp": np.array([-1.0, -2.0])}, "logp", "logp 1-D"),
    ({"logp": np.array([["a", "b"]])}, "logp", "logp strings"),
    ({"old_logp": np.array([[-1.0, -1.5, 0.0]])}, "old_logp", "old_logp shape"),
    ({"mask": np.array([[1, 2]])}, "mask", "mask value"),
    ({"mask": np.array([[True]])}, "mask", "mask shape"),
    ({"mask": np.array([[False, False]])}, "no response token", "no response token"),
    ({"logp": np.array([[np.nan, -2.0]])}, "logp", "logp nan"),
    ({"old_logp": np.array([[-1.0, np.inf]])}, "old_logp", "old_logp inf"),
    ({"advantages": np.array([np.nan])}, "advantages", "advantages nan per response"),
    ({"advantages": np.array([1.0, 2.0])}, "advantages", "advantages shape"),
    ({"advantages": np.array([[1.0, np.nan]])}, "advantages", "advantages nan per token"),
    ({"advantages": np.ones((1, 2, 1))}, "advantages", "advantages 3-D"),
]


def bad_arguments(bad: dict) -> dict:
    """``GOOD`` by argument name, with the row's changes."""
    return {**dict(zip(ARGUMENTS, GOOD)), **bad}
