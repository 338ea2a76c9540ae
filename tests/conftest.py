"""Test-wide JAX settings, applied before any backend starts.

Eight simulated CPU devices on every run (the multi-device code paths are tested with them), and
strict rank promotion so an accidental broadcast between mismatched ranks fails loudly.
"""

import jax
import pytest

jax.config.update("jax_num_cpu_devices", 8)
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture(scope="session")
def mnist():
    from jaxmodels import data

    return data.load_image_dataset("mnist")
