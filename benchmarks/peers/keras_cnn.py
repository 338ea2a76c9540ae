"""Keras 3 on JAX: the seed CNN as the Keras tutorial writes it, trained by `model.fit`.

KERAS_BACKEND must be "jax" before keras is imported; `build` checks it rather than setting
it, so the caller (benchmarks/measure.py) decides.
"""

from __future__ import annotations

import os


def build(shape: dict, outputs: int, spec: dict, steps: int):
    if os.environ.get("KERAS_BACKEND") != "jax":
        raise RuntimeError("set KERAS_BACKEND=jax before importing keras (benchmarks/measure.py does)")
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(shape["filters"], 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Flatten(),
        keras.layers.Dense(outputs),
    ])
    lr = spec["learning_rate"]
    if spec["schedule"] == "warmup_cosine":
        lr = keras.optimizers.schedules.CosineDecay(
            0.0, max(steps - spec["warmup_steps"], 1), alpha=spec["final_lr_fraction"],
            warmup_target=spec["learning_rate"], warmup_steps=spec["warmup_steps"])
    model.compile(optimizer=keras.optimizers.Adam(lr, beta_1=spec["b1"], beta_2=spec["b2"],
                                                  epsilon=spec["eps"]),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    return model


def count(model) -> int:
    return int(model.count_params())
