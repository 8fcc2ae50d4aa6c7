"""docs/compatibility.md is what scripts/compatibility.py writes: a name it claims hpcdask has
cannot go missing, and dask.distributed's options hpcdask lacks are errors naming them."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.util import find_spec as importlib_util_find
from pathlib import Path

import pytest

if importlib_util_find("distributed") is None:  # pragma: no cover
    pytest.skip("dask.distributed is not installed", allow_module_level=True)
pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compatibility.py"


_CHILD = """
import json, sys, importlib.util
spec = importlib.util.spec_from_file_location("compatibility", sys.argv[1])
compat = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compat)
now = {**compat.rows(), **compat.option_rows()}
print(json.dumps({"rows": now, "rendered": compat.render(now), "doc": str(compat.DOC),
                  "unhandled": compat.UNHANDLED}))
"""


def test_every_name_the_table_claims_is_present_and_the_table_is_current():
    # In a child process: importing dask.distributed loads rmm and pynvml where they are
    # installed, which would switch this test process's serialization to GPU mode.
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(SCRIPT)],
        capture_output=True,
        text=True,
        check=True,
        timeout=50,
    )
    result = json.loads(out.stdout)
    documented = Path(result["doc"]).read_text()
    claimed = {line.split("`")[1] for line in documented.splitlines() if "| yes |" in line}
    present = {name for entries in result["rows"].values() for name, ok, _ in entries if ok}
    assert not claimed - present, (
        f"docs/compatibility.md claims {sorted(claimed - present)} but hpcdask lacks them"
    )
    assert documented == result["rendered"], (
        "docs/compatibility.md is out of date: run python scripts/compatibility.py"
    )
    # Every keyword option of dask.distributed's constructors is implemented or refused by
    # name (hpcdask/utils/options.py): none can be silently ignored.
    ignored = [(surface, name) for surface, entries in result["rows"].items()
               for name, _, note in entries if note == result["unhandled"]]  # fmt: skip
    assert not ignored, f"options neither implemented nor refused: {ignored}"


def test_a_dask_option_hpcdask_lacks_is_an_error_naming_it(client):
    from hpcdask import Client

    with pytest.raises(NotImplementedError, match="heartbeat_interval="):
        Client(client.scheduler_address, heartbeat_interval=5)
    with pytest.raises(NotImplementedError, match="server="):
        client.profile(server=True)
    with pytest.raises(NotImplementedError, match="storage_options="):
        client.dump_cluster_state("x", storage_options={})


def test_future_release(client):
    f = client.submit(abs, -3, pure=False)
    assert f.result() == 3
    key = f.key
    f.release()
    f.release()  # once only
    assert key not in client._states
