"""Compile time of the GPT train step against depth with `scan_layers`: 48 layers vs 12.

  python benchmarks/compile_scan.py [--repeats 3] [--variants scan,scan_remat,unrolled]
                                    [--layers 12,48] [--json OUT]

With `scan_layers` the block is traced and compiled once and scanned over depth, so compile time
should hardly grow with depth (goal: 48 layers at most 1.5x 12 layers). Each (variant, depth,
repeat) is a fresh subprocess without a persistent compilation cache (traces and compiles are
cached in memory too), interleaved 12 48 12 48 ...; the time is split into trace+lower (Python:
model, loss, optimizer) and XLA's compile of the jitted train step, exactly as `jaxmodels train`
builds it (loop.setup). The model is narrow (width 64, 4 heads, context 64, batch 8): compile
time depends on the program's structure, not on the width.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import bench_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
VARIANTS = {
    "scan": ["model.scan_layers=true"],
    "scan_remat": ["model.scan_layers=true", "model.remat=true"],
    "unrolled": [],
}


def worker(variant: str, layers: int) -> None:
    import jax

    from jaxmodels import config as config_lib
    from jaxmodels.training import loop

    cfg = config_lib.apply_overrides(
        config_lib.load(os.path.join(ROOT, "experiments/configs/gpt_shakespeare.py")),
        [*VARIANTS[variant], f"model.num_layers={layers}", "model.d_model=64", "model.num_heads=4",
         "data.batch_size=8", "train.steps=10", "optimizer.warmup_steps=2"])
    s = loop.setup(cfg)
    state = jax.eval_shape(s.init_fn)
    batch = next(s.task.train_batches(cfg.train.seed))
    t0 = time.perf_counter()
    lowered = s.train_step.lower(state, batch)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    print("RESULT " + json.dumps({"lower_s": t1 - t0, "compile_s": t2 - t1}), flush=True)


def _launch(variant: str, layers: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, __file__, "--worker", variant, str(layers)], env=env,
                          capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{variant} x{layers} failed: {proc.stderr.strip()[-500:]}")


def _table(runs: dict, variants: list[str], depths: list[int]) -> tuple[str, dict]:
    """Medians per (variant, depth), and each depth's ratio to the first depth within the same
    repeat (neighbours in time, so the machine's load cancels), as median [min, max]."""
    rows = ["| variant | layers | trace+lower s | compile s | total s | total / first depth, "
            "paired: median [min, max] |", "|---|---|---|---|---|---|"]
    out = {}
    total = lambda x: x["lower_s"] + x["compile_s"]  # noqa: E731
    for v in variants:
        for d in depths:
            reps = runs[(v, d)]
            ratios = [total(x) / total(f) for x, f in zip(reps, runs[(v, depths[0])])]
            med = {k: statistics.median(x[k] for x in reps) for k in ("lower_s", "compile_s")}
            t = statistics.median(total(x) for x in reps)
            rows.append(f"| {v} | {d} | {med['lower_s']:.2f} | {med['compile_s']:.2f} | {t:.2f} | "
                        f"{statistics.median(ratios):.2f} [{min(ratios):.2f}, {max(ratios):.2f}] |")
            out[f"{v}/{d}"] = {**med, "total_s": t, "paired_ratio": ratios,
                               "median_paired_ratio": statistics.median(ratios), "raw": reps}
    return "\n".join(rows), out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--variants", default="scan,scan_remat")
    p.add_argument("--layers", default="12,48")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", nargs=2, metavar=("VARIANT", "LAYERS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return
    variants = args.variants.split(",")
    depths = [int(x) for x in args.layers.split(",")]
    if any(v not in VARIANTS for v in variants):
        p.error(f"variants are {', '.join(VARIANTS)}")
    runs = {(v, d): [] for v in variants for d in depths}
    for r in range(args.repeats):
        for v in variants:
            for d in depths:
                res = _launch(v, d)
                print(f"repeat {r} {v} x{d}: {res}", file=sys.stderr, flush=True)
                runs[(v, d)].append(res)
    rows, out = _table(runs, variants, depths)
    print(rows)
    bench_json.emit(out, args.json)


if __name__ == "__main__":
    main()
