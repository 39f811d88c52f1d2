"""Test-only: with SPARSENET_READ_LOG set, record every file a stage script opens for reading.

``tests/test_dvc_deps.py`` puts this folder on PYTHONPATH when it runs ``dvc repro``; Python then
imports this module at start-up in every process, and the audit hook appends
``<script>\\t<path>`` to the log for each file opened without write access by a script under
``stages/`` (imports included: a module's source and its cached bytecode are opened too).
"""

import os
import sys

_LOG = os.environ.get("SPARSENET_READ_LOG")
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _record(event, args):
    if event != "open" or not _LOG:
        return
    script = sys.argv[0] if sys.argv else ""
    if "stages" not in script.replace("\\", "/").split("/")[-2:-1]:
        return
    path, mode, flags = (tuple(args) + (None, None))[:3]
    if not isinstance(path, (str, bytes, os.PathLike)) or isinstance(path, int):
        return
    if isinstance(mode, str) and any(c in mode for c in "wax+"):
        return
    if mode is None and isinstance(flags, int) and flags & _WRITE_FLAGS:
        return
    with open(_LOG, "a", encoding="utf-8") as log:  # raises an "open" event too: see _busy
        log.write(f"{os.path.basename(script)}\t{os.path.abspath(os.fsdecode(path))}\n")


_busy = False  # the hook's own open() of the log must not be recorded (nor recurse)


def _hook(event, args):
    global _busy
    if _busy:
        return
    _busy = True
    try:
        _record(event, args)
    finally:
        _busy = False


if _LOG:
    sys.addaudithook(_hook)
