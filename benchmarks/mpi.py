"""Data-parallel training over MPI: samples/s with 1 and 2 processes, and the share of the step
spent in the gradient reduction.

    python benchmarks/mpi.py [--ranks 1,2] [--rows 30000] [--json PATH]

Each configuration runs as its own ``mpiexec -n R`` job (1 process: a plain run) that trains
784-300-300-10 (ReLU, Adam, float32, global batch 128) on Fashion-MNIST: one untimed warm-up epoch
over ``--rows`` rows, then ``--repeats`` timed epochs over the same rows; the median epoch is
reported. The reduction time is the wall time inside the communicator's ``reduce_gradients``
(the host copy, the MPI call and the sum), measured on rank 0. BLAS threads are split among the
ranks (cores / local ranks), as ``xpmlp train`` does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SIZES = [784, 300, 300, 10]


def worker(rows: int, repeats: int, reduce: str) -> dict:
    import numpy as np

    import xpmlp
    from xpmlp.data.datasets import load_dataset
    from xpmlp.train import distributed

    comm = distributed.communicator("auto", reduce=reduce)
    distributed.limit_blas_threads(comm)
    data = load_dataset("fashion-mnist", download=False)
    X = (data.X_train[:rows].reshape(rows, -1) / np.float32(255)).astype(np.float32)
    y = data.y_train[:rows]
    seconds_in_reduce = [0.0]
    reduce_gradients = comm.reduce_gradients

    def timed(grad, stop):
        start = time.perf_counter()
        try:
            return reduce_gradients(grad, stop)
        finally:
            seconds_in_reduce[0] += time.perf_counter() - start

    comm.reduce_gradients = timed
    model = xpmlp.MLP(SIZES, seed=0)
    trainer = xpmlp.Trainer(model, batch_size=128, epochs=10**6, comm=comm)
    Xd, yd = model.as_input(X), model.as_target(y)
    trainer.train_epoch(Xd, yd)  # warm-up
    epochs, reduce_share = [], []
    for _ in range(repeats):
        seconds_in_reduce[0] = 0.0
        record = trainer.train_epoch(Xd, yd)
        trainer.epoch += 1
        epochs.append(record["seconds"])
        reduce_share.append(seconds_in_reduce[0] / record["seconds"])
    return {
        "ranks": comm.size, "reduce": reduce if comm.size > 1 else None, "rows": rows,
        "median_epoch_seconds": statistics.median(epochs),
        "samples_per_second": rows / statistics.median(epochs),
        "reduce_share": statistics.median(reduce_share), "epoch_seconds": epochs,
        "blas_threads_per_rank": distributed.blas_threads_per_rank(comm.local_size),
    }  # fmt: skip


def run(ranks: int, reduce: str, rows: int, repeats: int) -> dict:
    mpiexec = shutil.which("mpiexec", path=f"{Path(sys.executable).parent}{os.pathsep}"
                           f"{os.environ['PATH']}")  # fmt: skip
    command = [sys.executable, __file__, "--worker", "--rows", str(rows), "--repeats",
               str(repeats), "--reduce", reduce]  # fmt: skip
    if ranks > 1:
        command = [mpiexec, "-n", str(ranks), *command]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--rows", type=int, default=30000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reduce", default="ordered")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.worker:
        result = worker(args.rows, args.repeats, args.reduce)
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            print(json.dumps(result))
        return 0
    results = []
    for ranks in map(int, args.ranks.split(",")):
        for reduce in ("ordered", "allreduce") if ranks > 1 else ("ordered",):
            print(f"{ranks} rank(s), {reduce} ...", file=sys.stderr, flush=True)
            results.append(run(ranks, reduce, args.rows, args.repeats))
    base = results[0]["samples_per_second"]
    lines = ["| processes | reduction | samples/s | vs 1 process | time in reduction |",
             "|--:|---|--:|--:|--:|"]  # fmt: skip
    for r in results:
        lines.append(f"| {r['ranks']} | {r['reduce'] or '—'} | {r['samples_per_second']:,.0f} | "
                     f"{r['samples_per_second'] / base:.2f}x | {r['reduce_share']:.0%} |")  # fmt: skip
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"machine": os.uname().nodename, "cpus": os.cpu_count(),
                                         "workload": "784-300-300-10 @ 128, float32, Adam",
                                         "results": results, "markdown": lines}, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
