"""The one exception type for user mistakes: bad paths, options or data."""


class UserError(Exception):
    """A problem the user can fix; the message names the file or option and says what to do.

    The CLI prints it on one line and exits with status 2. Anything else is a bug and keeps
    its traceback (shown with --debug).
    """


def first_line(e: BaseException) -> str:
    """The first line of an exception's message, or its type name when it has none."""
    return str(e).splitlines()[0] if str(e).strip() else type(e).__name__


class Interrupted(Exception):
    """Training stopped between two steps (Ctrl-C or SIGTERM) after writing a checkpoint; `run_dir` can be
    resumed; `signal` is the number of the signal that asked for it. `checkpointed` False: a study on a cluster
    stopped its units without one (what was recorded is kept)."""

    run_dir = None
    signal = 2  # SIGINT
    checkpointed = True
