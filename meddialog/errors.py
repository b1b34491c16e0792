"""Errors a user can act on: the stage runner prints them as one line, without a traceback."""


class UserError(Exception):
    """Bad input, bad params or a missing prerequisite; the message says what to do."""

    exit_code = 1
