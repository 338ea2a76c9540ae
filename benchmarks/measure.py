"""One measurement: one implementation of one workload, in its own process (benchmarks/run.py
starts one per run, so peak RSS is this implementation's alone and no compile cache or thread
pool carries over from a rival).

  python benchmarks/measure.py WORKLOAD IMPL[,IMPL...] --mode full|quick|smoke --pool DIR --workdir DIR

Prints one `RESULT {json}` line per implementation: throughput (tokens/s for language models, images/s
otherwise) over the steps after the first, the first step's time (trace + compile + one step:
"compile_s"), peak host RSS, the compiled step's memory analysis (JAX implementations), the
trained parameter count and the last loss. IMPL is one of:

  jaxmodels       jaxmodels.train(config, ...) on the workload's config: the real loop, its own
                  data pipeline; only the final evaluation is cut to one batch
  jaxmodels.fit   jaxmodels.fit(module, (x, y)) on the MNIST arrays (CNN only)
  jaxmodels-step  jaxmodels' module and optax chain in a hand-written jit loop over the shared
                  batches: the model without the framework around it
  flax            peers/flax_reference.py, hand-written jit loop over the shared batches
  torch           peers/torch_models.py, eager
  torch.compile   the same with torch.compile(model)
  keras           peers/keras_cnn.py through model.fit (CNN only)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)  # `workloads` and `peers` beside this file
sys.path.insert(1, os.path.dirname(HERE))  # the repository's jaxmodels over an installed one

import workloads  # noqa: E402

IMPLS = ("jaxmodels", "jaxmodels.fit", "jaxmodels-step", "flax", "torch", "torch.compile", "keras")


class Pool:
    """The shared batches (written by run.py): batch i of a run is pool[i % len(pool)]."""

    def __init__(self, folder: str):
        import numpy as np

        with open(os.path.join(folder, "meta.json")) as f:
            self.meta = json.load(f)
        arrays = np.load(os.path.join(folder, "batches.npz"))
        self.inputs, self.targets = arrays["inputs"], arrays["targets"]

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return self.inputs[i % len(self)], self.targets[i % len(self)]


def peak_rss_mb() -> float:
    """This process's peak resident set since it started, in MiB.

    /proc's VmHWM belongs to the process image, which exec replaces. getrusage's ru_maxrss does
    not reset at exec: a child forked from a parent holding datasets would report the parent's
    peak as its own.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux: KiB on most


def timed(step, batches, steps: int, sync):
    """(first step's seconds, seconds of steps 2..steps). `sync(out)` waits for a step's result;
    only the first step and the last are waited on, so dispatch stays asynchronous between."""
    t0 = time.perf_counter()
    out = step(*batches[0])
    sync(out)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(1, steps):
        out = step(*batches[i])
    sync(out)
    return first, time.perf_counter() - t0, out


def memory_mb(compiled) -> dict | None:
    """XLA's memory analysis of a compiled step, in MiB; "total" = arguments + outputs - aliased
    (donated buffers reused for outputs) + temporaries: the step's peak device footprint."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 - a backend without the analysis: reported as missing
        return None
    if m is None:
        return None
    mib = 2.0 ** 20
    out = {"arguments": m.argument_size_in_bytes / mib, "outputs": m.output_size_in_bytes / mib,
           "aliased": m.alias_size_in_bytes / mib, "temp": m.temp_size_in_bytes / mib}
    out["total"] = out["arguments"] + out["outputs"] - out["aliased"] + out["temp"]
    return out


# ---------------------------------------------------------------------------------------------
# jaxmodels


class ShortEval:
    """A data source that is `source` except that every evaluation reads at most `batches`
    batches: the benchmark times training, and the final evaluation of a GPT-2-sized model
    over the whole validation split would take longer than the whole suite."""

    def __init__(self, source, batches: int = 1):
        self._source, self._batches = source, batches

    def __getattr__(self, name):
        return getattr(self._source, name)

    def eval_batches(self, split, *, periodic=False):
        batches = self._source.eval_batches(split, periodic=periodic)
        for i, batch in enumerate(batches):
            if i == self._batches:
                return
            yield batch


def _capture_setup():
    """Wraps the loop's `setup` so the run's Setup (its jitted train step) can be read after
    `train` returns: its memory analysis then costs no second compile (jit's cache has it)."""
    from jaxmodels.training import loop

    captured = []
    original = loop.setup

    def setup(*args, **kwargs):
        captured.append(original(*args, **kwargs))
        return captured[-1]

    loop.setup = setup
    return captured


def _train_step_memory(s) -> dict | None:
    import jax

    batch = next(iter(s.task.train_batches(s.config.train.seed)))
    batch_shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), batch)
    return memory_mb(s.train_step.lower(jax.eval_shape(s.init_fn), batch_shapes).compile())


def _eval_overrides(w) -> list[str]:
    # Evaluation is kept tiny (see ShortEval): one batch of the training batch size.
    out = [f"data.eval_batch_size={w.shape['batch']}"]
    if w.unit == "tokens":
        out.append("data.eval_windows=1")
    return out


def run_jaxmodels(w, pool, steps, workdir):
    import jaxmodels
    from jaxmodels.training import tasks

    captured = _capture_setup()
    cfg = jaxmodels.apply_overrides(w.config(steps), _eval_overrides(w))
    source = ShortEval(tasks.build(cfg.data))
    summary = jaxmodels.train(cfg, workdir, restart=True, parts=jaxmodels.Parts(data=source))
    rate = summary["tokens_per_sec"] if w.unit == "tokens" else summary["examples_per_sec"]
    return {"throughput": rate, "compile_s": summary["compile_time_s"],
            "params": summary.get("params") or summary.get("num_params"),
            "loss": summary.get("train_loss"), "device_memory_mb": _train_step_memory(captured[0])}


def run_jaxmodels_fit(w, pool, steps, workdir):
    import jaxmodels
    import numpy as np
    from jaxmodels import models
    from jaxmodels.data import sources

    captured = _capture_setup()
    cfg = w.config(steps)
    ds = sources.load_image_dataset("mnist")
    x, y = ds.splits["train"]
    x = ((x / 255.0 - ds.mean) / ds.std).astype(np.float32)
    xv, yv = ds.splits["validation"]
    xv = ((xv[: w.shape["batch"]] / 255.0 - ds.mean) / ds.std).astype(np.float32)
    o = cfg.optimizer
    summary = jaxmodels.fit(models.build(cfg.model), (x, y), validation_data=(xv, yv[: len(xv)]),
                            batch_size=w.shape["batch"], steps=steps, learning_rate=o.learning_rate,
                            schedule=o.schedule, warmup_steps=o.warmup_steps,
                            log_every=cfg.train.log_every, eval_every=10**9,
                            eval_batch_size=w.shape["batch"], checkpoint_every=None,
                            progress=False, workdir=workdir, restart=True)
    return {"throughput": summary["examples_per_sec"], "compile_s": summary["compile_time_s"],
            "params": summary.get("params") or summary.get("num_params"),
            "loss": summary.get("train_loss"), "device_memory_mb": _train_step_memory(captured[0])}


def _jax_loop(step, params, opt_state, pool, steps, w):
    import jax

    state = {"p": params, "o": opt_state}

    def one(x, y):
        state["p"], state["o"], loss = step(state["p"], state["o"], x, y)
        return loss

    sync = lambda loss: jax.block_until_ready((state["p"], loss))  # noqa: E731
    first, seconds, loss = timed(one, pool, steps, sync)
    memory = memory_mb(step.lower(state["p"], state["o"], *pool[0]).compile())
    units = (steps - 1) * w.shape["batch"] * w.per_example()
    return {"throughput": units / seconds, "compile_s": first, "loss": float(loss),
            "device_memory_mb": memory}


def run_jaxmodels_step(w, pool, steps, workdir):
    import flax.linen as nn
    import jax
    import optax
    from jaxmodels import models
    from jaxmodels.training import optim, tasks

    cfg = w.config(steps)
    model_cfg = tasks.resolve_model(cfg.model, _Outputs(pool.meta["outputs"]))
    module = models.build(model_cfg)
    tx, _ = optim.make_baked(cfg.optimizer, steps)  # the constants a hand-written chain has

    @jax.jit  # one compile, not one per initializer
    def make(x):
        rngs = {"params": jax.random.key(0), "dropout": jax.random.key(0)}
        params = nn.meta.unbox(module.init(rngs, x)["params"])
        return params, tx.init(params)

    params, opt_state = make(pool[0][0][:1])

    def loss_fn(p, x, y):
        logits = module.apply({"params": p}, x, train=True, rngs={"dropout": jax.random.key(1)})
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    def step(p, o, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(p, x, y)
        updates, o = tx.update(grads, o, p)
        return optax.apply_updates(p, updates), o, loss

    out = _jax_loop(jax.jit(step, donate_argnums=(0, 1)), params, opt_state, pool, steps, w)
    out["params"] = _count_jax(params)
    return out


class _Outputs:
    """Just enough of a data source for tasks.resolve_model to fill in vocab_size."""

    def __init__(self, n):
        self.num_outputs = n


def _count_jax(params) -> int:
    import jax
    import numpy as np

    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(params))


def run_flax(w, pool, steps, workdir):
    from peers import flax_reference as ref

    model = ref.build(w.family, w.shape, pool.meta["outputs"])
    tx = ref.optimizer(pool.meta["optimizer"], steps)
    params, opt_state = ref.init(model, tx, pool[0][0][:1])
    n = ref.count(params)
    _check_count("flax", n, pool)
    out = _jax_loop(ref.train_step(model, tx), params, opt_state, pool, steps, w)
    out["params"] = n
    return out


# ---------------------------------------------------------------------------------------------
# Peers outside JAX


def _check_count(impl: str, n: int, pool) -> None:
    want = pool.meta["params"]
    if n != want:
        raise SystemExit(f"{impl}: {n:,} parameters but jaxmodels' model has {want:,}: the peer "
                         f"is not the same model (fix benchmarks/peers/)")


def run_torch(w, pool, steps, workdir, compiled=False):
    import torch
    from peers import torch_models as tm

    model = tm.build(w.family, w.shape, pool.meta["outputs"])
    n = tm.count(model)
    _check_count("torch", n, pool)
    spec = pool.meta["optimizer"]
    opt, sched = tm.optimizer(model, spec, steps)
    step = tm.train_step(model, opt, sched, spec["grad_clip_norm"], compiled=compiled)
    batches = [(tm.to_torch_inputs(w.family, x), torch.from_numpy(y).long())
               for x, y in (pool[i] for i in range(len(pool)))]
    cyc = _Cycle(batches)
    first, seconds, loss = timed(step, cyc, steps, lambda loss: loss.item())
    units = (steps - 1) * w.shape["batch"] * w.per_example()
    return {"throughput": units / seconds, "compile_s": first, "loss": float(loss), "params": n,
            "device_memory_mb": None}


class _Cycle:
    def __init__(self, items):
        self.items = items

    def __getitem__(self, i):
        return self.items[i % len(self.items)]


def run_torch_compile(w, pool, steps, workdir):
    return run_torch(w, pool, steps, workdir, compiled=True)


def run_keras(w, pool, steps, workdir):
    import numpy as np
    from peers import keras_cnn

    model = keras_cnn.build(w.shape, pool.meta["outputs"], pool.meta["optimizer"], steps)
    n = keras_cnn.count(model)
    _check_count("keras", n, pool)
    b = w.shape["batch"]
    # Keras' own loop over arrays: one fit of one batch compiles, a second fit is timed.
    x = np.concatenate([pool[i][0] for i in range(steps)])
    y = np.concatenate([pool[i][1] for i in range(steps)])
    t0 = time.perf_counter()
    model.fit(x[:b], y[:b], batch_size=b, epochs=1, verbose=0, shuffle=False)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    hist = model.fit(x[b:], y[b:], batch_size=b, epochs=1, verbose=0, shuffle=True)
    seconds = time.perf_counter() - t0
    return {"throughput": (steps - 1) * b / seconds, "compile_s": first,
            "loss": float(hist.history["loss"][-1]), "params": n, "device_memory_mb": None}


RUNNERS = {"jaxmodels": run_jaxmodels, "jaxmodels.fit": run_jaxmodels_fit,
           "jaxmodels-step": run_jaxmodels_step, "flax": run_flax, "torch": run_torch,
           "torch.compile": run_torch_compile, "keras": run_keras}


def measure_one(impl: str, w, pool, steps: int, workdir: str) -> dict:
    t0 = time.perf_counter()
    try:
        out = RUNNERS[impl](w, pool, steps, os.path.join(workdir, impl))
    except Exception as e:  # noqa: BLE001 - torch.compile on CPU may lack a compiler, etc.
        if impl != "torch.compile":
            raise
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        out = {"status": "n/a", "reason": f"torch.compile failed: {type(e).__name__}: {first[:200]}"}
    out.setdefault("status", "ok")
    out["impl"] = impl
    out["wall_s"] = time.perf_counter() - t0
    out["peak_rss_mb"] = peak_rss_mb()
    out["steps"] = steps
    if out["status"] == "ok" and not (math.isfinite(out["throughput"]) and out["throughput"] > 0):
        raise SystemExit(f"{impl}: throughput {out['throughput']} is not a positive number")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("workload", choices=sorted(workloads.WORKLOADS))
    p.add_argument("impls", help=f"one of {', '.join(IMPLS)}, or several comma-separated (run one "
                                 f"after another in this process: --smoke does, to save start-ups)")
    p.add_argument("--mode", choices=("full", "quick", "smoke"), default="full")
    p.add_argument("--pool", required=True, help="the folder run.py wrote the batches into")
    p.add_argument("--workdir", required=True)
    args = p.parse_args(argv)
    impls = args.impls.split(",")
    bad = [i for i in impls if i not in IMPLS]
    if bad:
        p.error(f"unknown implementation {', '.join(bad)}: choose from {', '.join(IMPLS)}")
    if "keras" in impls:
        os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported (peers/keras_cnn.py)
    w = workloads.get(args.workload, args.mode)
    pool = Pool(args.pool)
    for impl in impls:
        out = measure_one(impl, w, pool, pool.meta["steps"], args.workdir)
        print("RESULT " + json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
