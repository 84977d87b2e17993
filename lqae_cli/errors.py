"""One error type for the command line: caught at the top and printed as one line."""


class LQAEError(RuntimeError):
    """A failure the user can act on; the message says what to do."""
