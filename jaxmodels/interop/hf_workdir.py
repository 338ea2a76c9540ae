"""`jaxmodels import-hf` and `export-hf`: an HF checkpoint folder to a workdir that looks like a
finished run's (config.json, tokenizer.json, weights/), and back.

The imported workdir is what `sample`, `eval`, `predict` and `model.init_from` read: its
config.json is a whole jaxmodels Config (the model from the checkpoint; data: the built-in
shakespeare corpus, tokenised by the workdir's own tokenizer.json when the checkpoint ships one,
else bytes), weights/ is the orbax item the training loop writes at its end.
"""

import json
import pathlib

import numpy as np

from jaxmodels import config as config_lib
from jaxmodels import files
from jaxmodels.errors import UserError
from jaxmodels.interop import hf

TOKENIZER = "tokenizer.json"


def import_to_workdir(hf_dir, workdir, *, dataset: str = "shakespeare") -> pathlib.Path:
    """Convert HF checkpoint `hf_dir` into jaxmodels workdir `workdir`; returns the workdir."""
    import jax

    from jaxmodels.data.tokenizers import HFTokenizer
    from jaxmodels.training import checkpoint

    model_cfg, params = hf.load(hf_dir)
    workdir = pathlib.Path(workdir).absolute()
    if (workdir / checkpoint.WEIGHTS_DIR).exists() or (workdir / "checkpoints").exists():
        raise UserError(f"{workdir} already holds a run: import into a new --workdir")
    workdir.mkdir(parents=True, exist_ok=True)
    tokenizer = "byte"
    if (pathlib.Path(hf_dir) / TOKENIZER).is_file():
        tok = HFTokenizer.from_dir(hf_dir)
        if tok.vocab_size > model_cfg.vocab_size:
            raise UserError(f"{hf_dir}/{TOKENIZER} has {tok.vocab_size} tokens, more than the model's "
                            f"vocab_size={model_cfg.vocab_size}")
        files.write_atomic(workdir / TOKENIZER, json.dumps(tok.to_json()))
        tokenizer = str(workdir)
    data = config_lib.DataConfig(dataset=dataset, tokenizer=tokenizer, seq_len=min(64, model_cfg.max_len),
                                 batch_size=8, eval_batch_size=8, eval_split="validation")
    # A fine-tuning default (model.init_from=this workdir): a constant, small learning rate.
    cfg = config_lib.Config(model=model_cfg, data=data, optimizer=config_lib.OptimizerConfig(learning_rate=3e-4),
                            name=f"import-hf {pathlib.Path(hf_dir).name}")
    files.write_atomic(workdir / "config.json", config_lib.to_json(cfg))
    state = _Weights(params=jax.tree.map(np.asarray, params), model_state={})
    checkpoint.save_weights(workdir, state)
    return workdir


class _Weights:
    """What checkpoint.save_weights reads off a TrainState."""

    def __init__(self, params, model_state):
        self.params, self.model_state, self.step = params, model_state, 0


def read_workdir_weights(workdir) -> tuple:
    """(config, params as NumPy) of a finished or imported workdir."""
    import jax
    import jax.numpy as jnp

    from jaxmodels import models
    from jaxmodels.generate import read_config
    from jaxmodels.training import checkpoint

    workdir = pathlib.Path(workdir)
    cfg = read_config(workdir)
    model = models.build(cfg.model)
    example = jnp.zeros((1, min(8, cfg.model.max_len)), jnp.int32)
    import flax.linen as nn
    abstract = jax.eval_shape(lambda: nn.meta.unbox(model.init(jax.random.key(0), example)))
    params = abstract.pop("params")
    saved = checkpoint.restore_weights(workdir, {"params": params, "model_state": dict(abstract)})
    return cfg, jax.tree.map(np.asarray, saved["params"])


def export_from_workdir(workdir, out_dir) -> pathlib.Path:
    """Write the workdir's model as an HF checkpoint folder (and its HF tokenizer, if any)."""
    from jaxmodels.models.transformer_config import TransformerLMConfig

    cfg, params = read_workdir_weights(workdir)
    if not isinstance(cfg.model, TransformerLMConfig):
        raise UserError(f"export-hf needs a transformer_lm workdir, got model kind {cfg.model.kind!r}")
    out = hf.save(cfg.model, params, out_dir)
    tok_file = pathlib.Path(workdir) / TOKENIZER
    if tok_file.is_file():
        d = json.loads(tok_file.read_text())
        if d.get("kind") == "hf":
            (out / TOKENIZER).write_text(d["tokenizer_json"], encoding="utf-8")
    return out
