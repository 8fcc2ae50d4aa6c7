"""A failed task's traceback rebuilt on the client from the frames the worker reported.

Workers report each frame as `[filename, lineno, name, line]`; here they become a real
traceback object (via tblib), so `traceback.format_tb(future.traceback())` and a re-raised
exception show the remote frames, with source lines wherever this machine has the files.
"""

from __future__ import annotations

import types
from typing import Any


def rebuild(frames: Any) -> types.TracebackType | None:
    """A traceback object for the reported frames (None for none or for an old text form)."""
    if not frames or isinstance(frames, str):
        return None
    from tblib import Traceback

    node = None
    for filename, lineno, name, *_ in reversed(frames):
        node = {
            "tb_frame": {
                "f_globals": {"__name__": "__remote__", "__file__": filename},
                "f_code": {"co_filename": filename, "co_name": name},
                "f_lineno": lineno,
            },
            "tb_lineno": lineno,
            "tb_next": node,
        }
    return Traceback.from_dict(node).as_traceback()


def text(frames: Any) -> str:
    """The frames as `traceback` prints them, with the worker's source lines."""
    if isinstance(frames, str):
        return frames
    out = []
    for filename, lineno, name, *rest in frames or ():
        out.append(f'  File "{filename}", line {lineno}, in {name}\n')
        if rest and rest[0]:
            out.append(f"    {rest[0]}\n")
    return "".join(out)
