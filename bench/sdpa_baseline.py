#!/usr/bin/env python3
"""Times PyTorch scaled_dot_product_attention on the shapes of the `prefill` bench suite, so
mla-cuda's prefill attention kernel can be compared on the same GPU.

Shape per case: one request of n tokens, H heads, causal, q/k head dim 192 (128 nope + 64 rope),
v head dim 128, bf16 (or f16). FLOPs are counted exactly as lib/bench/prefill.ts does:

    flops = 2 * H * (192 + 128) * n * (n + 1) / 2

(only the unmasked pairs of the causal mask). SDPA is given materialised per-head K [n, H, 192]
(the rope key broadcast to every head, which mla-cuda never materialises) and V [n, H, 128]; the
time covers the attention call alone, which is what `mla-cuda bench prefill` reports as "main".

Usage:
    python bench/sdpa_baseline.py                      # default grid, bf16, all backends
    python bench/sdpa_baseline.py --n 512 4096 --h 16 --dtype f16 --backend flash
    python bench/sdpa_baseline.py --json > sdpa.json

Notes: FlashAttention-2 in PyTorch requires equal q/k/v head dims on some versions, so the
flash backend may refuse d_qk = 192 != d_v = 128; the script then reports that backend as
unavailable and the efficient / cuDNN / math backends still run. Pad V to 192 with --pad-v to
time the flash backend anyway (the extra 64 columns are counted as wasted work, not FLOPs).
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

BACKENDS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "math": SDPBackend.MATH,
}


def flops(n: int, h: int) -> float:
    return 2.0 * h * (192 + 128) * n * (n + 1) / 2


def time_case(n: int, h: int, dtype: torch.dtype, backend: str, pad_v: bool, warmup: int, iters: int):
    dev = "cuda"
    scale = 1.0 / math.sqrt(192)
    # [1, H, n, d]: SDPA's (batch, heads, seq, dim) layout, as a view of [n, H, d] storage like
    # mla-cuda's [T, H, d] tensors.
    q = torch.randn(n, h, 192, device=dev, dtype=dtype).transpose(0, 1).unsqueeze(0)
    k = torch.randn(n, h, 192, device=dev, dtype=dtype).transpose(0, 1).unsqueeze(0)
    dv = 192 if pad_v else 128
    v = torch.randn(n, h, dv, device=dev, dtype=dtype).transpose(0, 1).unsqueeze(0)
    # Same length for q and k: PyTorch's is_causal is top-left aligned, which coincides with
    # mla-cuda's bottom-right alignment only when s_q == s_k (no cached prefix), as here.
    run = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    with sdpa_kernel([BACKENDS[backend]]):
        try:
            for _ in range(warmup):
                run()
            torch.cuda.synchronize()
        except RuntimeError as err:  # backend refuses these shapes / dtype / arch
            return {"error": str(err).splitlines()[0][:200]}
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(iters):
            start.record()
            run()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1000.0)  # µs
    times.sort()
    med = times[len(times) // 2]
    return {"us_median": med, "us_min": times[0], "tflops": flops(n, h) / med / 1e6}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[512, 1024, 2048, 4096, 8192, 16384, 32768])
    ap.add_argument("--h", type=int, nargs="+", default=[128, 16])
    ap.add_argument("--dtype", choices=["bf16", "f16"], default="bf16")
    ap.add_argument("--backend", choices=list(BACKENDS) + ["all"], default="all")
    ap.add_argument("--pad-v", action="store_true", help="pad V to 192 columns (lets the flash backend run)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    backends = list(BACKENDS) if args.backend == "all" else [args.backend]
    rows = []
    for h in args.h:
        for n in args.n:
            for b in backends:
                if b == "math" and n * n * h > 2**32:  # the math backend materialises n×n scores
                    continue
                r = time_case(n, h, dtype, b, args.pad_v, args.warmup, args.iters)
                r.update({"name": f"prefill n{n} h{h} {args.dtype}", "n": n, "h": h, "backend": b, "flops": flops(n, h)})
                rows.append(r)
                if not args.json:
                    if "error" in r:
                        print(f"{r['name']:<28} {b:<10} unavailable: {r['error']}")
                    else:
                        print(f"{r['name']:<28} {b:<10} {r['us_median']:>12.1f} µs {r['tflops']:>8.1f} TFLOP/s")
                torch.cuda.empty_cache()
    if args.json:
        json.dump({"device": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, sys.stdout, indent=1)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
