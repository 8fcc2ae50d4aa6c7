"""Runs one sample of one benchmark for one backend and writes its result as JSON.

    python -m benchmarks._child --bench map --backend hpcdask --out result.json [--quick]

run.py starts this in a new session with a deadline, so a hung runtime cannot hang the run.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback

from . import backends, core
from . import bench_collections as colls

BENCHES = {**core.BENCHES, **colls.BENCHES}
SIZES = {**core.SIZES, **colls.SIZES}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--bench", required=True, choices=sorted(BENCHES))
    p.add_argument("--backend", required=True, choices=[*backends.BACKENDS, "raw_tcp"])
    p.add_argument("--out", required=True)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    params = dict(SIZES[a.bench]["quick" if a.quick else "full"])
    try:
        if a.backend == "raw_tcp":
            result = core.bench_raw_tcp(**params)
        else:
            result = BENCHES[a.bench](backends.get(a.backend), **params)
        payload = {"ok": True, "result": result}
    except BaseException as exc:  # report, do not hang: run.py shows the error in the table
        traceback.print_exc()
        payload = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    with open(a.out, "w") as f:
        json.dump(payload, f)
    sys.stdout.flush()
    sys.stderr.flush()
    return 0 if payload["ok"] else 1


if __name__ == "__main__":
    # The clusters were closed by their context managers; skip interpreter teardown so that a
    # lingering background thread cannot keep a finished sample alive (run.py kills leftovers).
    os._exit(main())
