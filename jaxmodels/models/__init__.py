"""Model families as pure Flax Linen modules, each configured by one frozen dataclass.

`MODELS` is the one registry: config class -> module class. A config's `kind` names it in JSON.
"""

import flax.linen as nn

from jaxmodels.models.cnn import BatchNormCNN, BatchNormCNNConfig, SeedCNN, SeedCNNConfig
from jaxmodels.models.mlp import MLP, MLPConfig
from jaxmodels.models.rnn import RNNLM, RNNClassifier, RNNClassifierConfig, RNNLMConfig
from jaxmodels.models.transformer import (TransformerClassifier, TransformerClassifierConfig, TransformerLM,
                                          TransformerLMConfig, ViT, ViTConfig)

MODELS: dict[type, type[nn.Module]] = {
    SeedCNNConfig: SeedCNN,
    BatchNormCNNConfig: BatchNormCNN,
    MLPConfig: MLP,
    RNNLMConfig: RNNLM,
    RNNClassifierConfig: RNNClassifier,
    TransformerLMConfig: TransformerLM,
    TransformerClassifierConfig: TransformerClassifier,
    ViTConfig: ViT,
}

ModelConfig = (SeedCNNConfig | BatchNormCNNConfig | MLPConfig | RNNLMConfig | RNNClassifierConfig
               | TransformerLMConfig | TransformerClassifierConfig | ViTConfig)


def build(config: ModelConfig) -> nn.Module:
    """The Linen module for a model config."""
    return MODELS[type(config)](config)


def config_class(kind: str) -> type:
    """The config class whose `kind` is `kind` (used to read configs back from JSON)."""
    for cls in MODELS:
        if cls.kind == kind:
            return cls
    raise KeyError(kind)


__all__ = ["MODELS", "ModelConfig", "build", "config_class", "SeedCNN", "SeedCNNConfig",
           "BatchNormCNN", "BatchNormCNNConfig", "MLP", "MLPConfig",
           "RNNLM", "RNNLMConfig", "RNNClassifier", "RNNClassifierConfig",
           "TransformerLM", "TransformerLMConfig", "TransformerClassifier", "TransformerClassifierConfig",
           "ViT", "ViTConfig"]
