"""The host allocator's glibc tunable (jaxmodels/runtime.py HOST_TUNABLES), on and off.

  python benchmarks/host_allocator.py [--shapes medium,small] [--repeats 3] [--steps N] [--json OUT]

What one measurement is: a fresh process (glibc reads the tunable when a process starts)
that builds the transformer_levers.py GPT of one shape with the default attention, runs three
warm-up steps, then times `--steps` steps (each waited for) and reads getrusage around them. The
two settings alternate A B A B, `--repeats` times. The table gives per step: the median and the
fastest step time, minor page faults and kernel (system) CPU seconds, and the speed-up of "on"
over "off" from the medians of the per-repeat medians. Both settings get the XLA CPU flags a
jaxmodels run gets (runtime.configure_xla_flags).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import bench_json

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def worker(shape: str, steps: int) -> None:
    import resource
    import time

    from jaxmodels import runtime

    applied = runtime.host_allocator_active()
    runtime.configure_xla_flags()
    sys.path.insert(0, HERE)
    import jax
    import transformer_levers as tl

    s = tl.SHAPES[shape]
    cfg = tl.gpt_config(shape, attention="auto")
    run = tl.jax_step(cfg, s["batch"], s["ctx"])
    for _ in range(3):
        jax.block_until_ready(run())
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(run())
        times.append(time.perf_counter() - t0)
    after = resource.getrusage(resource.RUSAGE_SELF)
    print("RESULT " + json.dumps({
        "applied": applied, "median_step_ms": 1e3 * statistics.median(times),
        "fastest_step_ms": 1e3 * min(times),
        "minor_faults_per_step": (after.ru_minflt - before.ru_minflt) / steps,
        "system_cpu_s_per_step": (after.ru_stime - before.ru_stime) / steps,
        "user_cpu_s_per_step": (after.ru_utime - before.ru_utime) / steps}), flush=True)


def launch(shape: str, steps: int, on: bool) -> dict:
    from jaxmodels import runtime

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    env.pop("GLIBC_TUNABLES", None)
    if on:
        env["GLIBC_TUNABLES"] = runtime.HOST_TUNABLES
    proc = subprocess.run([sys.executable, __file__, "--worker", shape, "--steps", str(steps)],
                          env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit(f"{shape} worker failed (exit {proc.returncode}): "
                     f"{(proc.stderr.strip().splitlines() or [''])[-1][:300]}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="medium,small")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=0, help="timed steps per run (0: 20 small, 5 medium)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args.worker, args.steps)
    report = {"shapes": {}}
    for shape in args.shapes.split(","):
        steps = args.steps or (20 if shape == "small" else 5)
        runs = {"off": [], "on": []}
        for _ in range(args.repeats):
            for setting in runs:
                runs[setting].append(launch(shape, steps, setting == "on"))
        rows = {}
        for setting, rs in runs.items():
            rows[setting] = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k != "applied"}
            rows[setting]["fastest_step_ms"] = min(r["fastest_step_ms"] for r in rs)
            rows[setting]["applied"] = all(r["applied"] for r in rs)
        rows["on"]["speedup"] = rows["off"]["median_step_ms"] / rows["on"]["median_step_ms"]
        report["shapes"][shape] = {"steps_per_run": steps, "repeats": args.repeats, "rows": rows, "runs": runs}
        print(f"\n{shape} ({args.repeats} repeats x {steps} steps, each run its own process, interleaved)")
        print(f"{'allocator':10s} {'step ms':>9s} {'fastest':>9s} {'faults/step':>12s} {'sys s/step':>11s} {'x off':>6s}")
        for setting, r in rows.items():
            print(f"{setting:10s} {r['median_step_ms']:9.1f} {r['fastest_step_ms']:9.1f} "
                  f"{r['minor_faults_per_step']:12.0f} {r['system_cpu_s_per_step']:11.3f} "
                  f"{r.get('speedup', 1.0):6.2f}" + ("" if r["applied"] or setting == "off" else "  (not applied)"))
    bench_json.emit(report, args.json)


if __name__ == "__main__":
    main()
