"""The one exception type for bad user input.

Every user-facing entry point raises :class:`RobustCertError` with a one-line message that says what
was wrong and how to fix it; the CLI prints that line and exits with status 2.
"""


class RobustCertError(ValueError):
    """Bad input or an unsupported request, with a message meant for a person."""
