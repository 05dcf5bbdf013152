"""The one exception type the CLI turns into a single clear line."""


class CrmdbError(Exception):
    """A user-facing error: bad input, unreachable database, refused action.

    The message names what and where; the CLI prints it as one line and exits != 0.
    """
