"""The named wire records: the same bytes as the plain arrays they replaced, read by name."""

from __future__ import annotations

import pytest

from hpcdask.protocol import records as rec
from hpcdask.protocol.serialize import Pickled, dumps_plain, loads

pytestmark = pytest.mark.timeout(30)

EXAMPLES = [
    rec.GraphTask("k", "fid", Pickled.dumps((1, 2)), ["d"], 1, 2, ["tcp://a:1"], {"GPU": 1}, True),
    rec.GraphTask("k", dependencies=[]),
    rec.Compute(rec.COMPUTE, "k", "fid", None, {"d": ["tcp://a:1"]}, {"d": 8}, -5, None),
    rec.Func(rec.FUNC, "fid", Pickled.dumps(len)),
    rec.Free(rec.FREE, ["a", "b"]),
    rec.TaskFinished(rec.TASK_FINISHED, "k", 28, "int", 0.001, Pickled.dumps(3)),
]


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_a_record_packs_to_the_bytes_of_the_plain_array(record):
    assert dumps_plain([record]) == dumps_plain([list(record)])


@pytest.mark.parametrize("record", EXAMPLES, ids=lambda r: type(r).__name__)
def test_a_decoded_array_reads_back_by_name(record):
    (msg,) = loads(dumps_plain([record]))
    assert type(msg) is list  # what receivers dispatch on
    back = rec.read(type(record), msg)
    assert back == record and back._fields == record._fields


def test_a_message_of_the_wrong_length_is_a_clear_error():
    with pytest.raises(ValueError, match="TaskFinished has 6 fields, the message 5"):
        rec.read(rec.TaskFinished, ["tf", "k", 1, "int", 0.1])


def test_the_scheduler_reads_graph_tasks_as_its_new_task_events():
    from hpcdask.core.scheduler_events import NewTask

    assert NewTask is rec.GraphTask


def test_records_import_nothing_from_hpcdask():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(rec.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("hpcdask"), node.module
