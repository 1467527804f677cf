"""The one exception type whose message is shown to users as a single line."""


class ShanshuiError(Exception):
    """A problem the user can fix; str(error) says what to do. The CLI prints it on one line and exits non-zero."""
