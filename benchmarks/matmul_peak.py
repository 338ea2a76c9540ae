"""Measures this machine's float32 matmul throughput with XLA: the denominator of MFU on CPU.

  python benchmarks/matmul_peak.py [--sizes 512 1024 2048] [--repeats 20]

Prints a table and a JSON line. The peak is the best of the sizes tried: square matmuls of that
size, timed after one warm-up call, median over `repeats` calls.
"""

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp


def measure(n: int, repeats: int) -> float:
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).block_until_ready()
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rows = [(n, measure(n, args.repeats)) for n in args.sizes]
    print(f"{'size':>6} {'GFLOP/s':>10}")
    for n, flops in rows:
        print(f"{n:>6} {flops / 1e9:>10.1f}")
    peak = max(f for _, f in rows)
    print(json.dumps({"benchmark": "matmul_peak", "device": str(jax.devices()[0]),
                      "machine": platform.machine(), "peak_gflops": round(peak / 1e9, 1),
                      "by_size": {n: round(f / 1e9, 1) for n, f in rows}}))


if __name__ == "__main__":
    main()
