"""Forward+backward time and peak memory of the torch espo_loss against GSPO and a GRPO floor.

Peers, on the same inputs in the same run (interleaved repeats, so that drift in the
machine's load hits every method alike):

* ``espo``  -- espo_ref.torch.espo_loss, default ESPOConfig (top_fraction 0.2, adaptive clip).
* ``gspo``  -- espo_ref.torch.gspo_loss when the backend has it; else the GSPO form below.
* ``gspo_form`` -- espo_loss itself in its GSPO form: ESPOConfig(grouping="none",
  clip="fixed", eps_low=3e-4, eps_high=4e-4), i.e. one group per response, GSPO-token
  ratio, fixed sequence-level range, the same code path and metrics as ESPO; espo over
  gspo_form isolates the cost of entropy grouping and adaptive clipping.
* ``grpo``  -- espo_ref.torch.grpo_loss when the backend has it (else left out), and
* ``ppo_floor`` -- a token-level PPO-clip (GRPO) surrogate written inline, token mean:
  the least any clipped surrogate costs.

The baselines run with their default configs (GSPOConfig: eps 3e-4 / 4e-4; GRPOConfig).
On CPU the run uses ``--threads`` torch threads (default 1): on a small shared machine,
OpenMP threads competing with other processes for the cores make wall times swing by
orders of magnitude, while one thread gives stable ratios; ``*_cpu_s`` is process time.

Every loss runs with ``validate=False`` where it has the keyword (the training setting:
no host sync but the metrics' one). float32 inputs. Time: median wall time of
forward + ``backward()``, bracketed by ``torch.cuda.synchronize()`` on CUDA. Peak memory:
on CUDA ``torch.cuda.max_memory_allocated()`` above what was allocated before the call; on
CPU the growth of the resident set (the peak RSS, VmHWM = ``ru_maxrss``, reset through
/proc/self/clear_refs, minus the RSS just before the call), in a fresh subprocess per
(method, size) with
``MALLOC_MMAP_THRESHOLD_=65536`` so that freed tensors leave the resident set.

    python bench/loss_overhead.py [--device cpu|cuda] [--sizes 64x4096,256x8192,1024x16384]
                                  [--repeats R] [--out DIR] [--before TREE]

``--before TREE`` also times ``espo`` and ``gspo`` of another checkout of the project (e.g. a
``git worktree`` of the commit before a refactor), loaded as the package ``espo_ref_before``.
Each version runs in fresh processes of its own, in ``ISOLATED_ROUNDS`` rounds of one process
per version back to back (the order alternating between rounds), ``repeats`` calls each, and
each process reports its fastest call (contention only ever adds time); the ratio
``espo_after_over_before_time`` / ``gspo_after_over_before_time`` is the median over the
rounds of the ratio within a round, so that the slow drift of a shared machine's speed (tens
of percent between minutes here) cancels. (Interleaving both versions in one process
biases the comparison by several percent: each leaves the allocator in a state the other
then pays for.)

Results go to bench/results/loss_overhead_<device>.{json,md} (atomic writes), and also to
DIR when given.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import espo_ref  # noqa: E402
import espo_ref.baselines  # noqa: E402
import espo_ref.torch as et  # noqa: E402
from _common import machine_info  # noqa: E402
from espo_ref._io import write_atomic  # noqa: E402

SIZES = ((64, 4096), (256, 8192), (1024, 16384))
VOCAB = 151_936
CPU_BUDGET_BYTES = 24 * 2**30
BYTES_PER_TOKEN = 160  # measured peak of espo_loss fwd+bwd is ~60-100 B/token; inputs ~17
TARGET = {"cpu": 2.0, "cuda": 1.5}


def make_inputs(B, T, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] < lengths[:, None]
    old = torch.empty(B, T).exponential_(1.0, generator=g).neg_()
    logp = torch.randn(B, T, generator=g).mul_(0.05).add_(old)
    entropy = torch.rand(B, T, generator=g).mul_(float(torch.log(torch.tensor(float(VOCAB)))))
    adv = torch.randn(B, generator=g)
    out = [t.to(device) for t in (logp, old, entropy, mask, adv)]
    out[0].requires_grad_(True)
    return out


def ppo_floor(logp, old_logp, entropy, mask, adv, eps=0.2):
    """Token-level PPO-clip (GRPO) surrogate, token mean: the floor."""
    log_r = torch.where(mask, logp, 0.0) - torch.where(mask, old_logp, 0.0)
    ratio = torch.exp(log_r)
    a = adv[:, None]
    surrogate = torch.minimum(ratio * a, torch.clamp(ratio, 1 - eps, 1 + eps) * a)
    return -torch.where(mask, surrogate, 0.0).sum() / mask.sum()


def load_before(tree):
    """The espo_ref package of another checkout, imported as ``espo_ref_before`` (its modules use
    relative imports only, so both versions live side by side)."""
    import importlib.util

    if "espo_ref_before" in sys.modules:
        return sys.modules["espo_ref_before"]
    package = Path(tree).resolve() / "espo_ref"
    if not (package / "__init__.py").is_file():
        raise SystemExit(f"--before: {tree} has no espo_ref/__init__.py")
    spec = importlib.util.spec_from_file_location("espo_ref_before", package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["espo_ref_before"] = module
    spec.loader.exec_module(module)
    importlib.import_module("espo_ref_before.torch")
    return module


def methods():
    espo_cfg = espo_ref.ESPOConfig(vocab_size=VOCAB)
    out = {"espo": lambda lp, o, e, m, a: et.espo_loss(lp, o, e, m, a, espo_cfg, validate=False).loss}
    gspo_cfg = espo_ref.ESPOConfig(vocab_size=VOCAB, grouping="none", clip="fixed",
                                   eps_low=3e-4, eps_high=4e-4)
    gspo_form = lambda lp, o, e, m, a: et.espo_loss(lp, o, e, m, a, gspo_cfg, validate=False).loss  # noqa: E731
    if hasattr(et, "gspo_loss"):
        out["gspo"] = lambda lp, o, e, m, a: et.gspo_loss(lp, o, m, a, validate=False).loss
        out["gspo_form"] = gspo_form
        gspo_kind = "espo_ref.torch.gspo_loss (gspo_form: espo_loss with grouping='none', fixed (3e-4, 4e-4))"
    else:
        out["gspo"] = gspo_form
        gspo_kind = "espo_loss(grouping='none', clip='fixed', eps=(3e-4, 4e-4))"
    if hasattr(et, "grpo_loss"):
        out["grpo"] = lambda lp, o, e, m, a: et.grpo_loss(lp, o, m, a, validate=False).loss
    out["ppo_floor"] = ppo_floor
    return out, gspo_kind


ISOLATED_ROUNDS = 5


def version_methods(tree: str | None) -> dict:
    """``espo`` and ``gspo`` of this checkout (tree None) or of the checkout at ``tree``."""
    pkg = espo_ref if tree is None else load_before(tree)
    cfg = pkg.ESPOConfig(vocab_size=VOCAB)
    return {"espo": lambda lp, o, e, m, a: pkg.torch.espo_loss(lp, o, e, m, a, cfg, validate=False).loss,
            "gspo": lambda lp, o, e, m, a: pkg.torch.gspo_loss(lp, o, m, a, validate=False).loss}


def time_in_child(tree: str | None, B: int, T: int, repeats: int) -> dict:
    """Run in a fresh process: the fastest fwd+bwd seconds of each of ``version_methods(tree)``."""
    fns = version_methods(tree)
    inputs = make_inputs(B, T, "cpu")
    out = {}
    for name, fn in fns.items():
        step(fn, inputs)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            step(fn, inputs)
            times.append(time.perf_counter() - t0)
        out[name] = min(times)
    return out


def isolated_before_after(tree: str, B: int, T: int, repeats: int) -> dict:
    """Medians over ISOLATED_ROUNDS alternating child processes of each version."""
    env = dict(os.environ, OMP_NUM_THREADS=str(torch.get_num_threads()))
    runs = {"now": [], "before": []}
    for round_ in range(ISOLATED_ROUNDS):
        pair = (("before", repr(tree)), ("now", "None"))
        for label, arg in (pair if round_ % 2 == 0 else pair[::-1]):
            code = (f"import sys, json, torch; torch.set_num_threads({torch.get_num_threads()}); "
                    f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import loss_overhead as b; "
                    f"print(json.dumps(b.time_in_child({arg}, {B}, {T}, {repeats})))")
            proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            runs[label].append(json.loads(proc.stdout.strip().splitlines()[-1]))
    row = {}
    for name in ("espo", "gspo"):
        ratios = [now[name] / before[name] for now, before in zip(runs["now"], runs["before"])]
        row.update({f"{name}_isolated_s": statistics.median(r[name] for r in runs["now"]),
                    f"{name}_before_isolated_s": statistics.median(r[name] for r in runs["before"]),
                    f"{name}_after_over_before_rounds": ratios,
                    f"{name}_after_over_before_time": statistics.median(ratios)})
    return row


def step(fn, inputs):
    inputs[0].grad = None
    fn(*inputs).backward()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def high_water_bytes() -> int:
    """VmHWM, the peak resident set (what ``ru_maxrss`` reports), from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def cpu_peak_child(name, B, T) -> int:
    """Run in a subprocess: the resident-set growth of one fwd+bwd of ``name``.

    The high-water mark is reset first (``5 > /proc/self/clear_refs``): a child inherits its
    parent's ru_maxrss across fork and exec, so without the reset it reports the parent's.
    """
    fns, _ = methods()
    inputs = make_inputs(B, T, "cpu")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = rss_bytes()
    step(fns[name], inputs)
    return max(0, high_water_bytes() - base)


def peak_bytes(name, fn, inputs, B, T, device) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(fn, inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    code = (f"import sys; sys.argv=['x']; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
            f"import loss_overhead as b; print(b.cpu_peak_child({name!r}, {B}, {T}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def measure(B, T, device, repeats):
    fns, _ = methods()
    inputs = make_inputs(B, T, device)
    for fn in fns.values():  # warm-up (allocator, kernels)
        step(fn, inputs)
    times = {name: [] for name in fns}
    cpu_times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            c0, t0 = time.process_time(), time.perf_counter()
            step(fn, inputs)
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu_times[name].append(time.process_time() - c0)
    row = {"B": B, "T": T, "tokens": B * T, "repeats": repeats}
    for name, fn in fns.items():
        row[f"{name}_s"] = statistics.median(times[name])
        row[f"{name}_cpu_s"] = statistics.median(cpu_times[name])
        row[f"{name}_peak_bytes"] = peak_bytes(name, fn, inputs, B, T, device)
    row["espo_over_gspo_time"] = row["espo_s"] / row["gspo_s"]
    row["espo_over_gspo_memory"] = row["espo_peak_bytes"] / max(row["gspo_peak_bytes"], 1)
    row["espo_over_floor_time"] = row["espo_s"] / row["ppo_floor_s"]
    if "gspo_form_s" in row:
        row["espo_over_gspo_form_time"] = row["espo_s"] / row["gspo_form_s"]
    row["within_target"] = row["espo_over_gspo_time"] <= TARGET[device]
    before = os.environ.get("ESPO_BENCH_BEFORE")
    if before and device == "cpu":
        row.update(isolated_before_after(before, B, T, repeats))
    return row


def format_table(rows, names) -> str:
    head = f"{'B x T':>12} " + " ".join(f"{n + ' ms':>12}" for n in names) + \
        f" {'espo/gspo':>9} {'e/gspo_form':>11} {'espo/floor':>10} " + " ".join(f"{n + ' MiB':>13}" for n in names) + f" {'mem e/g':>7}"
    if rows and "espo_after_over_before_time" in rows[0]:
        head += f" {'espo now/before':>15} {'gspo now/before':>15}"
    lines = [head]
    for r in rows:
        lines.append(f"{r['B']:>5} x {r['T']:<5}"
                     + " ".join(f"{1e3 * r[n + '_s']:>12.2f}" for n in names)
                     + f" {r['espo_over_gspo_time']:>9.2f} {r.get('espo_over_gspo_form_time', float('nan')):>11.2f}"
                     + f" {r['espo_over_floor_time']:>10.2f} "
                     + " ".join(f"{r[n + '_peak_bytes'] / 2**20:>13.1f}" for n in names)
                     + f" {r['espo_over_gspo_memory']:>7.2f}"
                     + ("" if "espo_after_over_before_time" not in r else
                        f" {r['espo_after_over_before_time']:>15.3f} {r['gspo_after_over_before_time']:>15.3f}"))
    return "\n".join(lines)


def before_lines(payload: dict) -> str:
    """The markdown of the --before comparison (empty without one)."""
    if not payload.get("before"):
        return ""
    lines = [f"\nNow against {payload['before']['commit']} (`--before`), each version in its own processes, "
             f"{ISOLATED_ROUNDS} alternating rounds, the fastest call of each process; the ratio is the median "
             "of the within-round ratios:\n"]
    for r in payload["rows"]:
        for name in ("espo", "gspo"):
            if f"{name}_after_over_before_time" in r:
                rounds = ", ".join(f"{x:.3f}" for x in r[f"{name}_after_over_before_rounds"])
                lines.append(f"- {r['B']} x {r['T']} {name}: {1e3 * r[f'{name}_isolated_s']:.2f} ms now, "
                             f"{1e3 * r[f'{name}_before_isolated_s']:.2f} ms before; ratio "
                             f"{r[f'{name}_after_over_before_time']:.3f} (rounds {rounds})\n")
    return "".join(lines)


RATIO_TARGETS = {"eager": 1.3, "eager_validated": 1.5}


def ratio_methods() -> dict:
    """ESPO and GSPO as a training step calls them: forward, backward and a read of the metrics
    (their one device-to-host transfer); eager without and with validation, and compiled
    (``torch.compile(..., fullgraph=True)``, validate=False)."""
    cfg = espo_ref.ESPOConfig(vocab_size=VOCAB)
    gspo_cfg = espo_ref.baselines.GSPOConfig()
    espo = lambda v: lambda lp, o, e, m, a: et.espo_loss(lp, o, e, m, a, cfg, validate=v)  # noqa: E731
    gspo = lambda v: lambda lp, o, e, m, a: et.gspo_loss(lp, o, m, a, gspo_cfg, validate=v)  # noqa: E731
    espo_compiled = torch.compile(et.espo_loss, fullgraph=True)
    gspo_compiled = torch.compile(et.gspo_loss, fullgraph=True)
    return {
        "espo": espo(False), "gspo": gspo(False),
        "espo_validated": espo(True), "gspo_validated": gspo(True),
        "espo_compiled": lambda lp, o, e, m, a: espo_compiled(lp, o, e, m, a, cfg, validate=False),
        "gspo_compiled": lambda lp, o, e, m, a: gspo_compiled(lp, o, m, a, gspo_cfg, validate=False),
    }


def train_step(fn, inputs):
    inputs[0].grad = None
    result = fn(*inputs)
    result.loss.backward()
    dict(result.metrics)


def count_syncs(fn, inputs) -> tuple[int, int]:
    """CUDA only: the host syncs of one loss + backward, and of the metrics' first read
    (``torch.cuda.set_sync_debug_mode("warn")`` warns once per synchronizing call)."""
    import warnings

    def synced(action) -> int:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("warn")
            try:
                value = action()
            finally:
                torch.cuda.set_sync_debug_mode(0)
        synced.value = value
        return sum("synchroniz" in str(w.message) for w in caught)

    inputs[0].grad = None
    in_loss = synced(lambda: _loss_and_backward(fn, inputs))
    in_read = synced(lambda: dict(synced.value.metrics))
    return in_loss, in_read


def _loss_and_backward(fn, inputs):
    result = fn(*inputs)
    result.loss.backward()
    return result


def measure_ratios(B, T, rounds, repeats, device="cpu") -> dict:
    """Fastest fwd + bwd + metrics read of each method over ``rounds`` rounds, the methods'
    order alternating between rounds (so drift in the machine's speed hits all alike); on CUDA
    also each method's host syncs per call."""
    fns = ratio_methods()
    inputs = make_inputs(B, T, device)
    for fn in fns.values():  # warm-up: allocator, and the compilations
        train_step(fn, inputs)
        train_step(fn, inputs)
    best = {name: float("inf") for name in fns}
    order = list(fns)
    for round_ in range(rounds):
        for name in (order if round_ % 2 == 0 else order[::-1]):
            for _ in range(repeats):
                sync(device)
                t0 = time.perf_counter()
                train_step(fns[name], inputs)
                sync(device)
                best[name] = min(best[name], time.perf_counter() - t0)
    row = {"B": B, "T": T, "rounds": rounds, "repeats": repeats, **{f"{n}_s": t for n, t in best.items()}}
    if device == "cuda":
        for name, fn in fns.items():
            row[f"{name}_syncs_loss"], row[f"{name}_syncs_metrics"] = count_syncs(fn, inputs)
    row["espo_over_gspo"] = best["espo"] / best["gspo"]
    row["espo_over_gspo_validated"] = best["espo_validated"] / best["gspo_validated"]
    row["espo_compiled_over_eager"] = best["espo_compiled"] / best["espo"]
    row["espo_compiled_over_gspo_compiled"] = best["espo_compiled"] / best["gspo_compiled"]
    if device == "cpu":
        row.update(mask_probe(B, T))
    row["within_targets"] = (row["espo_over_gspo"] <= RATIO_TARGETS["eager"]
                             and row["espo_over_gspo_validated"] <= RATIO_TARGETS["eager_validated"]
                             and row["espo_compiled_over_eager"] < 1.0)
    return row


def mask_probe(B, T, repeats=10) -> dict:
    """What inductor's CPU code makes of boolean masks on this machine: ``(x > y) & mask`` and a
    masked row sum, eager against compiled (the losses write several boolean [B, T] fields)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(B, T, generator=g), torch.rand(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    probes = {"mask_and": lambda x, y, m: (x > y) & m, "mask_sum": lambda x, y, m: (x * m.to(x.dtype)).sum(1)}
    out = {}
    for name, fn in probes.items():
        for kind, f in (("eager", fn), ("compiled", torch.compile(fn, fullgraph=True))):
            f(x, y, mask)
            best = float("inf")
            for _ in range(repeats):
                t0 = time.perf_counter()
                f(x, y, mask)
                best = min(best, time.perf_counter() - t0)
            out[f"probe_{name}_{kind}_s"] = best
    return out


def ratios_main(args) -> int:
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    rows = []
    for size in args.sizes.split(","):
        B, T = (int(x) for x in size.lower().split("x"))
        rows.append(measure_ratios(B, T, args.rounds, args.repeats or 3, device))
    names = ("espo", "gspo", "espo_validated", "gspo_validated", "espo_compiled", "gspo_compiled")
    head = f"{'B x T':>12} " + " ".join(f"{n + ' ms':>20}" for n in names) + \
        f" {'espo/gspo':>9} {'validated':>9} {'compiled/eager':>14} {'compiled e/g':>12} {'targets':>7}"
    lines = [head] + [
        f"{r['B']:>5} x {r['T']:<5}" + " ".join(f"{1e3 * r[n + '_s']:>20.2f}" for n in names)
        + f" {r['espo_over_gspo']:>9.3f} {r['espo_over_gspo_validated']:>9.3f} {r['espo_compiled_over_eager']:>14.3f}"
        + f" {r['espo_compiled_over_gspo_compiled']:>12.3f} {'met' if r['within_targets'] else 'MISSED':>7}"
        for r in rows]
    if device == "cuda":
        lines.append("")
        lines.append("host syncs per call (loss + backward / first metrics read): " + "; ".join(
            f"{r['B']} x {r['T']} " + ", ".join(f"{n} {r[n + '_syncs_loss']}/{r[n + '_syncs_metrics']}" for n in names)
            for r in rows))
    else:
        lines.append("")
        lines.append("inductor on boolean masks, same run (ms, eager / compiled): " + "; ".join(
        f"{r['B']} x {r['T']} (x > y) & mask {1e3 * r['probe_mask_and_eager_s']:.2f} / "
        f"{1e3 * r['probe_mask_and_compiled_s']:.2f}, masked row sum {1e3 * r['probe_mask_sum_eager_s']:.2f} / "
        f"{1e3 * r['probe_mask_sum_compiled_s']:.2f}" for r in rows))
    table = "\n".join(lines)
    print(table)
    machine = machine_info()
    machine["device"] = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    machine["torch_threads"] = torch.get_num_threads()
    machine["load_average_at_end"] = os.getloadavg()
    command = f"python bench/loss_overhead.py --ratios --device {device} " + " ".join(
        f"--{k} {v}" for k, v in (("sizes", args.sizes), ("threads", args.threads), ("rounds", args.rounds),
                                   ("repeats", args.repeats or 3)))
    payload = {"benchmark": "loss_overhead_ratios", "espo_ref": espo_ref.__version__, "machine": machine,
               "command": command, "dtype": "float32", "targets": RATIO_TARGETS, "note": args.note,
               "what": "fastest forward + backward + metrics read of each loss over alternating rounds, "
                       "same inputs, same process; espo/gspo eager with validate=False, 'validated' with "
                       "validate=True, compiled = torch.compile(fullgraph=True), validate=False",
               "rows": rows}
    head = "\n".join(f"- {k}: {v}" for k, v in machine.items())
    md = (f"# loss_overhead ratios ({device})\n\n{head}\n\n- command: `{command}`\n"
          f"- targets: espo/gspo <= {RATIO_TARGETS['eager']} eager (validate=False), <= "
          f"{RATIO_TARGETS['eager_validated']} validated, compiled espo faster than eager espo\n"
          + (f"- note: {args.note}\n" if args.note else "")
          + f"- what: {payload['what']}\n\n```\n{table}\n```\n")
    for folder in [ROOT / "bench" / "results"] + ([Path(args.out)] if args.out else []):
        write_atomic(folder / f"loss_overhead_ratios_{device}.json", json.dumps(payload, indent=2, sort_keys=True) + "\n")
        write_atomic(folder / f"loss_overhead_ratios_{device}.md", md)
    return 0 if all(r["within_targets"] for r in rows) else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default=",".join(f"{b}x{t}" for b, t in SIZES))
    parser.add_argument("--repeats", type=int, default=None, help="default: 20 on CUDA, 5 on CPU")
    parser.add_argument("--out", default=os.environ.get("OUT") or None, help="extra output folder")
    parser.add_argument("--note", default="", help="free text stored with the results")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (cpu device only)")
    parser.add_argument("--before", default=None, help="another checkout to time beside this one")
    parser.add_argument("--ratios", action="store_true",
                        help="ESPO/GSPO eager, validated and compiled, fastest of alternating rounds (and on "
                             "cuda the host syncs per call); writes loss_overhead_ratios_<device>.{json,md}; "
                             "exit 1 when a target is missed")
    parser.add_argument("--rounds", type=int, default=7, help="--ratios: alternating rounds")
    args = parser.parse_args(argv)
    if args.ratios:
        return ratios_main(args)
    if args.before:
        os.environ["ESPO_BENCH_BEFORE"] = str(Path(args.before).resolve())  # the memory subprocesses read it
        load_before(args.before)
    device = args.device
    if device == "cpu":
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (20 if device == "cuda" else 5)
    names = list(methods()[0])
    rows, skipped = [], []
    for size in args.sizes.split(","):
        B, T = (int(x) for x in size.lower().split("x"))
        if device == "cpu" and B * T * BYTES_PER_TOKEN > CPU_BUDGET_BYTES:
            msg = f"{B} x {T} skipped: ~{B * T * BYTES_PER_TOKEN / 2**30:.1f} GiB > 24 GiB CPU budget"
            print(msg, flush=True)
            skipped.append(msg)
            continue
        row = measure(B, T, device, repeats)
        rows.append(row)
        print(format_table([row], names).splitlines()[-1], flush=True)
    table = format_table(rows, names)
    print()
    print(table)
    machine = machine_info()
    machine["device"] = torch.cuda.get_device_name(0) if device == "cuda" else f"cpu ({os.cpu_count()} cores)"
    machine["torch_threads"] = torch.get_num_threads()
    try:
        machine["load_average_at_end"] = os.getloadavg()
    except OSError:
        pass
    payload = {
        "benchmark": "loss_overhead", "espo_ref": espo_ref.__version__,
        "spec_version": espo_ref.SPEC_VERSION, "device": device, "machine": machine,
        "gspo_peer": methods()[1], "dtype": "float32", "validate": False,
        "target_espo_over_gspo_time": TARGET[device],
        "what": "forward + backward of each loss on the same inputs; median wall time over "
                "interleaved repeats (cuda: synchronize around each); peak memory: cuda "
                "max_memory_allocated above the baseline, cpu resident-set growth "
                "(VmHWM/ru_maxrss after a clear_refs reset, minus the RSS before) in a fresh "
                "subprocess per method and size",
        "note": args.note, "skipped": skipped, "rows": rows,
        "before": None if not args.before else {
            "tree": str(Path(args.before).resolve()),
            "commit": subprocess.run(["git", "-C", args.before, "rev-parse", "HEAD"], capture_output=True,
                                     text=True).stdout.strip() or None},
    }
    text = json.dumps(payload, indent=2, sort_keys=True) + "\n"
    head = "\n".join(f"- {k}: {v}" for k, v in machine.items())
    md = (f"# loss_overhead ({device})\n\n{head}\n\n- gspo peer: {payload['gspo_peer']}\n"
          f"- target: espo/gspo time <= {TARGET[device]}\n"
          + (f"- note: {args.note}\n" if args.note else "")
          + "".join(f"- {s}\n" for s in skipped) + f"\n```\n{table}\n```\n" + before_lines(payload))
    folders = [ROOT / "bench" / "results"] + ([Path(args.out)] if args.out else [])
    for folder in folders:
        write_atomic(folder / f"loss_overhead_{device}.json", text)
        write_atomic(folder / f"loss_overhead_{device}.md", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
