#!/usr/bin/env python3
"""Measures the device's two roofline ceilings with PyTorch, for machines with PyTorch but no Node.

Prints JSON that `mla-cuda bench --ceilings-file FILE` reads:
  {"bandwidthTBs": ..., "matmulTFlops": ..., "device": ..., ...}

  python3 bench/torch_ceilings.py > $OUT/ceilings.json

Bandwidth: a device-to-device copy of a 1 GiB buffer (a quarter of free memory when that is
less), counting bytes read + bytes written. Matmul: the best dense bf16 torch.matmul rate over a
few large square-ish shapes (2·m·n·k FLOP). Both: CUDA events around each run, warm-up first,
median over the runs, random (never zero) inputs.
"""
import argparse
import json
import statistics
import sys

import torch


def time_runs(fn, warmup_ms: float, repeats: int) -> list:
    """Per-run milliseconds from CUDA events, after roughly warmup_ms of warm-up."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    spent, batch = 0.0, 1
    while spent < warmup_ms:
        start.record()
        for _ in range(batch):
            fn()
        end.record()
        end.synchronize()
        spent += start.elapsed_time(end)
        batch = min(batch * 2, 1024)
    events = [torch.cuda.Event(enable_timing=True) for _ in range(repeats + 1)]
    events[0].record()
    for i in range(repeats):
        fn()
        events[i + 1].record()
    torch.cuda.synchronize()
    return [events[i].elapsed_time(events[i + 1]) for i in range(repeats)]


def summary(ms: list) -> dict:
    s = sorted(ms)
    return {"medianUs": statistics.median(s) * 1e3, "minUs": s[0] * 1e3, "maxUs": s[-1] * 1e3, "n": len(s)}


def copy_bandwidth(warmup_ms: float, repeats: int) -> dict:
    free, _ = torch.cuda.mem_get_info()
    nbytes = min(1 << 30, free // 4)
    n = nbytes // 4
    src = torch.randn(n, device="cuda", dtype=torch.float32)
    dst = torch.empty_like(src)
    ms = time_runs(lambda: dst.copy_(src), warmup_ms, repeats)
    med = statistics.median(ms)
    return {"bandwidthTBs": 2 * n * 4 / (med * 1e-3) / 1e12, "bytes": n * 4, **summary(ms)}


def matmul_rate(warmup_ms: float, repeats: int, shapes) -> dict:
    best = None
    for m, n, k in shapes:
        a = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(k, n, device="cuda", dtype=torch.bfloat16)
        c = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        ms = time_runs(lambda: torch.matmul(a, b, out=c), warmup_ms, repeats)
        tflops = 2 * m * n * k / (statistics.median(ms) * 1e-3) / 1e12
        row = {"matmulTFlops": tflops, "shape": [m, n, k], **summary(ms)}
        print(f"bf16 matmul {m}x{n}x{k}: {tflops:.1f} TFLOP/s", file=sys.stderr)
        if best is None or tflops > best["matmulTFlops"]:
            best = row
        del a, b, c
        torch.cuda.empty_cache()
    return best


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--warmup-ms", type=float, default=200.0, help="warm-up per measurement, milliseconds")
    p.add_argument("--repeats", type=int, default=50, help="timed runs; the median is reported")
    p.add_argument("--device", type=int, default=0)
    args = p.parse_args()
    if not torch.cuda.is_available():
        print("torch_ceilings.py: no CUDA device visible to PyTorch", file=sys.stderr)
        return 2
    torch.cuda.set_device(args.device)
    # Plain bf16 GEMMs: no TF32 shortcuts, no reduced-precision reductions.
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    props = torch.cuda.get_device_properties(args.device)
    copy = copy_bandwidth(args.warmup_ms, args.repeats)
    print(f"copy {copy['bytes'] / 2**30:.2f} GiB: {copy['bandwidthTBs']:.3f} TB/s", file=sys.stderr)
    mm = matmul_rate(args.warmup_ms, args.repeats, [(8192, 8192, 8192), (4096, 4096, 4096), (8192, 8192, 4096), (16384, 8192, 8192)])
    print(json.dumps({
        "bandwidthTBs": copy["bandwidthTBs"],
        "matmulTFlops": mm["matmulTFlops"],
        "device": props.name,
        "computeCapability": f"{props.major}.{props.minor}",
        "source": "bench/torch_ceilings.py",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "copy": copy,
        "matmul": mm,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
