"""The benchmark scripts: `benchmarks/run.py --smoke` and `benchmarks/gpu.py --smoke` run and
write reports whose numbers are consistent, and every peer model has jaxmodels' parameter count.

Benchmarks are not timed here: only that they run and that what they write holds together
(positive finite throughputs, ratios equal to the quotients of the throughputs they name,
medians of the runs listed, the float32 check within its tolerance).
"""

import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import workloads  # noqa: E402
from peers import flax_reference  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_KERAS = importlib.util.find_spec("keras") is not None


def _env(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT
    env["JAXMODELS_CACHE_DIR"] = str(tmp_path / "cache")  # the CPU peak probe's file stays here
    return env


def _run(args, tmp_path, timeout=300):
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env=_env(tmp_path), capture_output=True,
                       text=True, timeout=timeout)
    assert p.returncode == 0, p.stderr[-3000:]
    return p


def _close(a, b):
    return math.isclose(a, b, rel_tol=1e-9)


@pytest.mark.slow
def test_run_smoke_writes_a_consistent_report(tmp_path):
    out = tmp_path / "smoke.json"
    p = _run([os.path.join(BENCH, "run.py"), "--smoke", "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert report["schema"] == "jaxmodels-bench/1" and report["mode"] == "smoke" and report["complete"]
    assert report["repeats"] == 1 and list(report["workloads"]) == ["cnn"]
    wl = report["workloads"]["cnn"]
    results = wl["results"]
    must_run = ["jaxmodels", "flax"] + (["torch"] if HAS_TORCH else []) + (["keras"] if HAS_KERAS else [])
    for impl in must_run:
        assert results[impl]["status"] == "ok", (impl, results[impl])
    for impl, r in results.items():
        if r["status"] != "ok":
            assert r["status"] in ("n/a", "failed") and r["reason"], (impl, r)
            assert impl not in must_run
            continue
        assert len(r["runs"]) == report["repeats"]
        assert all(math.isfinite(x) and x > 0 for x in r["runs"])
        assert _close(r["throughput"], statistics.median(r["runs"]))
        assert r["params"] == wl["params"], impl  # every implementation trains the same model
        assert r["peak_rss_mb"] > 50 and r["compile_s"] > 0
        if impl in ("jaxmodels", "flax"):
            mem = r["device_memory_mb"]
            assert mem["total"] > 0
            assert math.isclose(mem["total"], mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temp"])
        for key, ref in (("vs_torch", "torch"), ("vs_hand_written", "flax")):
            other = results.get(ref, {})
            if other.get("status") == "ok":
                assert _close(r[key], r["throughput"] / other["throughput"]), (impl, key)
            else:
                assert r[key] is None
        assert f"| cnn | {impl} |" in p.stdout  # the table has its row
    assert results["flax"]["vs_hand_written"] == 1.0


def test_matmul_shapes_smoke_reports_each_product_consistently(tmp_path):
    out = tmp_path / "matmuls.json"
    p = _run([os.path.join(BENCH, "matmul_shapes.py"), "--smoke", "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "matmul_shapes" and report["mode"] == "smoke"
    assert json.loads(p.stdout.strip().splitlines()[-1]) == report  # the same report on stdout
    rows = report["rows"]
    assert [r["workload"] for r in rows] == [w for w in ("gpt_6l", "gpt_4l", "vit") for _ in range(5)]
    for r in rows:
        sides = ("xla", "torch") if HAS_TORCH else ("xla",)
        for side in sides:
            assert math.isfinite(r[f"{side}_ms"]) and r[f"{side}_ms"] > 0
            assert _close(r[f"{side}_gflops"], r["gflop"] / (r[f"{side}_ms"] / 1e3))
        if HAS_TORCH:
            assert _close(r["xla_over_torch"], r["xla_gflops"] / r["torch_gflops"])
            assert r["rel_diff"] < 1e-4
        else:
            assert "torch_ms" not in r and r["rel_diff"] is None


def test_matmul_shapes_are_the_suite_models_shapes():
    """The products the matmul benchmark times are the ones the suite's models run: its D, F, H
    and T are read from workloads.py's shapes; here they must match the models' configs."""
    import matmul_shapes

    from jaxmodels.training import tasks

    for name in matmul_shapes.SUITE:
        w = workloads.get(name, "quick")
        n = matmul_shapes.dims(name, w.shape)
        outputs = 10 if w.family == "vit" else 65
        cfg = tasks.resolve_model(w.config(10).model, type("Source", (), {"num_outputs": outputs})())
        tokens = (28 // cfg.patch_size) ** 2 if w.family == "vit" else w.shape["seq_len"]
        assert (n["D"], n["F"], n["H"], n["T"]) == (cfg.d_model, cfg.ff_width, cfg.num_heads, tokens), name
        assert n["R"] == n["B"] * tokens and n["B"] == w.shape["batch"], name


def test_step_ablation_smoke_removes_each_part_and_reports_consistently(tmp_path):
    out = tmp_path / "ablation.json"
    _run([os.path.join(BENCH, "step_ablation.py"), "--smoke", "--only", "vit", "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    assert report["benchmark"] == "step_ablation" and list(report["workloads"]) == ["vit"]
    wl = report["workloads"]["vit"]
    for fw in ("jaxmodels", "torch") if HAS_TORCH else ("jaxmodels",):
        r = wl[fw]
        assert math.isfinite(r["loss"]) and r["step_ms"] > 0
        assert sorted(r["part_ms"]) == ["attention", "gelu", "norm"]
        for part, ms in r["part_ms"].items():
            assert _close(ms, r["step_ms"] - r["without_ms"][part])
            # The replacement was in effect: the step computed something else.
            assert math.isfinite(r["without_loss"][part]) and r["without_loss"][part] != r["loss"], (fw, part)
        assert _close(r["rest_ms"], r["step_ms"] - sum(r["part_ms"].values()))


def test_layer_norm_benchmark_smoke_compares_the_same_function(tmp_path):
    out = tmp_path / "layer_norm.json"
    _run([os.path.join(BENCH, "layer_norm.py"), "--smoke", "--only", "vit", "--json", str(out)], tmp_path)
    r = json.loads(out.read_text())["workloads"]["vit"]
    assert math.isclose(r["first_loss"]["jaxmodels"], r["first_loss"]["flax"], rel_tol=1e-4)
    assert r["flax_ms"] > 0 and r["jaxmodels_ms"] > 0 and len(r["speedups"]) == r["repeats"] == 1
    assert _close(r["speedup_median"], statistics.median(r["speedups"]))


def test_step_ablation_restores_what_it_replaces():
    import flax.linen as nn
    import step_ablation

    from jaxmodels.models import attention_ops, transformer_blocks

    before = (attention_ops.einsum_attention, attention_ops.blocked_causal_attention,
              transformer_blocks.norm, nn.gelu)
    for part, (index, *_) in (("attention", (0, 1)), ("norm", (2,)), ("gelu", (3,))):
        with step_ablation.removed(part):
            now = (attention_ops.einsum_attention, attention_ops.blocked_causal_attention,
                   transformer_blocks.norm, nn.gelu)
            assert now[index] is not before[index], part
        assert (attention_ops.einsum_attention, attention_ops.blocked_causal_attention,
                transformer_blocks.norm, nn.gelu) == before, part
    with pytest.raises(ValueError, match="unknown part"):
        with step_ablation.removed("dropout"):
            pass
    assert transformer_blocks.norm is before[2]


@pytest.mark.slow
def test_gpu_smoke_runs_on_cpu_and_its_check_passes(tmp_path):
    out = tmp_path / "gpu.json"
    _run([os.path.join(BENCH, "gpu.py"), "--smoke", "--json", str(out)], tmp_path)
    report = json.loads(out.read_text())
    (model,) = report["models"]
    assert "error" not in model, model
    assert math.isfinite(model["tokens_per_s"]) and model["tokens_per_s"] > 0
    assert model["dtype"] == "bfloat16" and model["param_dtype"] == "float32"
    assert model["attention"] == "xla" and "no GPU" in model["attention_note"]
    assert 0 < model["mfu"] < 1 and model["xla_step_memory_mb"]["total"] > 0
    # MFU is the FLOP rate over the peak it names.
    assert math.isclose(model["mfu"], model["flops_per_token"] * model["tokens_per_s"] / model["peak_flops_per_s"])
    check = report["check"]
    assert check["passed"] and len(check["losses_cpu"]) == check["steps"] == 5
    assert check["max_rel_loss_diff"] <= check["rtol"]
    assert all(math.isfinite(x) for x in check["losses_device"])


def _jaxmodels_count(w):
    import dataclasses

    from jaxmodels import models

    cfg = w.config(10)
    model_cfg = cfg.model
    outputs = 10 if w.family in ("cnn", "vit") else 65
    if hasattr(model_cfg, "vocab_size"):
        model_cfg = dataclasses.replace(model_cfg, vocab_size=outputs)
    x = np.zeros((1, 28, 28, 1), np.float32) if w.unit == "images" else np.zeros((1, w.shape["seq_len"]), np.int32)
    shapes = jax.eval_shape(lambda: models.build(model_cfg).init(
        {"params": jax.random.key(0), "dropout": jax.random.key(0)}, jnp.asarray(x)))
    return sum(int(np.prod(a.shape)) for a in jax.tree.leaves(shapes["params"])), outputs, x


@pytest.mark.parametrize("name", sorted(workloads.SMOKE_SHAPES))
def test_peers_have_the_parameter_count_of_jaxmodels_models(name):
    """The peers rebuild each workload by hand; a missing bias or a wrong MLP width changes the
    count, and the benchmark would compare different models."""
    w = workloads.get(name, "smoke")
    want, outputs, x = _jaxmodels_count(w)
    model = flax_reference.build(w.family, w.shape, outputs)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.asarray(x))["params"])
    assert flax_reference.count(shapes) == want
    if HAS_TORCH:
        from peers import torch_models

        assert torch_models.count(torch_models.build(w.family, w.shape, outputs)) == want
