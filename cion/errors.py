"""User-facing errors. The CLI prints them as one line and exits with status 2."""


class CionError(Exception):
    """A problem with the user's input that the user can fix; the message says how."""
