"""Hugging Face `transformers` checkpoints (GPT-2, Llama) to and from our TransformerLM.

A checkpoint directory is `config.json` + `model.safetensors`; both are read and written with
safetensors' NumPy API, so no torch is needed at run time. The mapping is exact, never an
approximation: what our model cannot express (another architecture, rope scaling, Llama biases,
an activation other than the one we compute) is refused with one line naming the field.

Our parameters are the unscanned, separate-projection layout (`scan_layers=False`,
`fused_projections=False`), the one `model.init` gives for the config this module returns.

Conventions checked against transformers' code:
  GPT-2's Conv1D stores [in, out] like a Dense kernel; c_attn is [D, 3D] = q | k | v, each
  head-major (H, Dh). `gelu_new` is the tanh approximation, flax's default `nn.gelu`.
  Llama's Linear stores [out, in]; q_proj's out axis is (H, Dh) head-major, k/v (G, Dh).
  Its `rotate_half` pairs dimension j with j + Dh/2, the convention of our `positional.rope`.

Shape names (the package glossary in jaxmodels/models/__init__.py): D model width; H query heads;
G key/value heads; Dh head dim; F MLP hidden units; V vocabulary; M max_len.
"""

import json
import pathlib

import numpy as np

from jaxmodels.errors import ConfigError, UserError
from jaxmodels.models.transformer_config import TransformerLMConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"


def _refuse(field: str, value, why: str):
    raise ConfigError(f"unsupported Hugging Face checkpoint: {field}={value!r} ({why})")


def read_hf_config(path) -> dict:
    path = pathlib.Path(path)
    if not (path / CONFIG).is_file():
        raise UserError(f"{path} is not a Hugging Face checkpoint: no {CONFIG} in it")
    if not (path / WEIGHTS).is_file():
        raise UserError(f"{path} has no {WEIGHTS}: save the checkpoint with safetensors "
                        "(save_pretrained(..., safe_serialization=True)); sharded or .bin weights are not read")
    return json.loads((path / CONFIG).read_text())


def _rope_theta(hf: dict) -> float:
    # transformers 4.x: rope_theta (+ rope_scaling); 5.x: rope_parameters {"rope_type", "rope_theta"}.
    params = hf.get("rope_parameters") or {}
    scaling = hf.get("rope_scaling")
    if scaling:
        _refuse("rope_scaling", scaling, "only plain RoPE is supported")
    if params.get("rope_type", "default") != "default":
        _refuse("rope_parameters.rope_type", params["rope_type"], "only plain RoPE is supported")
    return float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))


def model_config(hf: dict) -> TransformerLMConfig:
    """Our TransformerLMConfig for a transformers config dict (float32)."""
    kind = hf.get("model_type")
    if kind == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            _refuse("activation_function", act, "only the tanh-approximate gelu (gelu_new) is supported")
        for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn", "add_cross_attention"):
            if hf.get(flag):
                _refuse(flag, hf[flag], "not supported")
        if not hf.get("scale_attn_weights", True):
            _refuse("scale_attn_weights", False, "attention is always scaled by 1/sqrt(head_dim)")
        d = hf["n_embd"]
        return TransformerLMConfig(
            num_layers=hf["n_layer"], num_heads=hf["n_head"], d_model=d, d_ff=hf.get("n_inner") or 4 * d,
            max_len=hf["n_positions"], positional="learned", norm="layernorm", mlp="gelu",
            norm_eps=float(hf.get("layer_norm_epsilon", 1e-5)), bias=True,
            vocab_size=hf["vocab_size"], tie_embeddings=bool(hf.get("tie_word_embeddings", True)))
    if kind == "llama":
        if hf.get("hidden_act", "silu") != "silu":
            _refuse("hidden_act", hf["hidden_act"], "only silu (SwiGLU) is supported")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                _refuse(flag, hf[flag], "Llama biases are not supported")
        rope_base = _rope_theta(hf)
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        if hf.get("head_dim") not in (None, d // h):
            _refuse("head_dim", hf["head_dim"], f"must be hidden_size/num_attention_heads={d // h}")
        return TransformerLMConfig(
            num_layers=hf["num_hidden_layers"], num_heads=h, num_kv_heads=hf.get("num_key_value_heads") or h,
            d_model=d, d_ff=hf["intermediate_size"], max_len=hf["max_position_embeddings"],
            positional="rope", norm="rmsnorm", mlp="swiglu", norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_base=rope_base, bias=False, vocab_size=hf["vocab_size"],
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
    _refuse("model_type", kind, "supported: gpt2, llama")


def _check_convertible(cfg: TransformerLMConfig) -> None:
    if cfg.scan_layers or cfg.fused_projections:
        raise ConfigError("Hugging Face conversion needs model.scan_layers=false and "
                          "model.fused_projections=false")


def _gpt2_params(w: dict, cfg: TransformerLMConfig) -> dict:
    d, h, dh = cfg.d_model, cfg.num_heads, cfg.head_dim
    t = lambda name: w["transformer." + name] if "transformer." + name in w else w[name]  # noqa: E731
    blocks = {}
    for i in range(cfg.num_layers):
        p = f"h.{i}."
        qkv_Dx3D, qkv_b = t(p + "attn.c_attn.weight"), t(p + "attn.c_attn.bias")
        attn = {}
        for j, name in enumerate(("query", "key", "value")):
            attn[name] = qkv_Dx3D[:, j * d:(j + 1) * d].reshape(d, h, dh)
            attn[name + "_bias"] = qkv_b[j * d:(j + 1) * d].reshape(h, dh)
        attn["out"] = t(p + "attn.c_proj.weight").reshape(h, dh, d)
        attn["out_bias"] = t(p + "attn.c_proj.bias")
        blocks[f"block_{i}"] = {
            "attn_norm": {"scale": t(p + "ln_1.weight"), "bias": t(p + "ln_1.bias")},
            "attn": attn,
            "mlp_norm": {"scale": t(p + "ln_2.weight"), "bias": t(p + "ln_2.bias")},
            "mlp": {"up": t(p + "mlp.c_fc.weight"), "up_bias": t(p + "mlp.c_fc.bias"),
                    "down": t(p + "mlp.c_proj.weight"), "down_bias": t(p + "mlp.c_proj.bias")},
        }
    blocks["final_norm"] = {"scale": t("ln_f.weight"), "bias": t("ln_f.bias")}
    params = {"embed": {"embedding": t("wte.weight")}, "positions": {"embedding": t("wpe.weight")},
              "stack": blocks}
    if not cfg.tie_embeddings:
        params["head"] = w["lm_head.weight"].T
    return params


def _llama_params(w: dict, cfg: TransformerLMConfig) -> dict:
    d, h, g, dh = cfg.d_model, cfg.num_heads, cfg.kv_heads, cfg.head_dim
    blocks = {}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        blocks[f"block_{i}"] = {
            "attn_norm": {"scale": w[p + "input_layernorm.weight"]},
            "attn": {"query": w[a + "q_proj.weight"].T.reshape(d, h, dh),
                     "key": w[a + "k_proj.weight"].T.reshape(d, g, dh),
                     "value": w[a + "v_proj.weight"].T.reshape(d, g, dh),
                     "out": w[a + "o_proj.weight"].T.reshape(h, dh, d)},
            "mlp_norm": {"scale": w[p + "post_attention_layernorm.weight"]},
            "mlp": {"gate": w[p + "mlp.gate_proj.weight"].T, "up": w[p + "mlp.up_proj.weight"].T,
                    "down": w[p + "mlp.down_proj.weight"].T},
        }
    blocks["final_norm"] = {"scale": w["model.norm.weight"]}
    params = {"embed": {"embedding": w["model.embed_tokens.weight"]}, "stack": blocks}
    if not cfg.tie_embeddings:
        params["head"] = w["lm_head.weight"].T
    return params


def load(path) -> tuple[TransformerLMConfig, dict]:
    """(our model config, params as nested dicts of float32 NumPy arrays) for an HF directory."""
    from safetensors.numpy import load_file

    hf = read_hf_config(path)
    cfg = model_config(hf)
    w = {k: np.asarray(v, np.float32) for k, v in load_file(str(pathlib.Path(path) / WEIGHTS)).items()}
    try:
        params = (_gpt2_params if hf["model_type"] == "gpt2" else _llama_params)(w, cfg)
    except KeyError as e:
        raise UserError(f"{path}/{WEIGHTS} lacks the tensor {e.args[0]} its config.json implies") from None
    except ValueError as e:
        raise UserError(f"{path}/{WEIGHTS} does not match its config.json: {e}") from None
    return cfg, params


def hf_config(cfg: TransformerLMConfig) -> dict:
    """The transformers config dict for one of our configs (GPT-2 or Llama shaped), or refuse."""
    _check_convertible(cfg)
    eps = cfg.norm_eps
    if cfg.positional == "learned" and cfg.norm == "layernorm" and cfg.mlp == "gelu" and cfg.kv_heads == cfg.num_heads:
        if not cfg.bias:
            raise ConfigError("export as GPT-2 needs model.bias=true (GPT-2 has biases everywhere)")
        return {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "n_embd": cfg.d_model,
                "n_layer": cfg.num_layers, "n_head": cfg.num_heads, "n_inner": cfg.ff_width,
                "n_positions": cfg.max_len, "n_ctx": cfg.max_len, "vocab_size": cfg.vocab_size,
                "layer_norm_epsilon": 1e-6 if eps is None else eps, "activation_function": "gelu_new",
                "tie_word_embeddings": cfg.tie_embeddings, "resid_pdrop": 0.0, "embd_pdrop": 0.0,
                "attn_pdrop": 0.0, "torch_dtype": "float32"}
    if cfg.positional == "rope" and cfg.norm == "rmsnorm" and cfg.mlp == "swiglu" and not cfg.bias:
        return {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": cfg.d_model,
                "intermediate_size": cfg.ff_width, "num_hidden_layers": cfg.num_layers,
                "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.kv_heads,
                "head_dim": cfg.head_dim, "max_position_embeddings": cfg.max_len,
                "rms_norm_eps": 1e-6 if eps is None else eps, "rope_theta": cfg.rope_base,
                "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
                "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings,
                "torch_dtype": "float32"}
    raise ConfigError("export to Hugging Face needs a GPT-2-shaped model (learned, layernorm, gelu, bias=true) "
                      "or a Llama-shaped one (rope, rmsnorm, swiglu, bias=false)")


def _gpt2_tensors(params: dict, cfg: TransformerLMConfig) -> dict:
    d, f = cfg.d_model, cfg.ff_width
    out = {"transformer.wte.weight": params["embed"]["embedding"],
           "transformer.wpe.weight": params["positions"]["embedding"]}
    stack = params["stack"]
    for i in range(cfg.num_layers):
        b, p = stack[f"block_{i}"], f"transformer.h.{i}."
        a = b["attn"]
        out[p + "ln_1.weight"], out[p + "ln_1.bias"] = b["attn_norm"]["scale"], b["attn_norm"]["bias"]
        out[p + "attn.c_attn.weight"] = np.concatenate([a[n].reshape(d, d) for n in ("query", "key", "value")], 1)
        out[p + "attn.c_attn.bias"] = np.concatenate([a[n + "_bias"].reshape(d) for n in ("query", "key", "value")])
        out[p + "attn.c_proj.weight"], out[p + "attn.c_proj.bias"] = a["out"].reshape(d, d), a["out_bias"]
        out[p + "ln_2.weight"], out[p + "ln_2.bias"] = b["mlp_norm"]["scale"], b["mlp_norm"]["bias"]
        m = b["mlp"]
        out[p + "mlp.c_fc.weight"], out[p + "mlp.c_fc.bias"] = m["up"].reshape(d, f), m["up_bias"]
        out[p + "mlp.c_proj.weight"], out[p + "mlp.c_proj.bias"] = m["down"], m["down_bias"]
    out["transformer.ln_f.weight"] = stack["final_norm"]["scale"]
    out["transformer.ln_f.bias"] = stack["final_norm"]["bias"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["head"].T
    return out


def _llama_tensors(params: dict, cfg: TransformerLMConfig) -> dict:
    d = cfg.d_model
    out = {"model.embed_tokens.weight": params["embed"]["embedding"]}
    stack = params["stack"]
    for i in range(cfg.num_layers):
        b, p = stack[f"block_{i}"], f"model.layers.{i}."
        a, m = b["attn"], b["mlp"]
        out[p + "input_layernorm.weight"] = b["attn_norm"]["scale"]
        out[p + "post_attention_layernorm.weight"] = b["mlp_norm"]["scale"]
        for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v")):
            out[p + f"self_attn.{theirs}_proj.weight"] = a[ours].reshape(d, -1).T
        out[p + "self_attn.o_proj.weight"] = a["out"].reshape(-1, d).T
        for name in ("gate", "up", "down"):
            out[p + f"mlp.{name}_proj.weight"] = m[name].T
    out["model.norm.weight"] = stack["final_norm"]["scale"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["head"].T
    return out


def save(cfg: TransformerLMConfig, params, out_dir) -> pathlib.Path:
    """Write `params` (our layout; any array type) as an HF directory transformers can load."""
    from safetensors.numpy import save_file

    hf = hf_config(cfg)
    params = _to_numpy(params)
    tensors = (_gpt2_tensors if hf["model_type"] == "gpt2" else _llama_tensors)(params, cfg)
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(out / WEIGHTS),
              metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(hf, indent=2) + "\n")
    return out


def _to_numpy(tree):
    if isinstance(tree, dict):
        return {k: _to_numpy(v) for k, v in tree.items()}
    value = getattr(tree, "value", tree)  # a flax Partitioned box
    return np.asarray(value, np.float32)
