"""The one exception type the stages turn into a single clear error line."""


class SparseNetError(Exception):
    """A user-facing problem: bad parameter, missing data, unreadable checkpoint."""
