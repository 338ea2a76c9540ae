"""The benchmark suite: jaxmodels beside a hand-written Flax step, PyTorch (eager and
torch.compile) and Keras 3 on JAX, on the project's workloads, in one sitting.

  python benchmarks/run.py [--quick] [--smoke] [--only cnn,gpt_4l] [--repeats 3] [--json PATH]
                           [--impls jaxmodels,torch] [--xla-flags "..."] [--single-thread]

Workloads (benchmarks/workloads.py): the seed CNN (batch 32), GPT 6L/384D ctx 256 batch 16, GPT
4L/128D ctx 64 batch 12, LSTM 1x256 ctx 64 batch 32, ViT 4x64 on MNIST, and a GPT-2-small-shaped
GPT (12L/768D, ctx 256, a few steps). Implementations: see benchmarks/measure.py.

How it measures: every run is its own process (benchmarks/measure.py), so its peak RSS is its
own; implementations are interleaved A B C, A B C, ... within a workload; each run's first step
(trace + compile) is excluded from its throughput and reported as compile time; the table gives
the median over repeats. All implementations of a workload train the same model (parameter
counts are asserted equal to jaxmodels') with the experiment file's optimizer; the peers read
the same pre-assembled batches, jaxmodels reads its own data pipeline. "compile s" is the first
repeat's (cold caches: each sitting gets fresh JAX and Inductor cache folders, which later
repeats then hit). Device memory is XLA's memory analysis of the compiled train step (arguments
+ outputs - donated + temporaries); PyTorch and Keras have no such figure here. Every JAX run
(jaxmodels, the hand-written Flax step, Keras on JAX) compiles with the same XLA_FLAGS: the
environment's, else the CPU flags a jaxmodels CLI run sets (jaxmodels/runtime.py CPU_FLAGS), so
the jaxmodels / Flax column is the framework's own cost, not a compiler setting.

--quick: fewer steps, no torch.compile or GPT-2-small (a few minutes in all; the overhead rows
jaxmodels.fit and jaxmodels-step included). --smoke: toy shapes, a couple of steps, one repeat,
no torch.compile (seconds; the tests run it). Peers that are not installed are reported as
n/a: install them with `pip install -e .[bench]`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(1, ROOT)

import workloads  # noqa: E402

SCHEMA = "jaxmodels-bench/1"
# --smoke's default: the CNN with every peer (seconds). The other families' smoke sizes run with
# --only; tests/test_benchmarks.py checks their peers' parameter counts in-process instead.
SMOKE_WORKLOADS = ("cnn",)
# --quick's default: all but the GPT-2-small shape (minutes of its own; --only gpt2_small adds it).
QUICK_WORKLOADS = ("cnn", "gpt_6l", "gpt_4l", "lstm", "vit")
# The reference each ratio column divides by.
REFERENCES = {"vs_torch": "torch", "vs_hand_written": "flax", "vs_jaxmodels_step": "jaxmodels-step"}
PEER_MODULES = {"torch": "torch", "torch.compile": "torch", "keras": "keras"}


def implementations(w: workloads.Workload, mode: str) -> dict[str, str | None]:
    """{impl: None if it runs, else why not}, in the order runs are interleaved."""
    impls = ["jaxmodels"] + (["jaxmodels.fit"] if w.family == "cnn" else []) + ["jaxmodels-step"]
    out = {i: None for i in impls + list(w.peers)}
    for impl, module in PEER_MODULES.items():
        if impl in out and importlib.util.find_spec(module) is None:
            out[impl] = f"n/a: {module} is not installed (pip install -e .[bench])"
    if mode == "smoke":
        for impl in ("torch.compile", "jaxmodels.fit", "jaxmodels-step"):
            if impl in out:
                out[impl] = "n/a: left out of --smoke (seconds-long budget)"
    if w.name == "gpt2_small" and "jaxmodels-step" in out:  # the small workloads measure it
        out["jaxmodels-step"] = "n/a: left out (the loop's overhead is measured on the smaller workloads)"
    # The overhead rows (jaxmodels.fit, jaxmodels-step) stay in --quick, at its few steps, so the
    # loop's overhead over the hand-written step can be read in a short sitting; Inductor's
    # cold compiles are for the full run only.
    if mode == "quick" and "torch.compile" in out:
        out["torch.compile"] = "n/a: left out of --quick (the full run has it)"
    if "torch.compile" not in w.peers and w.family == "gpt" and mode != "smoke":
        out["torch.compile"] = "n/a: left out (compiling this graph on CPU exceeds the suite's budget)"
    return out


def prepare(w: workloads.Workload, steps: int, folder: str) -> dict:
    """Writes the batches every peer reads and the facts they must match (output count,
    jaxmodels' parameter count, the optimizer) into `folder`; returns the meta dict."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxmodels import models
    from jaxmodels.training import tasks

    cfg = w.config(steps)
    task = tasks.build(cfg.data)
    model_cfg = tasks.resolve_model(cfg.model, task)
    module = models.build(model_cfg)
    example = jnp.asarray(task.example_inputs)
    shapes = jax.eval_shape(lambda: module.init({"params": jax.random.key(0), "dropout": jax.random.key(0)},
                                                example))
    params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"]))
    stream = task.train_batches(cfg.train.seed)
    batches = [next(stream) for _ in range(min(steps, 32))]
    os.makedirs(folder, exist_ok=True)
    np.savez(os.path.join(folder, "batches.npz"), inputs=np.stack([b["inputs"] for b in batches]),
             targets=np.stack([b["targets"] for b in batches]))
    meta = {"outputs": int(task.num_outputs), "params": params, "steps": steps,
            "optimizer": dataclasses.asdict(cfg.optimizer), "model": type(module).__name__}
    with open(os.path.join(folder, "meta.json"), "w") as f:
        json.dump(meta, f)
    return meta


# --single-thread: one compute thread everywhere. On a machine other jobs share, a 2-thread
# OpenMP team whose threads are descheduled spins at every barrier (PyTorch's CNN step went from
# 0.1 s to 1.5 s here); one thread each keeps the comparison fair there. Not for the quiet run.
SINGLE_THREAD_XLA = ["--xla_cpu_multi_thread_eigen=false", "intra_op_parallelism_threads=1"]


def child_env(tmp: str, xla_flags: str | None, single_thread: bool = False) -> dict:
    # The settings a jaxmodels CLI run starts with (jaxmodels/runtime.py), given to every
    # implementation alike unless the environment or the flags say otherwise.
    from jaxmodels import runtime

    env = dict(os.environ)
    # One CPU device, as a plain script sees it: a simulated device count (the test suite's
    # conftest sets one) would split each batch over fake devices sharing the same cores.
    flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
    if xla_flags is not None:
        flags = shlex.split(xla_flags)
    elif "XLA_FLAGS" not in os.environ:
        # What a jaxmodels CLI or fit run gets here (runtime.py sets them when XLA_FLAGS is
        # unset), given to every JAX implementation alike: the hand-written Flax step and Keras
        # compile with the same XLA, so jaxmodels / Flax stays the framework's own cost.
        flags = list(runtime.CPU_FLAGS)
    if single_thread:
        flags += SINGLE_THREAD_XLA
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["XLA_FLAGS"] = " ".join(flags)
    # The host allocator's tunable, for every implementation alike (PyTorch included): it is a
    # property of the process, like the thread count.
    env.update(runtime.host_allocator_env())
    # Fresh caches per sitting: the first repeat compiles cold, later ones hit (run-to-run
    # start-up stays short without hiding a first compile from the table).
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.join(tmp, "jax_cache")
    env["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(tmp, "inductor_cache")
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def measure(workload: str, impls: list[str], mode: str, pool: str, workdir: str, env: dict,
            timeout: float) -> list[dict]:
    """Runs `impls` of `workload` one after another in one child process: their results."""
    cmd = [sys.executable, os.path.join(HERE, "measure.py"), workload, ",".join(impls),
           "--mode", mode, "--pool", pool, "--workdir", workdir]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        stdout, why = p.stdout, f"exit {p.returncode}: " + (p.stderr.strip().splitlines() or ["no output"])[-1][:300]
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        why = f"timed out after {timeout:.0f} s"
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU seconds of the child: on a busy machine, a better guide than wall time to how long
    # the suite takes on a quiet one.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    got = {}
    for line in stdout.splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            r["process_cpu_s"] = cpu  # the whole process's, shared by a --smoke group
            got[r["impl"]] = r
    return [got.get(i, {"status": "failed", "reason": why}) for i in impls]


def summarise(runs: list[dict], repeats: int) -> dict:
    ok = [r for r in runs if r.get("status") == "ok"]
    if len(ok) < len(runs) or not ok:
        bad = next(r for r in runs if r.get("status") != "ok")
        return {"status": bad.get("status", "failed"), "reason": bad.get("reason", "")}
    rates = [r["throughput"] for r in ok]
    return {
        "status": "ok", "throughput": statistics.median(rates), "runs": rates,
        "compile_s": ok[0]["compile_s"], "compile_s_runs": [r["compile_s"] for r in ok],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in ok),
        "device_memory_mb": ok[0].get("device_memory_mb"),
        "params": ok[0].get("params"), "loss": ok[-1].get("loss"),
        "wall_s": sum(r["wall_s"] for r in ok),
        "process_cpu_s": sum(r.get("process_cpu_s", 0.0) for r in ok),
    }


def add_ratios(results: dict) -> None:
    for r in results.values():
        if r["status"] != "ok":
            continue
        for key, ref in REFERENCES.items():
            other = results.get(ref, {})
            r[key] = r["throughput"] / other["throughput"] if other.get("status") == "ok" else None


def machine() -> dict:
    import jax

    from jaxmodels.accounting import hardware

    versions = {"python": platform.python_version(), "jax": jax.__version__}
    for name in ("flax", "optax", "torch", "keras"):
        try:  # the installed version, without importing (keras would pick a backend)
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {"cpu": hardware.machine_key()["cpu"], "cores": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "platform": platform.platform(), "versions": versions,
            "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}


def _fmt(x, spec=",.0f", none="-"):
    return none if x is None else format(x, spec)


def table(report: dict) -> str:
    lines = ["| workload | implementation | throughput | vs PyTorch | vs hand-written Flax | "
             "vs jaxmodels-step | peak RSS (MiB) | device memory (MiB) | compile (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, wl in report["workloads"].items():
        unit = "tok/s" if wl["unit"] == "tokens" else "img/s"
        for impl, r in wl["results"].items():
            if r["status"] != "ok":
                lines.append(f"| {name} | {impl} | {r['reason']} | | | | | | |")
                continue
            mem = r["device_memory_mb"]
            lines.append(
                f"| {name} | {impl} | {_fmt(r['throughput'])} {unit} | {_fmt(r['vs_torch'], '.2f')} | "
                f"{_fmt(r['vs_hand_written'], '.2f')} | {_fmt(r['vs_jaxmodels_step'], '.2f')} | "
                f"{_fmt(r['peak_rss_mb'])} | {_fmt(mem and mem['total'], ',.1f', 'n/a')} | "
                f"{_fmt(r['compile_s'], '.1f')} |")
    return "\n".join(lines)


def _write(path: str, report: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="fewer steps: a few minutes in all")
    mode.add_argument("--smoke", action="store_true", help="toy shapes, seconds (the tests)")
    p.add_argument("--only", default=None, help=f"comma-separated workloads of {', '.join(workloads.WORKLOADS)}")
    p.add_argument("--impls", default=None, help="comma-separated implementations (default: all)")
    p.add_argument("--repeats", type=int, default=None, help="runs per implementation (default 3; 1 with --smoke)")
    p.add_argument("--json", default=None, help="write the report here (default: runs/benchmarks/MODE.json)")
    p.add_argument("--xla-flags", default=None,
                   help="XLA_FLAGS for every JAX run (default: the environment's; when unset, the "
                        "CPU flags jaxmodels' CLI sets, runtime.CPU_FLAGS)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds one run may take")
    p.add_argument("--single-thread", action="store_true",
                   help="one compute thread per run (XLA and PyTorch): for a machine other jobs share")
    args = p.parse_args(argv)
    mode_name = "smoke" if args.smoke else "quick" if args.quick else "full"
    default = SMOKE_WORKLOADS if args.smoke else QUICK_WORKLOADS if args.quick else workloads.WORKLOADS
    names = args.only.split(",") if args.only else list(default)
    unknown = [n for n in names if n not in workloads.WORKLOADS or (args.smoke and n not in workloads.SMOKE_SHAPES)]
    if unknown:
        p.error(f"--only {','.join(unknown)}: not a workload{' with a smoke size' if args.smoke else ''} "
                f"(choose from {', '.join(workloads.SMOKE_SHAPES if args.smoke else workloads.WORKLOADS)})")
    wanted = set(args.impls.split(",")) if args.impls else None
    repeats = args.repeats or (1 if args.smoke else 3)
    if repeats < 1:
        p.error(f"--repeats {repeats}: must be at least 1")
    out_path = args.json or os.path.join(ROOT, "runs", "benchmarks", f"{mode_name}.json")

    started = time.perf_counter()
    report = {"schema": SCHEMA, "mode": mode_name, "repeats": repeats,
              "command": " ".join(["python", "benchmarks/run.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "complete": False, "workloads": {}}
    with tempfile.TemporaryDirectory(prefix="jaxmodels_bench_") as tmp:
        env = child_env(tmp, args.xla_flags, args.single_thread)
        report["single_thread"] = args.single_thread
        report["xla_flags"] = env["XLA_FLAGS"]
        report["glibc_tunables"] = env.get("GLIBC_TUNABLES", "")
        for name in names:
            w = workloads.get(name, mode_name)
            steps = w.steps[mode_name]
            pool = os.path.join(tmp, "pools", name)
            meta = prepare(w, steps, pool)
            impls = implementations(w, mode_name)
            if wanted is not None:
                impls = {i: why for i, why in impls.items() if i in wanted}
            runs = {i: [] for i, why in impls.items() if why is None}
            # --smoke runs a workload's implementations in one process (one start-up, so
            # seconds); otherwise every run has a process of its own.
            groups = [list(runs)] if mode_name == "smoke" else [[i] for i in runs]
            for r in range(repeats):  # interleaved: A B C, A B C, ...
                for group in groups:
                    workdir = os.path.join(tmp, "work", f"{name}_r{r}")
                    for impl, res in zip(group, measure(name, group, mode_name, pool, workdir, env,
                                                        args.timeout)):
                        runs[impl].append(res)
                        shown = (f"{res['throughput']:,.1f} {w.unit}/s, {res.get('process_cpu_s', 0):.0f} s CPU"
                                 if res.get("status") == "ok"
                                 else res.get("reason", ""))
                        print(f"[{time.perf_counter() - started:6.0f} s] {name} {impl} repeat {r + 1}: "
                              f"{shown}", file=sys.stderr, flush=True)
            results = {i: summarise(runs[i], repeats) if why is None else {"status": "n/a", "reason": why}
                       for i, why in impls.items()}
            add_ratios(results)
            report["workloads"][name] = {"description": w.note, "unit": w.unit, "shape": w.shape,
                                         "steps": steps, "params": meta["params"], "results": results}
            _write(out_path, report)  # after every workload: a long sitting cut short keeps its rows
    report["complete"] = True
    report["wall_s"] = time.perf_counter() - started
    report["process_cpu_s"] = sum(r.get("process_cpu_s", 0.0) for wl in report["workloads"].values()
                                  for r in wl["results"].values())
    text = table(report)
    print(text)
    print(f"XLA_FLAGS of every JAX run: {report['xla_flags'] or '(none)'}")
    print(f"GLIBC_TUNABLES of every run: {report.get('glibc_tunables') or '(none)'}")
    _write(out_path, report)
    print(f"wrote {out_path} ({report['wall_s']:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
