"""XLA's CPU matmuls against PyTorch's at the shapes of the suite's Transformer training steps.

  python benchmarks/matmul_shapes.py [--only gpt_6l,gpt_4l,vit] [--repeats 5] [--json OUT]
  python benchmarks/matmul_shapes.py --smoke --json OUT     # toy shapes, one repeat (the tests)

Why: the step ablations (README, Performance) left the small Transformers' gap to PyTorch in
their matmuls and attention, not in the framework. This script isolates the matmuls. For each
workload in benchmarks/workloads.py it takes the row count R (batch x tokens), the width D, the
MLP width F, the heads H and the tokens T, and times the products one layer's forward and
backward run:

  x W        [R, D] x [D, F]            the MLP's up projection (forward, "NN")
  x^T dY     [R, D]^T x [R, F]          its weight gradient (contracts the rows, "TN")
  dY W^T     [R, F] x [D, F]^T          its input gradient ("NT")
  P V        [B*H, T, T] x [B*H, T, Dh] attention's batched product of probabilities and values
  P^T dO     [B*H, T, T]^T x [B*H, T, Dh]  its gradient for the values (batched "TN")

The JAX side is one jitted jnp product per case, under the XLA CPU flags a jaxmodels run gets
(runtime.configure_xla_flags, unless XLA_FLAGS is set). The PyTorch side (if installed: `pip
install -e .[bench]`) is the same product on tensors (oneDNN/MKL, all cores). The two alternate
A B A B (after one call each whose results must agree to 1e-4 of the largest entry),
`--repeats` rounds of `--calls` calls; a round's time is its fastest call, and the table
gives the median round in milliseconds and GFLOP/s, and XLA's throughput over PyTorch's.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import bench_json

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the repository's jaxmodels over an installed one

SUITE = ("gpt_6l", "gpt_4l", "vit")


def dims(name: str, shape: dict) -> dict:
    """R, D, F, B, H, T of a workload's shape (workloads.py's keys)."""
    if name.startswith("gpt"):
        b, t, d = shape["batch"], shape["seq_len"], shape["width"]
        f = 4 * d  # TransformerLMConfig's default MLP width
    else:  # the ViT: (28 / patch)^2 patches of an MNIST image, mean-pooled (no class token)
        b, t, d, f = shape["batch"], (28 // shape["patch"]) ** 2, shape["width"], shape["ff"]
    return dict(R=b * t, D=d, F=f, B=b, H=shape["heads"], T=t)


def cases(n: dict) -> list[tuple[str, str, tuple, tuple, float]]:
    """(label, einsum, lhs shape, rhs shape, FLOPs) per product."""
    r, d, f, bh, t = n["R"], n["D"], n["F"], n["B"] * n["H"], n["T"]
    dh = d // n["H"]
    return [
        ("x W", "rd,df->rf", (r, d), (d, f), 2.0 * r * d * f),
        ("x^T dY", "rd,rf->df", (r, d), (r, f), 2.0 * r * d * f),
        ("dY W^T", "rf,df->rd", (r, f), (d, f), 2.0 * r * d * f),
        ("P V", "bts,bsd->btd", (bh, t, t), (bh, t, dh), 2.0 * bh * t * t * dh),
        ("P^T dO", "bts,btd->bsd", (bh, t, t), (bh, t, dh), 2.0 * bh * t * t * dh),
    ]


def time_calls(call, sync, calls: int) -> float:
    best = float("inf")
    for _ in range(calls):
        t0 = time.perf_counter()
        sync(call())
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(SUITE), help="comma-separated workloads")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--calls", type=int, default=20)
    p.add_argument("--smoke", action="store_true", help="toy shapes, one repeat of 2 calls")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    import workloads

    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in SUITE]
    if bad:
        raise SystemExit(f"--only: unknown workload {bad[0]!r}; choose from {', '.join(SUITE)}")
    mode = "smoke" if args.smoke else "quick"
    repeats, calls = (1, 2) if args.smoke else (args.repeats, args.calls)

    from jaxmodels import runtime

    flags = runtime.configure_xla_flags()
    import jax
    import jax.numpy as jnp
    import numpy as np

    try:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    except ImportError:
        torch = None

    rng = np.random.default_rng(0)
    rows = []
    for name in names:
        shape = workloads.get("gpt_6l" if args.smoke and name.startswith("gpt") else name, mode).shape
        for label, spec, lhs, rhs, flops in cases(dims(name, shape)):
            a = rng.standard_normal(lhs, dtype=np.float32)
            b = rng.standard_normal(rhs, dtype=np.float32)
            ja, jb = jnp.asarray(a), jnp.asarray(b)
            product = jax.jit(lambda x, y, spec=spec: jnp.einsum(spec, x, y))
            runners = {"xla": (lambda: product(ja, jb), jax.block_until_ready)}
            if torch is not None:
                ta, tb = torch.from_numpy(a), torch.from_numpy(b)
                runners["torch"] = (lambda: torch.einsum(spec, ta, tb), lambda out: out)
            outs = {k: np.asarray(sync(call())) for k, (call, sync) in runners.items()}  # compile
            rel_diff = None
            if "torch" in outs:  # the two sides must compute the same product
                rel_diff = float(np.max(np.abs(outs["xla"] - outs["torch"])) / np.max(np.abs(outs["torch"])))
                if not rel_diff < 1e-4:
                    raise SystemExit(f"{name} {label}: XLA and PyTorch differ by {rel_diff:.2e} "
                                     f"(relative to the largest entry): not the same product")
            rounds = {k: [] for k in runners}
            for _ in range(repeats):
                for k, (call, sync) in runners.items():
                    rounds[k].append(time_calls(call, sync, calls))
            row = {"workload": name, "product": label, "einsum": spec, "lhs": list(lhs),
                   "rhs": list(rhs), "gflop": flops / 1e9, "rel_diff": rel_diff}
            for k, ts in rounds.items():
                row[f"{k}_ms"] = 1e3 * statistics.median(ts)
                row[f"{k}_gflops"] = flops / statistics.median(ts) / 1e9
            if "torch_ms" in row:
                row["xla_over_torch"] = row["xla_gflops"] / row["torch_gflops"]
            rows.append(row)

    print(f"{'workload':9} {'product':8} {'lhs x rhs':28} {'XLA ms':>8} {'torch ms':>9} "
          f"{'XLA GF/s':>9} {'torch GF/s':>10} {'XLA/torch':>9}")
    for r in rows:
        shapes = "x".join(map(str, r["lhs"])) + " . " + "x".join(map(str, r["rhs"]))
        t_ms, t_gf, ratio = (f"{r['torch_ms']:9.3f}", f"{r['torch_gflops']:10.0f}",
                             f"{r['xla_over_torch']:9.2f}") if "torch_ms" in r else ("-" * 9,) * 3
        print(f"{r['workload']:9} {r['product']:8} {shapes:28} {r['xla_ms']:8.3f} {t_ms:>9} "
              f"{r['xla_gflops']:9.0f} {t_gf:>10} {ratio:>9}")
    report = {"benchmark": "matmul_shapes", "mode": "smoke" if args.smoke else "full",
              "xla_flags": os.environ.get("XLA_FLAGS") if flags is None else flags,
              "jax": jax.__version__, "torch": None if torch is None else torch.__version__,
              "cpus": os.cpu_count(), "machine": platform.processor() or platform.machine(),
              "repeats": repeats, "calls": calls, "rows": rows}
    bench_json.emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
