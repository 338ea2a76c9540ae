"""Saving and restoring trained weights with orbax-checkpoint.

For now one final snapshot of the weights (params and mutable model collections) under
WORKDIR/weights, which is what `jaxmodels eval` needs. Periodic saves of the whole train state and
resume build on the same checkpointer.
"""

import pathlib

import jax
import orbax.checkpoint as ocp

from jaxmodels.errors import UserError
from jaxmodels.training.state import TrainState

WEIGHTS_DIR = "weights"


def save_weights(workdir: pathlib.Path, state: TrainState) -> pathlib.Path:
    path = (pathlib.Path(workdir) / WEIGHTS_DIR).absolute()
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(path, {"params": state.params, "model_state": state.model_state}, force=True)
    checkpointer.wait_until_finished()
    return path


def restore_weights(workdir: pathlib.Path, target: dict) -> dict:
    """The saved {"params", "model_state"}, restored into the structure, shapes and dtypes of
    `target` (arrays or `jax.ShapeDtypeStruct`s)."""
    path = (pathlib.Path(workdir) / WEIGHTS_DIR).absolute()
    if not path.is_dir():
        raise UserError(f"no trained weights in {str(path)!r}: train first with 'jaxmodels train CONFIG --workdir {workdir}'")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    # Without a sharding orbax would restore onto the devices the run was saved from, which fails
    # when those differ (trained on 8 devices, sampled on 1): unplaced leaves go to one device.
    one_device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda x: x if getattr(x, "sharding", None) is not None
        else jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=one_device), target)
    try:
        return ocp.StandardCheckpointer().restore(path, target)
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"weights in {str(path)!r} do not match this config's model ({first}): use the config the run was trained with") from None
