"""The one exception type for user-facing problems, and the one place it becomes an error line."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

EXIT_USER_ERROR = 2

# What reading a foreign or crafted file's contents as a model can raise (beyond torch's own
# errors on load): each ends as one error line naming the file.
FOREIGN_FILE_ERRORS = (ValueError, TypeError, AttributeError, KeyError, IndexError, RuntimeError, OverflowError)


class SparseNetError(Exception):
    """A user-facing problem: bad parameter, missing data, unreadable checkpoint."""


@contextmanager
def one_line_errors() -> Iterator[None]:
    """Turn a :class:`SparseNetError` raised in the block into ``error: …`` on stderr and exit code 2.

    Every entry point (stage scripts, the CLI, the tools) runs inside this, so a user's mistake
    reads as one line naming the file or key, never as a traceback.
    """
    try:
        yield
    except SparseNetError as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
