"""Per-step metrics (metrics.jsonl, TensorBoard when installed) and the plots of Figs. 3-5."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .._files import RUN_LOG_BYTES, RUN_LOG_LINE_BYTES, FileError, json_type, read_jsonl
from .._io import write_atomic

METRICS_FILE = "metrics.jsonl"

# Keys of a loss's metrics (LossResult.metrics) that a step's record leaves out; every other
# key is logged as its value over all the tokens of the step's mini-batch updates (token-weighted,
# espo_ref.torch.merge_metrics [ESPO-METRICS]). Counts are batch sizes, not
# diagnostics; the step's entropy is logged over the whole rollout ("entropy").
UNLOGGED_LOSS_METRICS = frozenset({
    "tokens", "responses", "high_group_tokens", "low_group_tokens", "trained_tokens", "groups_mean",
    "entropy_mean", "entropy_mean_high_group", "entropy_mean_low_group",
})


class MetricsLog:
    """Appends one JSON object per step to ``metrics.jsonl`` (flushed each line) and mirrors
    the numbers to TensorBoard when ``torch.utils.tensorboard`` can be imported."""

    def __init__(self, out_dir, keep_until_step: int | None = None):
        self.path = Path(out_dir) / METRICS_FILE
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is None:
            write_atomic(self.path, "")
        else:  # resuming: drop the records written after the checkpoint
            kept = [r for r in read_metrics(self.path) if r.get("step", 0) <= keep_until_step]
            write_atomic(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        self.file = open(self.path, "a", encoding="utf-8")
        self.board = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.board = SummaryWriter(str(Path(out_dir) / "tensorboard"))
        except Exception:  # TensorBoard not installed: metrics.jsonl only
            self.board = None

    def write(self, record: dict) -> None:
        try:
            self.file.write(json.dumps(record, sort_keys=True) + "\n")
            self.file.flush()
        except OSError as e:  # a full disk: say which file
            raise OSError(e.errno, e.strerror, str(self.path)) from e
        if self.board is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self.board.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.board is not None:
            self.board.close()


def read_metrics(path) -> list[dict]:
    """[CONF-FILES] The records of a run's metrics.jsonl (or rollouts.jsonl): each line a JSON object
    with an int ``step``, its length and the file's size bounded; a torn last line (a run killed
    while writing it) is dropped. A malformed line is a FileError naming the file and the line."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for number, record in read_jsonl(path, max_line_bytes=RUN_LOG_LINE_BYTES, max_bytes=RUN_LOG_BYTES,
                                     torn_last=True, what="a run's log"):
        if not isinstance(record, dict):
            raise FileError(path, f"expected a JSON object, got {json_type(record)}", number)
        if "step" not in record:
            raise FileError(path, "no 'step' (each record is a step's, an int)", number)
        if type(record["step"]) is not int:
            raise FileError(path, f"'step' must be an int, got {json_type(record['step'])}", number)
        records.append(record)
    return records


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over ``window`` points (NaN-free input)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def mean_of(records: list[dict], key: str, last: int | None = None) -> float:
    """Mean of ``key`` over the records that have it (the ``last`` ones); a NaN or infinite
    value is not skipped: it makes the mean non-finite (NaN when there is none)."""
    values = [r[key] for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r[key], bool)]
    if last:
        values = values[-last:]
    return sum(values) / len(values) if values else float("nan")


PANELS = {
    "reward": [("reward", "reward"), ("accuracy", "accuracy")],
    "entropy": [("entropy", "mean token entropy (old policy, nats)"), ("response_length", "response length (tokens)")],
    "clipfrac": [("clipfrac_high", "clip fraction, upper"), ("clipfrac_low", "clip fraction, lower"),
                 ("clipfrac_high_group", "clip fraction, high-entropy group (ESPO)"),
                 ("clipfrac_low_group", "clip fraction, low-entropy group (ESPO)")],
}


def plot_runs(runs: dict[str, list[dict]], out_dir, window: int = 10) -> list[Path]:
    """reward.png (reward, accuracy: Fig. 3), entropy.png (entropy, length: Fig. 3) and
    clipfrac.png (upper/lower clip fractions, per entropy group for ESPO: Figs. 4-5), one
    line per run, smoothed over ``window`` steps. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, panels in PANELS.items():
        present = [(k, t) for k, t in panels if any(k in r for recs in runs.values() for r in recs)]
        if not present:
            continue
        fig, axes = plt.subplots(1, len(present), figsize=(4.2 * len(present), 3.3), squeeze=False)
        for ax, (key, title) in zip(axes[0], present):
            for label, records in runs.items():
                points = [(r["step"], r[key]) for r in records
                          if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
                if points:
                    steps, values = zip(*points)
                    ax.plot(steps, smooth(list(values), window), label=label)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        tmp = out_dir / f".{name}.png.tmp"
        fig.savefig(tmp, dpi=90, format="png")
        plt.close(fig)
        tmp.replace(path)
        written.append(path)
    return written
