"""Errors a user can fix.

Anything raised as a `UserError` is a problem with the input (a config key, a value, a missing
dataset, an unwritable folder), not a bug: the CLI prints its message as one line and exits with
status 2. Messages name the problem and the fix.
"""


class UserError(Exception):
    """A problem the user can fix; the CLI prints str(e) as one line and exits 2."""


class ConfigError(UserError):
    """A config key, type or value is wrong."""


class DataError(UserError):
    """A dataset is missing, corrupt or cannot be fetched."""


class RunStopped(Exception):
    """The run stopped before its end on purpose (a signal, a non-finite loss) with its progress
    saved; the CLI prints the message as one line and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
