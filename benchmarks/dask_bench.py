"""Data-parallel training steps on a Dask LocalCluster: steps/s with 1 and 2 worker
processes against one process, and the bytes a step moves.

    python benchmarks/dask_bench.py                      # W3 and the small CNN, 1 and 2 workers
    python benchmarks/dask_bench.py --steps 5 --workers 1,2,3 --backend numba

Each step is ``graphgen.distributed.train_step`` with Adam: the batch split into
``--shards`` shards (the same for every worker count, so every run computes the same
bytes, which the script checks), the gradient summed on the cluster by the fixed tree, the
update on the client. "one process" is the module's own ``value_and_grad`` on the whole
batch plus the same update, in this process. Every process (workers too) runs BLAS on one
thread, so 2 workers can at best double the steps/s of 1 worker on a 2-CPU machine, and
the gain over one process is what is left after Dask's per-step overhead (a few
scheduler round trips) and moving the params, the shards and the gradients.

Bytes per step: "to cluster" is the arrays the client puts into the step's graph (params
once, and the shards), "between workers" the workers' own count of what they sent, less
what the client gathered (params fetched by the second worker, partial sums moving up the
tree), "to client" the summed gradient. The program (source and weights) is sent once, not per step.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

# One BLAS thread, and malloc that keeps freed memory (as benchmarks/run.py sets for
# every implementation), in this process and in the workers. Dask's nanny would give the
# workers MALLOC_TRIM_THRESHOLD_=65536 (distributed.nanny.pre-spawn-environ), which makes
# every large temporary fault its pages in again and the workers slower than this
# process at the same work.
ENV = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMBA_NUM_THREADS": "1",
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
}
if any(os.environ.get(k) != v for k, v in ENV.items()):  # malloc reads them at start
    os.environ.update(ENV)
    os.execv(sys.executable, [sys.executable, *sys.argv])

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]

import numpy as np

WORKLOADS = {
    "w3_mlp_large": (HERE / "specs" / "w3_mlp_large.yaml", 512),
    "cnn_digits_small": (HERE / "specs" / "cnn_digits_small.yaml", 256),
}
# the digits CNN of `graphgen train`'s examples, where it exists
if (HERE.parent / "examples" / "digits_cnn.yaml").exists():
    WORKLOADS["digits_cnn"] = (HERE.parent / "examples" / "digits_cnn.yaml", 256)


def _arrays(G, module, batch, seed=0):
    from graphgen import distributed as gd
    from graphgen.check import random_arrays

    arrays = random_arrays(G, seed=seed, sizes={gd.batch_axis(module): batch})
    return (
        {k: arrays[k] for k in module.INPUTS},
        {k: arrays[k] for k in module.PARAMS},
    )


def _mb(n):
    return f"{n / 1e6:.2f} MB"


def one_process(module, batch, params, steps):
    from graphgen import distributed as gd

    opt = gd.Optimizer("adam", lr=1e-3)
    params = {k: v.copy() for k, v in params.items()}
    state = gd.init_state(params, opt)
    for _ in range(2):
        _, grads = module.value_and_grad(**batch, **params)
        opt.update(params, state, grads)
    start = time.perf_counter()
    for _ in range(steps):
        _, grads = module.value_and_grad(**batch, **params)
        opt.update(params, state, grads)
    return steps / (time.perf_counter() - start)


def on_cluster(module, batch, params, steps, workers, shards):
    import dask
    import distributed

    from graphgen import distributed as gd

    dask.config.set({"distributed.nanny.pre-spawn-environ": dict(ENV)})
    cluster = distributed.LocalCluster(
        n_workers=workers,
        processes=True,
        threads_per_worker=1,
        dashboard_address=None,
    )
    client = distributed.Client(cluster)
    try:
        pieces = gd.split(batch, shards, module.INPUTS)
        opt = gd.Optimizer("adam", lr=1e-3)
        params = {k: v.copy() for k, v in params.items()}
        state = gd.init_state(params, opt)
        probe = {k: v.copy() for k, v in params.items()}
        check = gd.value_and_grad(module, client, pieces, probe)
        for _ in range(2):  # the program reaches the workers; Numba kernels load
            gd.train_step(module, client, pieces, params, state, opt)

        def sent(dask_worker):
            return dask_worker.transfer_outgoing_bytes_total

        before = sum(client.run(sent).values())
        start = time.perf_counter()
        for _ in range(steps):
            gd.train_step(module, client, pieces, params, state, opt)
        rate = steps / (time.perf_counter() - start)
        between = (sum(client.run(sent).values()) - before) / steps
    finally:
        client.close()
        cluster.close()
    to_cluster = sum(v.nbytes for v in params.values()) + sum(
        v.nbytes for p in pieces for v in p.values()
    )
    to_client = sum(v.nbytes for v in check[1].values())
    between -= to_client  # the workers' count includes what the client gathered
    digest = (
        np.float64(check[0]).tobytes(),
        [check[1][k].tobytes() for k in sorted(check[1])],
    )
    return rate, to_cluster, between, to_client, digest


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10, help="timed steps (default 10)")
    p.add_argument("--workers", default="1,2", help="worker counts (default 1,2)")
    p.add_argument("--shards", type=int, default=4, help="shards per batch (default 4)")
    p.add_argument("--backend", default="numpy", choices=["numpy", "numba"])
    p.add_argument("--only", nargs="*", help="workloads to run (default: all)")
    args = p.parse_args()
    counts = [int(c) for c in args.workers.split(",")]

    import dask
    import distributed
    from run import environment_text

    import graphgen

    print(environment_text())
    print(
        f"- Dask {dask.__version__}, distributed {distributed.__version__}; "
        f"LocalCluster of worker processes, 1 thread each; "
        f"{', '.join(f'{k}={v}' for k, v in ENV.items())} everywhere; "
        f"load average at start {os.getloadavg()[0]:.1f}"
    )
    print(
        f"- {args.backend} backend, float64, Adam, {args.shards} shards per batch, "
        f"{args.steps} timed steps after 2 warm-up steps"
    )
    print()
    print(
        "| workload | batch | workers | steps/s | vs one process | to cluster / step "
        "| between workers / step | to client / step |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name, (spec, size) in WORKLOADS.items():
        if args.only and name not in args.only:
            continue
        G = graphgen.load(spec)
        module = graphgen.compile(G, backend=args.backend)
        batch, params = _arrays(G, module, size)
        base = one_process(module, batch, params, args.steps)
        print(f"| {name} | {size} | one process | {base:.2f} | 1.00× | – | – | – |")
        digests = []
        for k in counts:
            rate, up, between, down, digest = on_cluster(
                module, batch, params, args.steps, k, args.shards
            )
            digests.append(digest)
            print(
                f"| {name} | {size} | {k} | {rate:.2f} | {rate / base:.2f}× "
                f"| {_mb(up)} | {_mb(between)} | {_mb(down)} |",
                flush=True,
            )
        same = all(d == digests[0] for d in digests)
        print(f"<!-- {name}: same gradient bytes for {counts} workers: {same} -->")
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
