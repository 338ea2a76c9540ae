"""The benchmark workloads: each one a jaxmodels config (an experiment file plus overrides) and
the sizes its peers rebuild by hand.

A workload's shape lives in one place, `Workload.shape`: the jaxmodels overrides and the peers'
constructors (peers/*.py) both read it, so the implementations cannot drift apart. Steps per run
come in three sizes: "full" (the quiet sitting), "quick" (a few minutes in all) and "smoke"
(tiny shapes, seconds, for the tests).
"""

from __future__ import annotations

import dataclasses
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "experiments", "configs")


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    family: str  # "cnn", "gpt", "lstm" or "vit": which peer model rebuilds it
    experiment: str  # file under experiments/configs
    shape: dict  # model and batch sizes, shared by every implementation
    # {"full": n, "quick": n, "smoke": n}, the first (compiling) step included: sized so that a
    # run's timed steps take 5-20 s on 2 cores (the whole suite then fits in 25 minutes).
    steps: dict
    peers: tuple[str, ...]  # implementations beside jaxmodels
    note: str = ""

    @property
    def unit(self) -> str:
        return "images" if self.family in ("cnn", "vit") else "tokens"

    def per_example(self) -> int:
        """Units per example: tokens per window for language models, 1 per image."""
        return self.shape.get("seq_len", 1) if self.unit == "tokens" else 1

    def overrides(self, steps: int) -> list[str]:
        """KEY=VALUE overrides that turn the experiment file into this workload, `steps` long."""
        s = self.shape
        out = [f"train.steps={steps}", "train.progress=false", "train.eval_every=1000000000",
               "checkpoint.every_steps=none", f"data.batch_size={s['batch']}",
               # a decaying schedule needs its warmup inside the run
               f"optimizer.warmup_steps={max(1, min(s.get('warmup', 100), steps // 10))}"]
        if self.family == "gpt":
            out += [f"model.num_layers={s['layers']}", f"model.d_model={s['width']}",
                    f"model.num_heads={s['heads']}", f"model.max_len={s['seq_len']}",
                    f"data.seq_len={s['seq_len']}", "model.positional=learned",
                    "model.tie_embeddings=true", "model.dropout=0.0"]
        elif self.family == "lstm":
            out += [f"model.hidden={s['hidden']}", f"model.embed_dim={s['embed']}",
                    f"data.seq_len={s['seq_len']}"]
        elif self.family == "vit":
            out += [f"model.num_layers={s['layers']}", f"model.d_model={s['width']}",
                    f"model.num_heads={s['heads']}", f"model.d_ff={s['ff']}",
                    f"model.patch_size={s['patch']}", f"model.max_len={(28 // s['patch']) ** 2}"]
        elif self.family == "cnn":
            out += [f"model.filters={s['filters']}"]
        return out

    def config(self, steps: int):
        """The jaxmodels Config of this workload (imports jaxmodels: call it in a child)."""
        import jaxmodels

        cfg = jaxmodels.load_config(os.path.join(CONFIGS, self.experiment))
        return jaxmodels.apply_overrides(cfg, self.overrides(steps))


_TORCH = ("torch", "torch.compile")

WORKLOADS: dict[str, Workload] = {w.name: w for w in (
    Workload("cnn", "cnn", "seed_cnn_mnist.py", {"batch": 32, "filters": 32, "warmup": 500},
             {"full": 400, "quick": 200, "smoke": 3}, ("flax", *_TORCH, "keras"),
             "seed CNN (conv 3x3/32, max-pool, dense 10), Adam, batch 32"),
    Workload("gpt_6l", "gpt", "gpt_shakespeare.py",
             {"batch": 16, "seq_len": 256, "layers": 6, "width": 384, "heads": 6},
             {"full": 5, "quick": 3, "smoke": 3}, ("flax", *_TORCH),
             "GPT 6L/384D/6H, ctx 256, batch 16, learned positions, tied embeddings, vocab 65"),
    Workload("gpt_4l", "gpt", "gpt_shakespeare.py",
             {"batch": 12, "seq_len": 64, "layers": 4, "width": 128, "heads": 4},
             {"full": 120, "quick": 40, "smoke": 3}, ("flax", *_TORCH),
             "GPT 4L/128D/4H, ctx 64, batch 12, learned positions, tied embeddings, vocab 65"),
    Workload("lstm", "lstm", "lstm_shakespeare.py",
             {"batch": 32, "seq_len": 64, "hidden": 256, "embed": 64},
             {"full": 80, "quick": 30, "smoke": 3}, ("flax", *_TORCH),
             "LSTM 1x256 (embedding 64), ctx 64, batch 32, vocab 65"),
    Workload("vit", "vit", "vit_mnist.py",
             {"batch": 128, "layers": 4, "width": 64, "heads": 4, "ff": 128, "patch": 4,
              "warmup": 300},
             {"full": 20, "quick": 8, "smoke": 3}, ("flax", *_TORCH),
             "ViT 4x4 patches, 4 layers x 64 (MLP 128), mean pool, MNIST, batch 128"),
    Workload("gpt2_small", "gpt", "gpt_shakespeare.py",
             {"batch": 2, "seq_len": 256, "layers": 12, "width": 768, "heads": 12},
             {"full": 3, "quick": 3, "smoke": 3}, ("flax", "torch"),
             "GPT-2-small shape: 12L/768D/12H, ctx 256, batch 2, vocab 65 (85M parameters); "
             "few steps; torch.compile left out (its CPU compile of this graph alone exceeds the "
             "suite's budget)"),
)}

# --smoke: the same families at toy sizes (one of each), so the test exercises every
# implementation path in seconds.
SMOKE_SHAPES: dict[str, dict] = {
    "cnn": {"batch": 8, "filters": 4, "warmup": 1},
    "gpt_6l": {"batch": 2, "seq_len": 16, "layers": 1, "width": 16, "heads": 2},
    "lstm": {"batch": 2, "seq_len": 8, "hidden": 8, "embed": 4},
    "vit": {"batch": 4, "layers": 1, "width": 8, "heads": 2, "ff": 16, "patch": 7, "warmup": 1},
}


def get(name: str, mode: str) -> Workload:
    w = WORKLOADS[name]
    if mode == "smoke":
        w = dataclasses.replace(w, shape=SMOKE_SHAPES[name])
    return w
