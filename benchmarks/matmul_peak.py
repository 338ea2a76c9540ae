"""Measures this machine's float32 matmul throughput with XLA: the denominator of MFU on CPU.

  python benchmarks/matmul_peak.py [--sizes 512 1024 2048] [--repeats 10] [--cached | --remeasure]

Prints a table and a JSON line. Each size runs the probe the training loop uses
(`jaxmodels.accounting.hardware.measure_matmul_flops`: one square matmul on every local CPU device at
once, best of `repeats` after a warm-up). `--cached` also prints the per-device figure MFU is
computed against, measuring and caching it first if this machine has none; `--remeasure` measures
it again and caches the higher value (run it when the machine is quiet: a busy one reads low).
"""

import argparse
import json
import platform

from jaxmodels.accounting import hardware


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=hardware.PROBE_REPEATS)
    parser.add_argument("--cached", action="store_true", help="also print the cached peak MFU uses")
    parser.add_argument("--remeasure", action="store_true", help="measure the cached peak again, keep the higher")
    args = parser.parse_args()
    rows = [(n, hardware.measure_matmul_flops(n, args.repeats)) for n in args.sizes]
    print(f"{'size':>6} {'GFLOP/s':>10}")
    for n, flops in rows:
        print(f"{n:>6} {flops / 1e9:>10.1f}")
    out = {"benchmark": "matmul_peak", **hardware.machine_key(), "machine": platform.machine(),
           "peak_gflops": round(max(f for _, f in rows) / 1e9, 1),
           "by_size": {n: round(f / 1e9, 1) for n, f in rows}}
    if args.cached or args.remeasure:
        peak = hardware.cpu_peak(remeasure=args.remeasure)
        out["cached_gflops_per_device"] = round(peak.flops_per_s / 1e9, 1)
        out["cached_source"] = peak.source
    print(json.dumps(out))


if __name__ == "__main__":
    main()
