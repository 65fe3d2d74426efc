"""The base class of the library's user-facing errors.

Every error a user can fix (a bad config value, an unusable dataset, a non-finite loss, an
interrupted run) derives from :class:`CoWorldError` and carries a one-line message naming the
value and the fix; recipes and command-line tools print it as that one line and exit non-zero
(``HYDRA_FULL_ERROR=1`` shows the traceback).
"""


class CoWorldError(Exception):
    """A user-facing error: its message is one line naming the problem and the fix."""

    exit_code = 2


class ConfigError(CoWorldError, ValueError):
    """A config value is impossible; the message names the field, the value and the fix."""


class MissingDependencyError(CoWorldError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""
