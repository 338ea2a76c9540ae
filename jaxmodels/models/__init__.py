"""Model families as pure Flax Linen modules, each configured by one frozen dataclass.

The package registers its eight families with `jaxmodels.register_model`, the call a researcher
uses for their own (jaxmodels/registry.py holds the one table). A config's `kind` names its
family in JSON. The loop consumes any of them through `jaxmodels.Model` (models/interface.py).
"""

import flax.linen as nn

from jaxmodels import registry
from jaxmodels.models.cnn import BatchNormCNN, BatchNormCNNConfig, SeedCNN, SeedCNNConfig
from jaxmodels.models import interface
from jaxmodels.models.interface import GivenModelConfig, Model, as_model, from_linen, from_nnx, from_pair
from jaxmodels.models.mlp import MLP, MLPConfig
from jaxmodels.models.rnn import RNNLM, RNNClassifier, RNNClassifierConfig, RNNLMConfig
from jaxmodels.models.transformer import (TransformerClassifier, TransformerClassifierConfig, TransformerLM,
                                          TransformerLMConfig, ViT, ViTConfig)

for _config, _module in ((SeedCNNConfig, SeedCNN), (BatchNormCNNConfig, BatchNormCNN), (MLPConfig, MLP),
                         (RNNLMConfig, RNNLM), (RNNClassifierConfig, RNNClassifier),
                         (TransformerLMConfig, TransformerLM),
                         (TransformerClassifierConfig, TransformerClassifier), (ViTConfig, ViT)):
    registry.register_model(_config, _module)
registry.register_model(GivenModelConfig, interface._given_elsewhere)


def build(config) -> nn.Module:
    """The module (or model) a registered model config builds."""
    return registry.build_model(config)


def config_class(kind: str) -> type:
    """The config class whose `kind` is `kind` (used to read configs back from JSON)."""
    return registry.model_entry(kind).config_class


__all__ = ["Model", "as_model", "from_linen", "from_nnx", "from_pair", "build", "config_class",
           "SeedCNN", "SeedCNNConfig", "BatchNormCNN", "BatchNormCNNConfig", "MLP", "MLPConfig",
           "RNNLM", "RNNLMConfig", "RNNClassifier", "RNNClassifierConfig",
           "TransformerLM", "TransformerLMConfig", "TransformerClassifier", "TransformerClassifierConfig",
           "ViT", "ViTConfig"]
