"""Per-token log-probabilities and entropies from hidden states [ESPO-ENT]: ours vs the peers, one run.

Rows (each where it can run): ``matmul`` (the lm-head product alone, the floor), ``naive``
(full float32 logits, log_softmax, entropy), ``chunked`` (logits of ``--chunk`` rows at a
time, as TRL / verl's chunked path; autograd keeps every chunk for backward), ``ours-torch``
and ``ours-triton`` (espo_ref.torch.token_logprobs_and_entropy), ``verl`` (its fused Triton
``linear_cross_entropy``, logp + entropy) and ``liger`` (fused linear cross-entropy, logp
only) when importable.

Columns: forward (logp + entropy, no grad) and forward + backward (logp with a random
upstream gradient into hidden and weight; entropy computed alongside, detached) in
milliseconds; TFLOP/s counted on the nominal 2NVH (forward) and 6NVH (forward + the two
gradient products; the backward's recomputation of the logits is not counted, so without
materialising [N, V] a forward + backward costs at least 4 products, ``x mm`` >= 4); ``x mm``,
time over the lm-head product's; peak extra memory of forward + backward beyond the inputs
(CUDA: allocator peak, so it includes the returned gradients of hidden and weight, and
``-grads`` is the same less their size; CPU:
peak resident set (VmHWM, reset first) over the resident set before, in a
fresh subprocess).

    python bench/logprob_entropy.py                      # CUDA: N=16384 H=4096 V=151936 bf16
    python bench/logprob_entropy.py --n 1024 --h 128 --v 32768 --dtype float32   # CPU default
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import machine_info, median_time, write_results  # noqa: E402

from espo_ref.torch.logprob_entropy import default_chunk_size, token_logprobs_and_entropy, triton_available  # noqa: E402

CUDA = torch.cuda.is_available()
DEFAULT = dict(n=16384, h=4096, v=151_936, dtype="bfloat16", chunk=2048) if CUDA else \
    dict(n=1024, h=128, v=32768, dtype="float32", chunk=128)
TEMPERATURE = 1.0


def make_inputs(n, h, v, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    hidden = torch.randn(n, h, generator=g).to(dtype).to(device)
    weight = (torch.randn(v, h, generator=g) / h ** 0.5).to(dtype).to(device)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    grad_out = torch.randn(n, generator=g).to(device)
    return hidden, weight, targets, grad_out


# --------------------------------------------------------------------------- methods
# each: fn(hidden, weight, targets, grad) -> (logp, entropy or None)


def naive(hidden, weight, targets, chunk):
    logits = (hidden @ weight.t()).float() / TEMPERATURE
    logsm = torch.log_softmax(logits, dim=-1)
    logp = logsm.gather(1, targets[:, None])[:, 0]
    with torch.no_grad():
        entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


def chunked(hidden, weight, targets, chunk):
    logps, entropies = [], []
    for start in range(0, hidden.shape[0], chunk):
        lp, ent = naive(hidden[start:start + chunk], weight, targets[start:start + chunk], chunk)
        logps.append(lp)
        entropies.append(ent)
    return torch.cat(logps), torch.cat(entropies)


OURS_CHUNK = {"value": None}  # --ours-chunk: None = the library's default (1 GiB of float32 logits)


def ours(impl):
    def fn(hidden, weight, targets, chunk):
        return token_logprobs_and_entropy(hidden, weight, targets, TEMPERATURE, impl=impl,
                                          chunk_size=OURS_CHUNK["value"])
    return fn


def verl_fn():
    from verl.utils.kernel.linear_cross_entropy import linear_cross_entropy  # noqa: PLC0415

    def fn(hidden, weight, targets, chunk):
        logp, entropy = linear_cross_entropy(hidden, weight, targets, TEMPERATURE, "none")
        return logp, entropy.detach()
    return fn


def liger_fn():
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: PLC0415

    def fn(hidden, weight, targets, chunk):
        out = liger_fused_linear_cross_entropy(hidden, weight, targets, reduction="none")
        loss = out[0] if isinstance(out, tuple) else getattr(out, "loss", out)
        return -loss, None
    return fn


def methods(device) -> dict:
    out = {"naive": naive, "chunked": chunked, "ours-torch": ours("torch")}
    if device == "cuda":
        if triton_available():
            out["ours-triton"] = ours("triton")
        for name, make in (("verl", verl_fn), ("liger", liger_fn)):
            try:
                out[name] = make()
            except Exception as e:  # noqa: BLE001 - not installed / incompatible: reported, not fatal
                out[name] = f"not available: {type(e).__name__}: {e}"[:160]
    return out


# --------------------------------------------------------------------------- measurement


def sync():
    if CUDA:
        torch.cuda.synchronize()


def run_forward(fn, hidden, weight, targets, chunk):
    with torch.no_grad():
        fn(hidden, weight, targets, chunk)
    sync()


def run_backward(fn, hidden, weight, targets, grad_out, chunk):
    h = hidden.detach().requires_grad_()
    w = weight.detach().requires_grad_()
    logp, _ = fn(h, w, targets, chunk)
    logp.backward(grad_out.to(logp.dtype))
    sync()
    return h.grad, w.grad


def cuda_peak(thunk) -> int:
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = thunk()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def cpu_peak(args, method: str) -> int:
    """Growth of ru_maxrss (bytes) in a fresh process running one forward + backward of ``method``."""
    cmd = [sys.executable, __file__, "--rss-child", method, "--n", str(args.n), "--h", str(args.h),
           "--v", str(args.v), "--dtype", args.dtype, "--chunk", str(args.chunk)]
    if args.ours_chunk is not None:
        cmd += ["--ours-chunk", str(args.ours_chunk)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return int(json.loads(res.stdout.strip().splitlines()[-1])["peak_bytes"])


def rss_child(args) -> None:
    dtype = getattr(torch, args.dtype)
    hidden, weight, targets, grad_out = make_inputs(args.n, args.h, args.v, dtype, "cpu")
    fn = methods("cpu")[args.rss_child]
    run_backward(fn, hidden[:8], weight, targets[:8], grad_out[:8], args.chunk)  # warm up the allocator
    base = _reset_peak_rss()
    run_backward(fn, hidden, weight, targets, grad_out, args.chunk)
    print(json.dumps({"peak_bytes": _peak_rss() - base}))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> int:
    """Reset the kernel's peak-RSS mark (Linux >= 4.0: clear_refs 5); return the current RSS in bytes."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return _status_kib("VmRSS") * 1024
    except OSError:  # no reset: fall back to the high-water mark so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _peak_rss() -> int:
    try:
        return _status_kib("VmHWM") * 1024
    except (OSError, KeyError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def fmt(x, spec):
    return format(x, spec) if isinstance(x, (int, float)) else f"{x:>{spec.split('.')[0].lstrip('>')}}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for key, val in DEFAULT.items():
        parser.add_argument(f"--{key}", type=type(val), default=val)
    parser.add_argument("--repeats", type=int, default=5 if CUDA else 3)
    parser.add_argument("--ours-chunk", type=int, default=None if CUDA else DEFAULT["chunk"],
                        help="chunk_size for ours (default: the library default on CUDA, --chunk on CPU)")
    parser.add_argument("--name", default=None, help="results file stem (default logprob_entropy_cuda / _cpu)")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    OURS_CHUNK["value"] = args.ours_chunk
    if args.rss_child:
        return rss_child(args)
    device = "cuda" if CUDA else "cpu"
    dtype = getattr(torch, args.dtype)
    hidden, weight, targets, grad_out = make_inputs(args.n, args.h, args.v, dtype, device)
    flops_fwd = 2 * args.n * args.v * args.h
    logits_bytes = args.n * args.v * 4
    grads_bytes = (hidden.numel() + weight.numel()) * hidden.element_size()  # returned d hidden, d weight

    def mm():
        hidden @ weight.t()
        sync()

    t_mm = median_time(mm, args.repeats)
    rows = [{"method": "matmul", "fwd_ms": t_mm * 1e3, "fwd_tflops": flops_fwd / t_mm / 1e12, "fwd_x_mm": 1.0}]
    for name, fn in methods(device).items():
        row = {"method": name}
        rows.append(row)
        if isinstance(fn, str):
            row["error"] = fn
            continue
        try:
            t_f = median_time(lambda: run_forward(fn, hidden, weight, targets, args.chunk), args.repeats)
            t_b = median_time(lambda: run_backward(fn, hidden, weight, targets, grad_out, args.chunk), args.repeats)
            row.update(fwd_ms=t_f * 1e3, fwd_tflops=flops_fwd / t_f / 1e12, fwd_x_mm=t_f / t_mm,
                       fwdbwd_ms=t_b * 1e3, fwdbwd_tflops=3 * flops_fwd / t_b / 1e12, fwdbwd_x_mm=t_b / t_mm)
            if CUDA:
                row["peak_extra_bytes"] = cuda_peak(
                    lambda: run_backward(fn, hidden, weight, targets, grad_out, args.chunk))
            else:
                row["peak_extra_bytes"] = cpu_peak(args, name)
            row["peak_extra_excl_grads_bytes"] = row["peak_extra_bytes"] - grads_bytes
        except torch.cuda.OutOfMemoryError as e:
            row["error"] = f"OOM: {str(e).splitlines()[0][:120]}"
            torch.cuda.empty_cache()
        except Exception as e:  # noqa: BLE001 - a peer failing is a result, not a crash
            row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
        print(row, file=sys.stderr)
    header = (f"N={args.n} H={args.h} V={args.v} {args.dtype} on {device}; chunk {args.chunk} rows (chunked peer); "
              f"ours: chunk {args.ours_chunk or default_chunk_size(args.v)} rows; N x V float32 logits = "
              f"{logits_bytes / 2**30:.2f} GiB\n"
              f"{'method':<12} {'fwd ms':>9} {'TFLOP/s':>8} {'x mm':>6} {'f+b ms':>9} {'TFLOP/s':>8} {'x mm':>6} "
              f"{'peak MiB':>9} {'-grads':>9}")
    lines = [header]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['method']:<12} {r['error']}")
            continue
        peak = r.get("peak_extra_bytes")
        lines.append(f"{r['method']:<12} {r['fwd_ms']:>9.2f} {r['fwd_tflops']:>8.2f} {r['fwd_x_mm']:>6.2f} "
                     f"{fmt(r.get('fwdbwd_ms', '-'), '>9.2f')} {fmt(r.get('fwdbwd_tflops', '-'), '>8.2f')} "
                     f"{fmt(r.get('fwdbwd_x_mm', '-'), '>6.2f')} "
                     f"{fmt(peak / 2**20 if peak is not None else '-', '>9.1f')} "
                     f"{fmt(peak / 2**20 - grads_bytes / 2**20 if peak is not None else '-', '>9.1f')}")
    table = "\n".join(lines)
    print(table)
    name = args.name or f"logprob_entropy_{device}"
    payload = {"machine": machine_info(), "config": {k: getattr(args, k) for k in (*DEFAULT, "repeats", "ours_chunk")},
               "flops_forward": flops_fwd, "rows": rows}
    write_results(name, payload, table)


if __name__ == "__main__":
    main()
