"""The configurations: ESPOConfig, every hyperparameter and pinned reading of the paper
[ESPO-CONFIG], and one frozen config per baseline [BASE-CONFIG]."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, ClassVar

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


def check_real(name: str, value: Any) -> float:
    if not is_real_number(value):
        raise ESPOInputError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ESPOInputError(f"{name} must be finite, got {value!r}")
    return value


def decimal_fraction(top_fraction) -> Fraction:
    """[ESPO-GROUP-TOPFRAC] rho as the exact decimal it prints as; a value that is not a finite
    real number in (0, 1] is an error naming ``top_fraction``."""
    rho = check_real("top_fraction", top_fraction)
    if not 0.0 < rho <= 1.0:
        raise ESPOInputError(f"top_fraction must be in (0, 1], got {top_fraction}")
    return Fraction(repr(rho))


def ceil_fraction(n: int, rho: Fraction) -> int:
    """[ESPO-GROUP-TOPFRAC] ceil(n * rho) in exact integer arithmetic."""
    return -((-n * rho.numerator) // rho.denominator)


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
        if check_real("alpha", self.alpha) < 0:
            raise ESPOInputError(f"alpha must be >= 0, got {self.alpha}")
        rho = check_real("top_fraction", self.top_fraction)
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
            if check_real(name, getattr(self, name)) < 0:
                raise ESPOInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.log_ratio_clamp is not None:
            if check_real("log_ratio_clamp", self.log_ratio_clamp) <= 0:
                raise ESPOInputError(
                    f"log_ratio_clamp must be > 0 or None, got {self.log_ratio_clamp}"
                )
        if check_real("entropy_tolerance", self.entropy_tolerance) < 0:
            raise ESPOInputError(f"entropy_tolerance must be >= 0, got {self.entropy_tolerance}")
        edges = _sequence(self.entropy_edges)
        if edges is None:
            raise ESPOInputError(f"entropy_edges must be a sequence of numbers, got {self.entropy_edges!r}")
        for k, c in enumerate(edges):
            c = check_real(f"entropy_edges[{k}]", c)
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


# --- baselines -----------------------------------------------------------------------------

LOSS_AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
GSPO_LEVELS = ("token", "sequence")


def check_agg_mode(mode, max_len=None, name: str = "loss_agg_mode") -> None:
    """[BASE-AGG] A known mode; ``max_len`` (int >= 1) only with seq-mean-token-sum-norm."""
    if mode not in LOSS_AGG_MODES:
        raise ESPOInputError(f"{name} must be one of {LOSS_AGG_MODES}, got {mode!r}")
    if max_len is None:
        return
    if mode != "seq-mean-token-sum-norm":
        raise ESPOInputError(
            f"max_len is only used by loss_agg_mode='seq-mean-token-sum-norm', got mode {mode!r}"
        )
    if not is_integer_number(max_len) or max_len < 1:
        raise ESPOInputError(f"max_len must be an int >= 1 or None, got {max_len!r}")


@dataclass(frozen=True)
class BaselineConfig:
    """[BASE-CONFIG] Fields shared by every baseline: clip offsets and the aggregation.

    ``eps_low``, ``eps_high`` >= 0 (offsets: the range is [1 - eps_low, 1 + eps_high], in
    log space [-eps_low, eps_high] for GMPO); ``loss_agg_mode`` one of LOSS_AGG_MODES;
    ``max_len`` (int >= 1) only with ``"seq-mean-token-sum-norm"`` (None: T).
    """

    method: ClassVar[str] = "base"

    eps_low: float = 0.2
    eps_high: float = 0.2
    loss_agg_mode: str = "seq-mean-token-mean"
    max_len: int | None = None

    def __post_init__(self) -> None:
        plain_scalars(self)  # numpy scalars are accepted as the Python values they hold
        for name in ("eps_low", "eps_high"):
            if check_real(name, getattr(self, name)) < 0:
                raise ESPOInputError(f"{name} must be >= 0, got {getattr(self, name)}")
        check_agg_mode(self.loss_agg_mode, self.max_len)
        clamp = getattr(self, "log_ratio_clamp", None)
        if clamp is not None and check_real("log_ratio_clamp", clamp) <= 0:
            raise ESPOInputError(f"log_ratio_clamp must be > 0 or None, got {clamp}")

    def replace(self, **changes: Any) -> "BaselineConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BaselineConfig":
        check_known_fields(cls, data)
        return cls(**data)


def _check_dual_clip(value) -> None:
    if value is not None and check_real("dual_clip", value) <= 1.0:
        raise ESPOInputError(f"dual_clip must be > 1 or None, got {value}")


@dataclass(frozen=True)
class GRPOConfig(BaselineConfig):
    """[BASE-GRPO] GRPO (Eq. 1): eps 0.2/0.2, seq-mean-token-mean, log-ratio clamp [-20, 20],
    dual clip off [BASE-GRPO-DUALCLIP]."""

    method: ClassVar[str] = "grpo"

    log_ratio_clamp: float | None = 20.0
    dual_clip: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_dual_clip(self.dual_clip)


@dataclass(frozen=True)
class DAPOConfig(GRPOConfig):
    """[BASE-DAPO] DAPO: the GRPO surrogate with clip-higher 0.2/0.28 and token-mean (GRPO's
    fields and checks, other defaults; dapo_loss still accepts a DAPOConfig only)."""

    method: ClassVar[str] = "dapo"

    eps_high: float = 0.28
    loss_agg_mode: str = "token-mean"


@dataclass(frozen=True)
class GSPOConfig(BaselineConfig):
    """[BASE-GSPO] GSPO: eps 3e-4/4e-4, seq-mean-token-mean, log s clamped above at 10;
    ``level="sequence"`` is the plain sequence form [BASE-GSPO-SEQ]."""

    method: ClassVar[str] = "gspo"

    eps_low: float = 3e-4
    eps_high: float = 4e-4
    log_ratio_clamp: float | None = 10.0
    level: str = "token"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.level not in GSPO_LEVELS:
            raise ESPOInputError(f"level must be one of {GSPO_LEVELS}, got {self.level!r}")


@dataclass(frozen=True)
class GMPOConfig(BaselineConfig):
    """[BASE-GMPO] GMPO: sign-aware log-space clip 0.4/0.4, seq-mean-token-mean (the mean
    over responses), no log-ratio clamp."""

    method: ClassVar[str] = "gmpo"

    eps_low: float = 0.4
    eps_high: float = 0.4


@dataclass(frozen=True)
class CISPOConfig(BaselineConfig):
    """[BASE-CISPO] CISPO: weight offsets eps_low 1.0 / eps_high 4.0 (TRL cap 5.0),
    token-mean, log-ratio clamp [-20, 20]."""

    method: ClassVar[str] = "cispo"

    eps_low: float = 1.0
    eps_high: float = 4.0
    loss_agg_mode: str = "token-mean"
    log_ratio_clamp: float | None = 20.0


def baseline_config(config, cls):
    """[BASE-CONFIG] ``config`` checked to be exactly ``cls`` (None: its defaults), validated
    again: a config built without its checks is still refused."""
    if config is None:
        return cls()
    if type(config) is not cls:
        raise ESPOInputError(f"config must be a {cls.__name__}, got {type(config).__name__}")
    config.__post_init__()
    return config
