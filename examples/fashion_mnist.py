"""Train 784-300-300-10 on Fashion-MNIST with the library API, on the GPU when there is one.

    python examples/fashion_mnist.py [--epochs 10] [--device auto] [--limit N] [--out DIR]

``--limit`` trains on the first N images only (the test suite runs it that way as a smoke test).
``--out DIR`` keeps a run directory there and resumes it when run again (kill it and see).
"""

import argparse

import xpmlp
from xpmlp.data.datasets import load_dataset

parser = argparse.ArgumentParser()
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--device", default="auto")
parser.add_argument("--limit", type=int, default=None)
parser.add_argument("--out", default=None)
args = parser.parse_args()

data = load_dataset("fashion-mnist")
X_train, y_train = data.X_train[: args.limit], data.y_train[: args.limit]
scaler = xpmlp.Scaler.fit(X_train, "unit")  # uint8 pixels: divided by 255
X_train, X_test, y_test = scaler.transform(X_train), scaler.transform(data.X_test), data.y_test

model = xpmlp.MLP([784, 300, 300, 10], activation="relu", device=args.device, seed=0)
print(model)
history = xpmlp.fit(model, X_train, y_train, optimizer="adam", lr=1e-3, batch_size=128,
                    epochs=args.epochs, test_data=(X_test, y_test),
                    out=args.out, resume=True, scaler=scaler)  # fmt: skip
for record in history:
    print(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, "
          f"test accuracy {record['test_accuracy']:.4f}, {record['samples_per_second']:,.0f} samples/s")  # fmt: skip
