"""The update package's one exception root."""


class UpdateError(Exception):
    """An update step failed; the message says what and what to do next."""
