"""XLA CPU flags on the real workloads: steps/s of `jaxmodels.train` with and without each flag.

  python benchmarks/xla_flags.py [--repeats 3] [--only cnn,gpt_small,...] [--settings none,ynn]
                                 [--scale 1.0] [--json OUT]

XLA reads XLA_FLAGS once, when its CPU client starts, so every (workload, setting, repeat) is a
fresh subprocess of this script (`--worker`) that trains for a fixed number of steps and prints
one JSON line. Per workload, settings are interleaved in one sitting (A B C A B C ...), and the
table gives, per workload, each setting's median steps/s and its ratio to `none` within the same
repeat (median and min-max over repeats: on a shared machine the spread is the noise). A
setting whose process crashes (oneDNN's fusion can die with SIGILL on some CPUs) is reported as
crashed and not retried for that workload. Throughput is summary.json's, which leaves out the compiling first
step, evaluation and checkpointing; the workers share one persistent compilation cache so a
setting compiles once per workload, not once per repeat (the cache key includes XLA_FLAGS).

The final train loss of each run is recorded too: every setting must train the same numbers
(up to float reassociation), which the table shows as the largest relative difference to `none`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

SETTINGS = {
    "none": "",
    # jaxmodels' default (jaxmodels/runtime.py CPU_FLAGS): dots fused with their elementwise
    # neighbours and reductions in YNNPACK, convolutions in XLA's own kernels.
    "ynn_dot_reduce": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce",
    "ynn_dot_reduce_conv": "--xla_cpu_experimental_ynn_fusion_type=dot,reduce,individual_convolution",
    "ynn": "--xla_cpu_experimental_ynn_fusion_type=dot",  # overwrites the list: reductions leave YNN
    "onednn": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot",
    "ynn+onednn": "--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_use_onednn=true "
                  "--xla_cpu_experimental_onednn_fusion_type=dot",
}

_GPT = "experiments/configs/gpt_shakespeare.py"
# (config file, overrides, timed steps at --scale 1): the shapes of issue 11's table.
WORKLOADS = {
    "cnn": ("experiments/configs/seed_cnn_mnist.py", [], 150),
    "bn_cnn": ("experiments/configs/bn_cnn_mnist.py", [], 40),  # 2 conv blocks with batch norm
    "gpt_small": (_GPT, ["model.positional=learned"], 40),  # 4L/128D/4H, ctx 64, batch 12
    "gpt_mid": (_GPT, ["model.positional=learned", "model.num_layers=6", "model.d_model=384",
                       "model.num_heads=6", "model.max_len=256", "data.seq_len=256",
                       "data.batch_size=16"], 6),
    "lstm": ("experiments/configs/lstm_shakespeare.py", [], 30),  # 1x256, ctx 64, batch 32
    "vit": ("experiments/configs/vit_mnist.py", ["data.batch_size=128"], 8),  # 4x64, MNIST
}


def _train_one(name: str, scale: float) -> dict:
    import jaxmodels
    from jaxmodels import config as config_lib

    path, overrides, steps = WORKLOADS[name]
    steps = max(3, round(steps * scale)) + 1  # + the compiling first step, which is not timed
    cfg = config_lib.apply_overrides(config_lib.load(os.path.join(ROOT, path)), [
        *overrides, f"train.steps={steps}", f"train.log_every={steps}", "train.progress=false",
        "train.eval_every=1000000", "checkpoint.every_steps=none", "optimizer.warmup_steps=2",
        *(["data.eval_windows=2"] if "shakespeare" in path else [])])
    with tempfile.TemporaryDirectory() as workdir:
        s = jaxmodels.train(cfg, workdir)
    return {"steps_per_s": s["examples_per_sec"] / cfg.data.batch_size,
            "train_loss": s["train_loss"], "compile_time_s": s["compile_time_s"]}


def worker(names: list[str], scale: float) -> None:
    out = {n: _train_one(n, scale) for n in names}
    print("RESULT " + json.dumps(out), flush=True)


def _launch(flags: str, names: list[str], scale: float, cache_dir: str) -> dict | str:
    env = dict(os.environ, XLA_FLAGS=flags, JAX_COMPILATION_CACHE_DIR=cache_dir,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run([sys.executable, __file__, "--worker", "--only", ",".join(names),
                           "--scale", str(scale)], env=env, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
    tail = (proc.stderr.strip().splitlines() or [""])[-1][:200]
    return f"crashed ({why}): {tail}"


def _table(runs: dict, names: list[str], settings: list[str]) -> tuple[str, dict]:
    """runs[workload][setting]: a list of per-repeat results, or the string saying it crashed."""
    rows, summary = [], {}
    head = "| workload | setting | steps/s (median) | ratio to none: median [min, max] | max rel. loss diff |"
    rows += [head, "|---|---|---|---|---|"]
    for n in names:
        base = runs[n]["none"]
        for s in settings:
            reps = runs[n][s]
            if isinstance(reps, str):
                rows.append(f"| {n} | {s} | {reps} | | |")
                summary[f"{n}/{s}"] = {"error": reps}
                continue
            if not reps:
                continue
            rates = [r["steps_per_s"] for r in reps]
            ratios = [r["steps_per_s"] / b["steps_per_s"] for r, b in zip(reps, base)]
            loss_diff = max(abs(r["train_loss"] - b["train_loss"]) / abs(b["train_loss"])
                            for r, b in zip(reps, base))
            med = statistics.median(ratios)
            rows.append(f"| {n} | {s} | {statistics.median(rates):.2f} | {med:.3f} "
                        f"[{min(ratios):.3f}, {max(ratios):.3f}] | {loss_diff:.1e} |")
            summary[f"{n}/{s}"] = {"steps_per_s": rates, "ratio_to_none": ratios,
                                   "median_ratio": med, "max_rel_loss_diff": loss_diff}
    return "\n".join(rows), summary


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    p.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated settings "
                   "(none is always run: the ratios are to it)")
    p.add_argument("--scale", type=float, default=1.0, help="multiplies every timed step count")
    p.add_argument("--json", default=None, help="also write the results here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = [n for n in names if n not in WORKLOADS]
    settings = ["none"] + [s for s in args.settings.split(",") if s and s != "none"]
    bad = [s for s in settings if s not in SETTINGS]
    if unknown or bad:
        p.error(f"unknown workload(s) {unknown} or setting(s) {bad}: choose from "
                f"{', '.join(WORKLOADS)} / {', '.join(SETTINGS)}")
    if args.worker:
        worker(names, args.scale)
        return
    runs: dict = {n: {s: [] for s in settings} for n in names}
    with tempfile.TemporaryDirectory(prefix="xla_flags_cache_") as cache_dir:
        for n in names:
            for r in range(args.repeats):
                for s in settings:
                    if isinstance(runs[n][s], str):
                        continue  # crashed once: it would crash again
                    res = _launch(SETTINGS[s], [n], args.scale, cache_dir)
                    print(f"{n} repeat {r} {s}: {res}", file=sys.stderr, flush=True)
                    if isinstance(res, str):
                        if s == "none":
                            sys.exit(f"the baseline crashed: {res}")
                        runs[n][s] = res
                    else:
                        runs[n][s].append(res[n])
    table, summary = _table(runs, names, settings)
    print(table)
    result = {"settings": {s: SETTINGS[s] for s in settings}, "repeats": args.repeats,
              "scale": args.scale, "results": summary, "raw": runs}
    print(json.dumps({"results": summary}))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
