"""The GPU check: jaxmodels' GPT at GPT-2-small (124M) and 350M size on one NVIDIA GPU, in
bfloat16 compute with float32 parameters, and a float32 comparison of the GPU with the CPU.

  python benchmarks/gpu.py [--smoke] [--json PATH] [--only 124m,350m] [--batch 32]

About 5-8 minutes on an H100/H200 (compiles included); --smoke runs the same code at toy sizes
on CPU in seconds (the tests do). Each part runs in its own process: peak device memory is then
that model's alone, and this process never touches the GPU (JAX would preallocate most of it).

What it reports, per model (jaxmodels' TransformerLM from its own config: learned positions,
tied embeddings, pre-LayerNorm, GELU, AdamW with clipping, dtype=bfloat16,
param_dtype=float32, context 1024, vocabulary 50,304 = GPT-2's 50,257 padded to a multiple of
64; random tokens, since throughput does not depend on the text):
  - tokens/s over the steps after the first (compiling) one, through the loop's own jitted
    train step (`loop.setup(...).train_step`, the one `jaxmodels.train` runs);
  - MFU: the analytic model FLOPs per token (jaxmodels.accounting.flops) x tokens/s over the
    device's dense bf16 peak from jaxmodels/accounting/hardware.py;
  - peak device memory: the allocator's peak_bytes_in_use, and XLA's memory analysis of the
    compiled step;
  - the attention used: cuDNN's fused attention through
    `jax.nn.dot_product_attention(implementation="cudnn")` (model.attention_impl=cudnn) when a
    probe compiles and runs it, else XLA's (the reason is printed). Training windows are never
    padded, so no lengths are passed; causal masking is cuDNN's own (no mask array).

The check: 5 float32 steps of a small GPT (2 layers x 128, context 128) from the same seed and
batches on the GPU and on the CPU (a separate process with JAX_PLATFORMS=cpu), matmuls at
"highest" precision on both (the GPU default would use TF32). Passes when every step's loss
agrees to CHECK_RTOL relative. The script exits 1 when it fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

# float32 on both sides at "highest" precision: differences come from reduction order only, ~1e-6
# relative per step; Adam's first steps (update ~ lr * sign(g)) can amplify a near-zero gradient's
# sign flip, so the bound allows two orders of magnitude over that.
CHECK_RTOL = 2e-4
CHECK_STEPS = 5

MODELS = {
    "124m": {"num_layers": 12, "d_model": 768, "num_heads": 12},
    "350m": {"num_layers": 24, "d_model": 1024, "num_heads": 16},
}
FULL = {"seq_len": 1024, "vocab": 50304, "steps": 50}
# Windows per step: 350M at 32 x 1024 would need XLA attention's float32 [B, H, T, T] scores of
# 24 layers (tens of GiB) whenever cuDNN is unavailable.
BATCH = {"124m": 32, "350m": 16}
SMOKE_MODEL = {"num_layers": 2, "d_model": 32, "num_heads": 2}
SMOKE = {"seq_len": 32, "vocab": 64, "steps": 3, "batch": 4}
CHECK_MODEL = {"num_layers": 2, "d_model": 128, "num_heads": 4}
CHECK = {"seq_len": 128, "vocab": 256, "batch": 8}


def _config(model: dict, seq_len: int, vocab: int, batch: int, steps: int, dtype: str,
            attention_impl: str | None):
    import jaxmodels

    cfg = jaxmodels.load_config(os.path.join(ROOT, "experiments/configs/gpt_shakespeare.py"))
    return jaxmodels.apply_overrides(cfg, [
        *(f"model.{k}={v}" for k, v in model.items()), f"model.max_len={seq_len}",
        f"model.vocab_size={vocab}", "model.positional=learned", "model.tie_embeddings=true",
        f"model.dtype={dtype}", "model.param_dtype=float32",
        f"model.attention_impl={attention_impl or 'none'}",
        f"data.seq_len={seq_len}", f"data.batch_size={batch}", f"data.eval_batch_size={batch}",
        f"train.steps={steps}", f"optimizer.warmup_steps={max(1, steps // 10)}"])


def _source(seq_len: int, vocab: int, batch: int, windows: int):
    """Random token windows (seed 0) as a jaxmodels data source."""
    import numpy as np

    from jaxmodels.data.arrays import from_arrays

    rng = np.random.default_rng(0)
    ids = rng.integers(0, vocab, size=(windows, seq_len + 1), dtype=np.int32)
    split = (ids[:, :-1], ids[:, 1:])
    return from_arrays(split, split, batch_size=batch, num_outputs=vocab,
                       tokens_per_example=seq_len, name="random_tokens")


def probe_cudnn() -> tuple[str | None, str]:
    """("cudnn", why) when cuDNN's fused attention compiles and runs here, else (None, why)."""
    import jax
    import jax.numpy as jnp

    if jax.default_backend() != "gpu":
        return None, f"no GPU (JAX backend {jax.default_backend()}): XLA attention"
    q = jnp.ones((1, 256, 4, 64), jnp.bfloat16)
    try:
        f = jax.jit(lambda q: jax.nn.dot_product_attention(q, q, q, is_causal=True, implementation="cudnn"))
        jax.block_until_ready(f(q))
    except Exception as e:  # noqa: BLE001 - any failure means: use XLA
        return None, f"cuDNN attention unavailable ({type(e).__name__}: {str(e).splitlines()[0][:160]}): XLA attention"
    return "cudnn", "cuDNN fused attention (jax.nn.dot_product_attention implementation='cudnn')"


def _setup(cfg, source):
    import jaxmodels
    from jaxmodels.training import loop

    return loop.setup(cfg, jaxmodels.Parts(data=source))


def _steps(s, n: int):
    """Runs n train steps of setup `s`: (losses, first step's seconds, seconds of the rest, state)."""
    import jax

    from jaxmodels.parallel import distributed

    state = s.init_fn()
    batches = s.task.train_batches(s.config.train.seed)
    losses, t0 = [], time.perf_counter()
    first = rest = 0.0
    pending = []
    for i in range(n):
        state, metrics = s.train_step(state, distributed.put_batch(next(batches), s.batch_sharding))
        pending.append(metrics["loss"])
        if i == 0:
            jax.block_until_ready(metrics)
            first, t0 = time.perf_counter() - t0, time.perf_counter()
    jax.block_until_ready(state)
    rest = time.perf_counter() - t0
    losses = [float(x) for x in jax.device_get(pending)]
    return losses, first, rest, state


def run_model(name: str, smoke: bool, batch: int | None, scan_layers: bool = False) -> dict:
    import jax

    import jaxmodels
    from jaxmodels.accounting import flops as flops_lib
    from jaxmodels.accounting import hardware

    if not smoke and jax.default_backend() != "gpu":
        # A 124M model on CPU would only run into the timeout.
        return {"model": name, "error": f"JAX sees no GPU (backend {jax.default_backend()}): install "
                                        f"jax[cuda12] (pip install -e .[cuda]) or run with --smoke"}
    sizes = SMOKE if smoke else {**FULL, "batch": batch or BATCH[name]}
    model = SMOKE_MODEL if smoke else MODELS[name]
    impl, why = probe_cudnn()
    dtype = "bfloat16"
    cfg = _config(model, sizes["seq_len"], sizes["vocab"], sizes["batch"], sizes["steps"], dtype, impl)
    if scan_layers:  # one compiled block scanned over depth: a faster compile
        cfg = jaxmodels.apply_overrides(cfg, ["model.scan_layers=true"])
    s = _setup(cfg, _source(sizes["seq_len"], sizes["vocab"], sizes["batch"], 4 * sizes["batch"]))
    losses, first, rest, state = _steps(s, sizes["steps"])
    tokens = (sizes["steps"] - 1) * sizes["batch"] * sizes["seq_len"]
    rate = tokens / rest
    acc = flops_lib.account(s.config.model, (sizes["seq_len"],))
    device = jax.devices()[0]
    peak = hardware.peak_flops(device)
    mfu = hardware.mfu(acc.model_flops_per_example / sizes["seq_len"] * rate, 1.0, 1, peak)
    stats = _device_stats(device)
    batch_shapes = {k: jax.ShapeDtypeStruct(v.shape, v.dtype)
                    for k, v in next(s.task.train_batches(0)).items()}
    t0 = time.perf_counter()  # jit's cache holds the step: this should take milliseconds
    compiled = s.train_step.lower(jax.eval_shape(s.init_fn), batch_shapes).compile()
    analysis_s = time.perf_counter() - t0
    return {"model": name, "params": acc.params, "layers": model["num_layers"],
            "width": model["d_model"], "heads": model["num_heads"], "seq_len": sizes["seq_len"],
            "batch": sizes["batch"], "vocab": sizes["vocab"], "dtype": dtype,
            "param_dtype": "float32", "attention": impl or "xla", "attention_note": why,
            "scan_layers": scan_layers, "steps": sizes["steps"], "tokens_per_s": rate, "compile_s": first,
            "flops_per_token": acc.model_flops_per_example / sizes["seq_len"],
            "mfu": mfu, "peak": peak.name if peak else None,
            "peak_flops_per_s": peak.flops_per_s if peak else None,
            "peak_bytes_in_use_mb": stats, "xla_step_memory_mb": _memory_mb(compiled),
            "memory_analysis_s": analysis_s,
            "losses": [losses[0], losses[-1]], "device": str(device),
            "device_kind": device.device_kind}


def _device_stats(device) -> float | None:
    try:
        stats = device.memory_stats()
    except Exception:  # noqa: BLE001 - CPU backends may not implement it
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / 2**20


def _memory_mb(compiled) -> dict | None:
    sys.path.insert(0, HERE)
    from measure import memory_mb

    return memory_mb(compiled)


def run_check(smoke: bool) -> dict:
    """5 float32 steps of the check model on this process's default device."""
    import jax

    sizes = {**CHECK, "seq_len": SMOKE["seq_len"], "vocab": SMOKE["vocab"]} if smoke else CHECK
    model = SMOKE_MODEL if smoke else CHECK_MODEL
    cfg = _config(model, sizes["seq_len"], sizes["vocab"], sizes["batch"], CHECK_STEPS,
                  "float32", None)
    with jax.default_matmul_precision("highest"):
        s = _setup(cfg, _source(sizes["seq_len"], sizes["vocab"], sizes["batch"], 4 * sizes["batch"]))
        losses = _steps(s, CHECK_STEPS)[0]
    return {"device": str(jax.devices()[0]), "losses": losses}


def _child(args: list[str], env: dict, timeout: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    return {"error": f"exit {p.returncode}: {tail[:400]}"}


def compare(gpu: dict, cpu: dict) -> dict:
    if "error" in gpu or "error" in cpu:
        return {"passed": False, "reason": gpu.get("error") or cpu.get("error")}
    rel = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(gpu["losses"], cpu["losses"])]
    ok = len(rel) == CHECK_STEPS and all(math.isfinite(r) and r <= CHECK_RTOL for r in rel)
    return {"passed": ok, "max_rel_loss_diff": max(rel) if rel else None, "rtol": CHECK_RTOL,
            "steps": CHECK_STEPS, "losses_device": gpu["losses"], "losses_cpu": cpu["losses"],
            "device": gpu["device"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--smoke", action="store_true", help="toy sizes on CPU (seconds; the tests)")
    p.add_argument("--only", default="124m,350m", help="comma-separated models of 124m, 350m")
    p.add_argument("--batch", type=int, default=None,
                   help=f"windows of 1024 tokens per step (default {BATCH})")
    p.add_argument("--scan-layers", action="store_true",
                   help="scan one compiled block over depth (faster compile, maybe slower steps)")
    p.add_argument("--json", default=None, help="write the report here (default: runs/benchmarks/gpu[_smoke].json)")
    p.add_argument("--timeout", type=float, default=240.0,
                   help="seconds one model's run may take (each half of the check: half that)")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # model NAME or "check"
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    bad = [n for n in names if n not in MODELS]
    if bad or not names:
        p.error(f"--only {args.only}: choose from {', '.join(MODELS)}")
    if args.batch is not None and args.batch < 1:
        p.error(f"--batch {args.batch}: must be at least 1")

    if args.child is not None:
        out = (run_check(args.smoke) if args.child == "check"
               else run_model(args.child, args.smoke, args.batch, args.scan_layers))
        print("RESULT " + json.dumps(out), flush=True)
        return 0

    started = time.perf_counter()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + [q for q in env.get("PYTHONPATH", "").split(os.pathsep) if q])
    # One device: the suite's simulated CPU device count would split the batch.
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if "force_host_platform_device_count" not in f)
    flags = ["--smoke"] if args.smoke else ["--batch", str(args.batch)] if args.batch else []
    flags += ["--scan-layers"] if args.scan_layers else []
    if args.smoke:
        # Seconds, not minutes: the model run and the device side of the check run in this
        # process (on CPU); only the CPU reference is a child, as on a GPU machine. A shared
        # compilation cache lets it load the step this process compiled.
        import tempfile

        tmp = tempfile.mkdtemp(prefix="jaxmodels_gpu_smoke_")
        cache = {"JAX_COMPILATION_CACHE_DIR": os.path.join(tmp, "jax_cache"),
                 "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}  # toy steps compile fast
        os.environ.update(XLA_FLAGS=env["XLA_FLAGS"], JAX_PLATFORMS="cpu", **cache)
        env.update(cache)
        models = [run_model(names[0], True, None, args.scan_layers)]
        device_check = run_check(True)
    else:
        # Each model in its own process: peak device memory is its own, and this process never
        # initialises the GPU (JAX would preallocate most of its memory).
        models = [_child(["--child", n, *flags], env, args.timeout) for n in names]
        device_check = _child(["--child", "check", *flags], env, args.timeout / 2)
    cpu_check = _child(["--child", "check", *flags], {**env, "JAX_PLATFORMS": "cpu"}, args.timeout / 2)
    report = {"schema": "jaxmodels-gpu/1", "mode": "smoke" if args.smoke else "full",
              "models": models, "check": compare(device_check, cpu_check),
              "wall_s": time.perf_counter() - started}
    for m in models:
        if "error" in m:
            print(f"model run failed: {m['error']}", file=sys.stderr)
            continue
        mfu = f"{100 * m['mfu']:.1f} %" if m["mfu"] is not None else "n/a"
        mem = m["peak_bytes_in_use_mb"]
        print(f"{m['model']}: {m['params'] / 1e6:.0f}M params, {m['attention']} attention, batch "
              f"{m['batch']}x{m['seq_len']}: {m['tokens_per_s']:,.0f} tokens/s, MFU {mfu} of "
              f"{m['peak']}, peak device memory "
              f"{'n/a' if mem is None else f'{mem / 1024:.1f} GiB'} "
              f"(XLA step analysis {(m['xla_step_memory_mb'] or {}).get('total', float('nan')) / 1024:.1f} GiB), "
              f"compile {m['compile_s']:.0f} s")
    c = report["check"]
    if c.get("max_rel_loss_diff") is not None:
        print(f"float32 check, {c['steps']} steps on {c['device']} vs CPU: max relative loss "
              f"difference {c['max_rel_loss_diff']:.2e} (tolerance {c['rtol']:.0e}): "
              f"{'passed' if c['passed'] else 'FAILED'}")
    else:
        print(f"float32 check failed to run: {c.get('reason')}")
    out = args.json or os.path.join(ROOT, "runs", "benchmarks", "gpu_smoke.json" if args.smoke else "gpu.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(f"wrote {out} ({report['wall_s']:.0f} s)", file=sys.stderr)
    failed = not c["passed"] or any("error" in m for m in models)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
