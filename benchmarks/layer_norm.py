"""jaxmodels' LayerNorm (models/layer_norm.py) against flax.linen.LayerNorm in whole training steps.

  python benchmarks/layer_norm.py [--only vit,gpt_4l,gpt_6l] [--repeats 5] [--steps 15] [--json OUT]
  python benchmarks/layer_norm.py --smoke --json OUT      # toy shapes (the tests)

What one measurement is: step_ablation.py's jaxmodels step of a workload (experiment file's model
and optimizer, the suite's shape, random inputs), built twice in one process: once as it is, once
with transformer_blocks.norm returning flax's nn.LayerNorm with the same parameters. The two
alternate round by round, `--repeats` rounds of `--steps` steps (the 6-layer GPT: 3); a round's
time is its fastest step. The table gives each form's fastest step over all rounds and the
speed-up of ours over flax's per round (median and range: a range across 1.0 is noise). The two
steps must agree on their first loss (the same function; tolerance 1e-4 relative).

Run it as the suite runs: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, and with the XLA CPU flags a
jaxmodels run gets (set here unless XLA_FLAGS is).
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

WORKLOADS = ("vit", "gpt_4l", "gpt_6l")


def flax_norm(cfg, name: str):
    """transformer_blocks.norm as it was: flax's LayerNorm, same names, dtypes and epsilon."""
    import flax.linen as nn
    import jax.numpy as jnp

    eps = {} if cfg.norm_eps is None else {"epsilon": cfg.norm_eps}
    return nn.LayerNorm(scale_init=nn.with_logical_partitioning(nn.initializers.ones, ("embed",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros, ("embed",)),
                        dtype=jnp.dtype(cfg.dtype), param_dtype=jnp.dtype(cfg.param_dtype),
                        name=name, **eps)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default=",".join(WORKLOADS), help=f"comma-separated, of {', '.join(WORKLOADS)}")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=15, help="timed steps per round (the 6-layer GPT: 3)")
    p.add_argument("--smoke", action="store_true", help="toy shapes, one round of 2 steps")
    p.add_argument("--json", help="also write the report here")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in WORKLOADS]
    if bad:
        raise SystemExit(f"--only: unknown workload {bad[0]!r}; choose from {', '.join(WORKLOADS)}")

    from jaxmodels import runtime

    runtime.configure_xla_flags()
    import jax
    import numpy as np

    import step_ablation
    import workloads
    from jaxmodels.models import transformer_blocks

    ours = transformer_blocks.norm
    report = {"benchmark": "layer_norm", "mode": "smoke" if args.smoke else "full",
              "xla_flags": os.environ.get("XLA_FLAGS"), "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
              "jax": jax.__version__, "cpus": os.cpu_count(),
              "machine": platform.processor() or platform.machine(), "workloads": {}}
    for name in names:
        w = workloads.get("gpt_6l" if args.smoke and name.startswith("gpt") else name,
                          "smoke" if args.smoke else "quick")
        repeats = 1 if args.smoke else args.repeats
        steps = 2 if args.smoke else (3 if name == "gpt_6l" else args.steps)
        x, y, outputs = step_ablation.inputs(w, np.random.default_rng(0))
        runs, first_loss = {}, {}
        for form, factory in (("flax", flax_norm), ("jaxmodels", ours)):
            transformer_blocks.norm = factory
            try:
                runs[form] = step_ablation.jax_step(w, None, x, y, outputs, 10_000)
            finally:
                transformer_blocks.norm = ours
            first_loss[form] = float(runs[form]())
        if not abs(first_loss["jaxmodels"] - first_loss["flax"]) <= 1e-4 * abs(first_loss["flax"]):
            raise SystemExit(f"{name}: the two norms' steps disagree ({first_loss}): not the same function")
        rounds = {form: [] for form in runs}
        for _ in range(repeats):
            for form, run in runs.items():
                best = float("inf")
                for _ in range(steps):
                    t0 = time.perf_counter()
                    run()
                    best = min(best, time.perf_counter() - t0)
                rounds[form].append(best)
        speedups = [f / j for f, j in zip(rounds["flax"], rounds["jaxmodels"])]
        report["workloads"][name] = {
            "shape": w.shape, "steps": steps, "repeats": repeats, "first_loss": first_loss,
            "flax_ms": 1e3 * min(rounds["flax"]), "jaxmodels_ms": 1e3 * min(rounds["jaxmodels"]),
            "speedups": speedups, "speedup_median": statistics.median(speedups)}

    print(f"{'workload':9} {'flax LN ms':>11} {'ours ms':>9} {'speed-up':>9} {'range':>13}")
    for name, r in report["workloads"].items():
        print(f"{name:9} {r['flax_ms']:11.2f} {r['jaxmodels_ms']:9.2f} {r['speedup_median']:9.3f} "
              f"{min(r['speedups']):6.3f}-{max(r['speedups']):.3f}")
    bench_json.emit(report, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
