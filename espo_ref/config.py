"""ESPOConfig: every hyperparameter and every pinned reading of the paper [ESPO-CONFIG]."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ESPOInputError

GROUPINGS = ("top_fraction", "batch_top_fraction", "entropy_ranges", "none", "token")
CLIPS = ("adaptive", "fixed")
EPS_READINGS = ("group_mean", "token_over_groups")
RATIO_FORMS = ("gspo_token", "literal")


def is_integer_number(value: Any) -> bool:
    """A Python or numpy integer (``np.int64(16)`` is what users pass), not a bool [ESPO-CONFIG]."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_real_number(value: Any) -> bool:
    """A Python or numpy integer or float, not a bool (nor complex, str, ...) [ESPO-CONFIG]."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def plain_scalars(obj: Any) -> None:
    """[ESPO-CONFIG] [BASE-CONFIG] Replace numpy scalar fields of a frozen dataclass by the
    Python int, float, bool or str of the same value, so that a config built from numpy values
    equals, prints and serialises as the one built from Python values."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, np.generic):
            object.__setattr__(obj, f.name, value.item())


def _check_real(name: str, value: Any) -> float:
    if not is_real_number(value):
        raise ESPOInputError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ESPOInputError(f"{name} must be finite, got {value!r}")
    return value


def check_known_fields(cls, data: dict[str, Any], what: str = "config") -> None:
    """A dict meant for dataclass ``cls`` holds only its fields (an unknown one is an error)."""
    unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ESPOInputError(f"{what} has unknown fields {sorted(unknown)}")


def check_config(config: Any, cls: type, name: str = "config") -> Any:
    """A config of exactly the expected class, validated again: a config object built without
    its checks (as the conformance runner hands implementations) is still refused [ESPO-CONFIG]."""
    if not isinstance(config, cls):
        article = "an" if cls.__name__[0] in "AEIOU" else "a"
        raise ESPOInputError(f"{name} must be {article} {cls.__name__}, got {type(config).__name__}")
    config.__post_init__()
    return config


def _sequence(value: Any) -> tuple | None:
    """The items of a list, tuple or 1-D array (None for a scalar, a string or a mapping)."""
    if isinstance(value, (str, bytes, dict)) or (isinstance(value, np.ndarray) and value.ndim != 1):
        return None
    try:
        return tuple(value)
    except TypeError:
        return None


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ESPOInputError(f"{name} must be one of {choices}, got {value!r}")


@dataclass(frozen=True)
class ESPOConfig:
    """[ESPO-CONFIG] ESPO hyperparameters (Eqs. 5-10) and the named alternative readings.

    Defaults are the canonical resolutions of specs/ESPO.md; each alternative is a named
    option with its own clause.
    """

    vocab_size: int
    alpha: float = 0.02
    top_fraction: float = 0.2
    grouping: str = "top_fraction"
    entropy_edges: tuple[float, ...] = ()
    drop_low_group: bool = False
    clip: str = "adaptive"
    eps_low: float = 3e-4
    eps_high: float = 4e-4
    eps_reading: str = "group_mean"
    ratio_form: str = "gspo_token"
    log_ratio_clamp: float | None = 10.0
    entropy_tolerance: float = 1e-4

    def __post_init__(self) -> None:
        if not is_integer_number(self.vocab_size):
            raise ESPOInputError(f"vocab_size must be an int >= 2, got {self.vocab_size!r}")
        plain_scalars(self)
        if self.vocab_size < 2:
            raise ESPOInputError(f"vocab_size must be an int >= 2, got {self.vocab_size}")
        if _check_real("alpha", self.alpha) < 0:
            raise ESPOInputError(f"alpha must be >= 0, got {self.alpha}")
        rho = _check_real("top_fraction", self.top_fraction)
        if not 0.0 < rho <= 1.0:
            raise ESPOInputError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        _check_choice("grouping", self.grouping, GROUPINGS)
        _check_choice("clip", self.clip, CLIPS)
        _check_choice("eps_reading", self.eps_reading, EPS_READINGS)
        _check_choice("ratio_form", self.ratio_form, RATIO_FORMS)
        if not isinstance(self.drop_low_group, bool):
            raise ESPOInputError(f"drop_low_group must be a bool, got {self.drop_low_group!r}")
        if self.drop_low_group and self.grouping in ("none", "token"):
            raise ESPOInputError(
                f"drop_low_group=True needs an entropy split; grouping={self.grouping!r} has none"
            )
        for name in ("eps_low", "eps_high"):
            if _check_real(name, getattr(self, name)) < 0:
                raise ESPOInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_ratio_clamp is not None:
            if _check_real("log_ratio_clamp", self.log_ratio_clamp) <= 0:
                raise ESPOInputError(
                    f"log_ratio_clamp must be > 0 or None, got {self.log_ratio_clamp}"
                )
        if _check_real("entropy_tolerance", self.entropy_tolerance) < 0:
            raise ESPOInputError(f"entropy_tolerance must be >= 0, got {self.entropy_tolerance}")
        edges = _sequence(self.entropy_edges)
        if edges is None:
            raise ESPOInputError(f"entropy_edges must be a sequence of numbers, got {self.entropy_edges!r}")
        for k, c in enumerate(edges):
            c = _check_real(f"entropy_edges[{k}]", c)
            if not 0.0 < c < 1.0:
                raise ESPOInputError(f"entropy_edges[{k}] must be in (0, 1), got {c}")
        edges = tuple(c.item() if isinstance(c, np.generic) else c for c in edges)
        object.__setattr__(self, "entropy_edges", edges)
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ESPOInputError(f"entropy_edges must be strictly increasing, got {edges}")
        if self.grouping == "entropy_ranges" and not edges:
            raise ESPOInputError("grouping='entropy_ranges' needs a non-empty entropy_edges")

    @property
    def log_vocab(self) -> float:
        """log |V|, the upper bound of the token entropy (Eq. 6), in nats."""
        return math.log(self.vocab_size)

    def replace(self, **changes: Any) -> "ESPOConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["entropy_edges"] = list(self.entropy_edges)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ESPOConfig":
        check_known_fields(cls, data)
        data = dict(data)
        if "entropy_edges" in data:
            data["entropy_edges"] = tuple(data["entropy_edges"])
        return cls(**data)
