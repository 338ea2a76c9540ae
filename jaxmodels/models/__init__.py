"""Model families as pure Flax Linen modules, each configured by one frozen dataclass.

The package registers its eight families with `jaxmodels.register_model`, the call a researcher
uses for their own (jaxmodels/registry.py holds the one table). A config's `kind` names its
family in JSON. The loop consumes any of them through `jaxmodels.Model` (models/interface.py).

Tensor names carry their shapes as suffixes, dimensions joined by "x" (`x_BxTxD`, `k_BxSxGxDh`;
a digit is a literal size, as in `mask_Bx1x1xT`). One legend holds for every file here and for
jaxmodels/generate.py; each file repeats the entries it uses, word for word, and
tests/test_glossary.py checks that they agree with this one and cover every suffix in the code.

Shape names: B batch; T sequence positions (queries, or an RNN's time steps); S key positions (a KV
cache's buffer length); D model width (an RNN's hidden state); E token embedding width; F features
other than the model width (an MLP's hidden units, a flattened image, an RNN's per-step input); U
an RNN's fused gate units (num_gates x D); H query heads; G key/value heads (G divides H); N heads
of either kind (H or G); R query heads per key/value head (H/G); Dh head dim; V vocabulary; K
classes; L layers; M longest sequence (max_len); Hi image height; Wi image width; C channels; P
patches; Q values per patch (patch x patch x C).
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
