"""Hugging Face checkpoints (jaxmodels/interop/hf.py): imported logits and greedy generations equal
transformers' own on tiny random GPT-2 and Llama checkpoints built here (no network), the export
round-trips, and bad checkpoints fail with one line."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxmodels.errors import UserError
from jaxmodels.generate import make_generate
from jaxmodels.interop import hf
from jaxmodels.models.transformer import TransformerLM
from helpers import sigterm_when_reading

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VOCAB = 61


def _gpt2(path):
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                  layer_norm_epsilon=1e-5, bos_token_id=None, eos_token_id=None)
    return cfg


def _llama(path):
    return transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                    max_position_embeddings=64, bos_token_id=None, eos_token_id=None, rms_norm_eps=1e-5, rope_theta=500.0,
                                    tie_word_embeddings=False)


def _build(tmp_path_factory, name, make_cfg, model_cls):
    path = tmp_path_factory.mktemp(name)
    torch.manual_seed(0)
    model = model_cls(make_cfg(path)).eval()
    with torch.no_grad():  # random norms and biases, so that a swapped or dropped one shows
        for n, p in model.named_parameters():
            if p.ndim == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if "weight" in n else 0.0))
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def checkpoint(request, tmp_path_factory):
    if request.param == "gpt2":
        return _build(tmp_path_factory, "gpt2", _gpt2, transformers.GPT2LMHeadModel)
    return _build(tmp_path_factory, "llama", _llama, transformers.LlamaForCausalLM)


TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 24)).astype(np.int32)


def _torch_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(tokens, dtype=torch.long)).logits.float().numpy()


def _our_logits(cfg, params, tokens):
    return np.asarray(TransformerLM(cfg).apply({"params": params}, jnp.asarray(tokens)))


def test_import_logits_equal_transformers(checkpoint):
    path, model = checkpoint
    cfg, params = hf.load(path)
    diff = np.abs(_our_logits(cfg, params, TOKENS) - _torch_logits(model, TOKENS)).max()
    assert diff < 1e-4, diff


def test_import_greedy_generation_equals_transformers(checkpoint):
    path, model = checkpoint
    cfg, params = hf.load(path)
    prompt = TOKENS[:, :5]
    with torch.no_grad():
        theirs = model.generate(torch.tensor(prompt, dtype=torch.long), max_new_tokens=20, do_sample=False,
                                attention_mask=torch.ones(prompt.shape, dtype=torch.long), pad_token_id=0).numpy()
    gen = make_generate(TransformerLM(cfg), buffer_len=32, context=cfg.max_len)
    buf = np.zeros((2, 32), np.int32)
    buf[:, :5] = prompt
    ours = gen({"params": params}, jnp.asarray(buf), 5, 20, jax.random.key(0), jnp.float32(0.0),
               jnp.int32(0), jnp.float32(1.0))
    np.testing.assert_array_equal(np.asarray(ours)[:, :25], theirs)


def test_export_round_trip(checkpoint, tmp_path):
    path, model = checkpoint
    cfg, params = hf.load(path)
    hf.save(cfg, params, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    diff = np.abs(_torch_logits(back, TOKENS) - _torch_logits(model, TOKENS)).max()
    assert diff < 1e-5, diff


def test_export_freshly_initialised_model(tmp_path):
    # A model made in jaxmodels (random init, not imported) gives the same logits in transformers.
    from jaxmodels.models.transformer_config import TransformerLMConfig
    cfg = TransformerLMConfig(num_layers=1, num_heads=2, num_kv_heads=1, d_model=16, max_len=32,
                              positional="rope", norm="rmsnorm", mlp="swiglu", vocab_size=VOCAB,
                              tie_embeddings=True, rope_base=1000.0)
    params = TransformerLM(cfg).init(jax.random.key(1), jnp.zeros((1, 8), jnp.int32))["params"]
    params = jax.tree.map(lambda b: b.value, params, is_leaf=lambda b: hasattr(b, "value"))
    hf.save(cfg, params, tmp_path / "out")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    diff = np.abs(_torch_logits(back, TOKENS) - _our_logits(cfg, params, TOKENS)).max()
    assert diff < 1e-4, diff


def _copy(src, dst, **changes):
    shutil.copytree(src, dst)
    config = json.loads((dst / "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def test_unsupported_model_type(checkpoint, tmp_path):
    bad = _copy(checkpoint[0], tmp_path / "bad", model_type="mistral")
    with pytest.raises(UserError, match="model_type='mistral'"):
        hf.load(bad)


def test_rope_scaling_refused():
    config = hf.model_config  # the check needs no weights
    with pytest.raises(UserError, match="rope_scaling"):
        config({"model_type": "llama", "rope_scaling": {"rope_type": "linear", "factor": 2.0},
                "hidden_size": 32, "num_attention_heads": 4})
    with pytest.raises(UserError, match="attention_bias"):
        config({"model_type": "llama", "attention_bias": True, "hidden_size": 32, "num_attention_heads": 4})


def test_missing_weights(checkpoint, tmp_path):
    bad = _copy(checkpoint[0], tmp_path / "bad")
    (bad / "model.safetensors").unlink()
    with pytest.raises(UserError, match="no model.safetensors"):
        hf.load(bad)


def _tiny_tokenizer(path):
    # A word-level tokenizer over a few Shakespeare words, [UNK] for the rest, VOCAB ids.
    from tokenizers import Tokenizer, models, pre_tokenizers
    words = ["[UNK]", "the", "and", "to", "of", "I", "you", "my", "a", "that", "in", "is", "not", "me", "it"]
    words += [f"w{i}" for i in range(VOCAB - len(words))]  # every id the model can sample decodes
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """(HF dir with a tokenizer.json, its torch model, the workdir `jaxmodels import-hf` made)."""
    from jaxmodels import cli

    src, model = _build(tmp_path_factory, "llama_tok", _llama, transformers.LlamaForCausalLM)
    _tiny_tokenizer(src)
    work = tmp_path_factory.mktemp("imported") / "w"
    assert cli.main(["import-hf", str(src), "--workdir", str(work)]) == 0
    return src, model, work


def test_cli_import_sample_eval_predict_export(imported, tmp_path):
    import jaxmodels
    from jaxmodels import cli

    src, model, work = imported
    out = tmp_path / "out"
    assert cli.main(["sample", "--workdir", str(work), "--prompt", "the", "--max-new-tokens", "5",
                     "--temperature", "0"]) == 0
    assert cli.main(["eval", "--workdir", str(work), "data.eval_windows=4"]) == 0
    logits = jaxmodels.predict(work, TOKENS)
    assert logits.dtype == np.float32 and logits.shape == (*TOKENS.shape, VOCAB)
    assert np.abs(logits - _torch_logits(model, TOKENS)).max() < 1e-4
    assert cli.main(["export-hf", "--workdir", str(work), str(out)]) == 0
    assert (out / "tokenizer.json").read_text() == (src / "tokenizer.json").read_text()
    back = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert np.abs(_torch_logits(back, TOKENS) - _torch_logits(model, TOKENS)).max() < 1e-5


def _finetune_config(work, *overrides):
    from jaxmodels import config as C
    from jaxmodels.generate import read_config
    return C.apply_overrides(read_config(work), [
        f"model.init_from={work}", "train.steps=20", "train.log_every=5", "train.eval_every=10",
        "checkpoint.every_steps=none", "train.progress=false", "optimizer.learning_rate=3e-3",
        "data.eval_windows=4", *overrides])


def test_init_from_fine_tunes_and_resumes_bitwise(imported, tmp_path, monkeypatch):
    import signal

    import jaxmodels
    from jaxmodels.errors import RunStopped
    from jaxmodels.training import tasks

    src, model, work = imported
    # data.prefetch=0: the SIGTERM below is raised when the stream reads batch 7, which with the
    # read-ahead thread would be a step or more earlier (the resume is exact either way).
    cfg = _finetune_config(work, "data.prefetch=0")
    reference = jaxmodels.train(cfg, tmp_path / "reference")
    records = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert losses[-1] < losses[0], losses
    # Step 1 starts from the imported weights: its loss is the checkpoint's own on that batch,
    # far below a fresh random init's log(VOCAB) only if the weights were read, so compare runs.
    scratch = jaxmodels.train(_finetune_config(work, "model.init_from=none"), tmp_path / "scratch")
    assert scratch["train_loss"] != reference["train_loss"]

    restore = sigterm_when_reading(monkeypatch, cfg.data, 7)
    with pytest.raises(RunStopped, match="stopped by SIGTERM after step 7"):
        jaxmodels.train(cfg, tmp_path / "run")
    restore()
    resumed = jaxmodels.train(cfg, tmp_path / "run")
    assert resumed["resumed_from"] == [7]
    for key in ("train_loss", "val_loss", "eval_loss"):
        assert resumed[key] == reference[key], key
    import orbax.checkpoint as ocp
    read = lambda w: ocp.StandardCheckpointer().restore((w / "weights").absolute())  # noqa: E731
    for x, y in zip(jax.tree.leaves(read(tmp_path / "reference")), jax.tree.leaves(read(tmp_path / "run"))):
        assert np.array_equal(np.asarray(x), np.asarray(y))

    # The fine-tuned model, exported, gives transformers the logits jaxmodels computes.
    from jaxmodels.interop import hf_workdir
    hf_workdir.export_from_workdir(tmp_path / "reference", tmp_path / "exported")
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    diff = np.abs(_torch_logits(back, TOKENS) - jaxmodels.predict(tmp_path / "reference", TOKENS)).max()
    assert diff < 1e-4, diff


def test_init_from_shape_mismatch_is_one_line(imported, tmp_path):
    import jaxmodels
    from jaxmodels.errors import ConfigError

    with pytest.raises(ConfigError, match="does not fit this model: parameter .* is") as e:
        jaxmodels.train(_finetune_config(imported[2], "model.d_ff=48"),
                        tmp_path / "bad")
    assert "\n" not in str(e.value)


def test_cli_trains_from_an_imported_config_json(imported, tmp_path):
    from jaxmodels import cli

    work = imported[2]
    assert cli.main(["train", str(work / "config.json"), f"model.init_from={work}", "train.steps=2",
                     "train.progress=false", "checkpoint.every_steps=none", "data.eval_windows=2",
                     "--workdir", str(tmp_path / "ft")]) == 0
    assert (tmp_path / "ft" / "weights").is_dir()


def test_import_into_a_used_workdir_and_init_from_without_weights(imported, tmp_path):
    import jaxmodels
    from jaxmodels.interop import hf_workdir

    src, _, work = imported
    with pytest.raises(UserError, match="already holds a run"):
        hf_workdir.import_to_workdir(src, work)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no weights/"):
        jaxmodels.train(_finetune_config(work, f"model.init_from={tmp_path / 'empty'}"), tmp_path / "bad")


def test_init_from_under_fsdp_tensor_on_8_devices_equals_one_device(imported, tmp_path):
    """model.init_from restores the imported weights straight into the run's shardings: a
    fsdp_tensor run on 8 simulated devices (a subprocess, so the device count is its own) logs the
    same losses as the data-parallel run from the same import."""
    import os
    import pathlib
    import subprocess
    import sys

    from jaxmodels import cli

    work = imported[2]
    common = [str(work / "config.json"), f"model.init_from={work}", "train.steps=3",
              "train.log_every=1", "train.eval_every=none", "train.progress=false",
              "checkpoint.every_steps=none", "data.eval_windows=2", "data.batch_size=8",
              "optimizer.learning_rate=3e-3", "train.tensorboard=false"]
    assert cli.main(["train", *common, "--workdir", str(tmp_path / "one")]) == 0
    root = pathlib.Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), JAX_PLATFORMS="cpu",
               XLA_FLAGS="--xla_force_host_platform_device_count=8")
    done = subprocess.run([sys.executable, "-m", "jaxmodels.cli", "train", *common,
                           "parallel.preset=fsdp_tensor", "--workdir", str(tmp_path / "eight")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]

    def losses(w):
        lines = (w / "metrics.jsonl").read_text().splitlines()
        return [json.loads(line)["loss"] for line in lines if "loss" in json.loads(line)]

    one, eight = losses(tmp_path / "one"), losses(tmp_path / "eight")
    assert len(one) == 3 and np.allclose(one, eight, rtol=1e-5, atol=1e-6), (one, eight)
    summary = json.loads((tmp_path / "eight" / "summary.json").read_text())
    assert len(summary["devices"]) == 8, summary["devices"]
