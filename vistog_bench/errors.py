"""The one exception type for user mistakes: the CLI prints its message on one line and exits with code 2."""


class UsageError(ValueError):
    """Bad input from the user (arguments, paths, files, shapes). The message names what is wrong and what is allowed.

    A `ValueError`, so library callers can catch it the way they catch transformers' own input errors.
    """

    exit_code = 2
