"""The one exception type for user mistakes: the CLI prints its message on one line, no traceback."""

from __future__ import annotations


class KoeError(Exception):
    """A problem the user can fix (bad config, missing model file, unreadable input).

    The message must say what is wrong and what to do about it, e.g. the file and the command that
    fetches it.
    """
