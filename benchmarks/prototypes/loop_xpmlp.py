"""Train xpmlp at one workload for a while: a target for py-spy and cProfile.

python benchmarks/prototypes/loop_xpmlp.py [--batch 128] [--hidden 300,300] [--epochs 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import data
import peers
from workloads import Workload


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--hidden", default="300,300")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--rows", type=int, default=12800)
    args = p.parse_args()
    w = Workload(args.batch, tuple(int(h) for h in args.hidden.split(",")))
    d = data.load(None)
    runner = peers.make("xpmlp", w, d.X_train[: args.rows], d.y_train[: args.rows], device="cpu")
    for _ in range(args.epochs):
        start = time.perf_counter()
        runner.epoch()
        print(f"{args.rows / (time.perf_counter() - start):,.0f} samples/s", flush=True)


if __name__ == "__main__":
    main()
