"""docs/compatibility.md is what scripts/compatibility.py writes: a name it claims hpcdask has
cannot go missing, and dask.distributed's options hpcdask lacks are errors naming them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("distributed")
pytestmark = pytest.mark.timeout(60)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compatibility.py"


def load_script():
    spec = importlib.util.spec_from_file_location("compatibility", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_name_the_table_claims_is_present_and_the_table_is_current():
    compat = load_script()
    documented = compat.DOC.read_text()
    claimed = {line.split("`")[1] for line in documented.splitlines() if "| yes |" in line}
    now = compat.rows()
    present = {name for entries in now.values() for name, ok, _ in entries if ok}
    assert not claimed - present, (
        f"docs/compatibility.md claims {sorted(claimed - present)} but hpcdask lacks them"
    )
    assert documented == compat.render(now), (
        "docs/compatibility.md is out of date: run python scripts/compatibility.py"
    )


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
    assert key not in client._refcount
