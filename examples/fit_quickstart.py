"""The classic Keras CNN as your own Flax module, trained with one call.

  Command:  python examples/fit_quickstart.py
  Runtime:  1 epoch of MNIST (1,563 steps), 28 s on 2 CPU cores shared with a test run.
  Expected: test accuracy 97.17 % (seed 0), and the first 8 predictions equal their labels.
"""

import flax.linen as nn

import jaxmodels
from jaxmodels.data import sources


class CNN(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(32, (3, 3), padding="SAME")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(10)(x.reshape(len(x), -1))


mnist = sources.load_image_dataset("mnist")
(x_train, y_train), (x_test, y_test) = mnist.splits["train"], mnist.splits["test"]
x_train, x_test = x_train / 255.0, x_test / 255.0

summary = jaxmodels.fit(CNN(), (x_train, y_train), loss="cross_entropy", optimizer="adam",
                        learning_rate=1e-3, batch_size=32, epochs=1,
                        validation_data=(x_test, y_test), workdir="runs/fit_quickstart", seed=0)
print(f"test accuracy {summary['eval_accuracy']:.4f}")
print(jaxmodels.predict("runs/fit_quickstart", x_test[:8]).argmax(-1), y_test[:8])
