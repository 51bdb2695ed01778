"""TrainConfig: every setting of a training run, saved as JSON with each checkpoint.

ALGOS names the objectives; ``losses.LOSSES`` maps each to its torch loss and the builder
of its configuration (there, since it imports torch; this module stays cheap to import)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from ..config import check_known_fields

ALGOS = ("espo", "gspo", "grpo", "dapo", "gmpo", "cispo")
DEFAULT = "default"  # log_ratio_clamp: the algorithm's own default (None means: no clamp)


@dataclass
class TrainConfig:
    """A training run. Loss options left at None take the algorithm's defaults
    (ESPOConfig / GRPOConfig / ... of the reference)."""

    out_dir: str = "runs/train"
    # task and model
    task: str = "arith"
    task_options: dict[str, Any] = field(default_factory=dict)
    verifier: str | None = None
    model: str = "tiny"
    model_hidden: int = 64
    model_layers: int = 2
    model_heads: int = 4
    init_weights: str | None = None
    # algorithm
    algo: str = "espo"
    alpha: float | None = None
    top_fraction: float | None = None
    grouping: str | None = None
    eps_reading: str | None = None
    ratio_form: str | None = None
    clip: str | None = None
    eps_low: float | None = None
    eps_high: float | None = None
    drop_low_group: bool | None = None
    log_ratio_clamp: float | str | None = DEFAULT
    loss_agg_mode: str | None = None
    score_truncated: bool = False
    # rollout
    steps: int = 100
    prompts_per_step: int = 8
    group_size: int = 8
    temperature: float = 1.0
    max_new_tokens: int = 24
    # update
    ppo_epochs: int = 2
    minibatches: int = 2
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 0
    grad_clip: float = 1.0
    # supervised warm-start (format only for the built-in tasks)
    sft_steps: int = 0
    sft_batch: int = 32
    sft_lr: float = 3e-3
    sft_correct_fraction: float = 0.0
    # evaluation: greedy accuracy on held-out prompts before RL and at the end
    eval_prompts: int = 0
    # bookkeeping
    seed: int = 0
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    # sampled rollouts (and, for ESPO, explainable batches) every N steps (0: none), responses kept
    samples_every: int = 10
    samples_kept: int = 4
    device: str = "cpu"
    threads: int = 1

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.device.split(":")[0] not in ("cpu", "cuda"):
            raise ValueError(f"device must be cpu or cuda[:N], got {self.device!r}")
        positive = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "ppo_epochs", "minibatches",
                    "model_hidden", "model_layers", "model_heads", "threads")
        for name in positive:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("sft_steps", "eval_prompts", "warmup_steps", "checkpoint_every", "keep_checkpoints",
                     "samples_every", "samples_kept"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.group_size < 2:
            raise ValueError(f"group_size must be >= 2 (Eq. 11 needs two responses per prompt), got {self.group_size}")
        rows = self.prompts_per_step * self.group_size
        if self.minibatches > rows:
            raise ValueError(f"minibatches ({self.minibatches}) exceeds the responses per step ({rows})")
        if not 0.0 <= self.sft_correct_fraction <= 1.0:
            raise ValueError(f"sft_correct_fraction must be in [0, 1], got {self.sft_correct_fraction}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.log_ratio_clamp, str) and self.log_ratio_clamp != DEFAULT:
            raise ValueError(f"log_ratio_clamp must be a number, None or {DEFAULT!r}, got {self.log_ratio_clamp!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        check_known_fields(cls, data, "train config")
        return cls(**data)

    def replace(self, **changes: Any) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# Fields that may differ between a run and its resumption (they do not change the result).
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "keep_checkpoints", "out_dir", "samples_every", "samples_kept")

