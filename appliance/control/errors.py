"""The control package's one error tree: :class:`ControlError`.

* :class:`~appliance.control.protocol.ProtocolError` -- a request line that is not a request
  (bad_request, with the request id when one could be read)
* :class:`~appliance.control.commands.CommandError` -- a request a handler cannot carry out;
  ``code`` is stable for scripts, the message says what to do
"""

from __future__ import annotations


class ControlError(Exception):
    """A control request failed; ``code`` is the stable error code sent to the client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
