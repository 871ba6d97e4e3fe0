"""The SIP package's one error tree::

    SipError
    ├── RemoteProtocolError   a peer sent something we cannot accept (status_hint: the answer)
    ├── LocalProtocolError    our own code drove a core wrongly (a bug)
    └── UriError              a URI or address that does not follow the grammar (also a
                              ValueError; the message parser turns it into a 400)

Everything that goes wrong with a message from the network is a :class:`RemoteProtocolError`
carrying the status to answer with (``status_hint``); the transport edge converts it into that
response, or drops and counts the message when nothing can be answered. Mistakes made by our
own code when driving a core (sending a response in a state that does not allow it, ...) are
:class:`LocalProtocolError`: they are bugs and are raised loudly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .message import Message


class SipError(Exception):
    """Base of every error raised by ``appliance.sip``."""

    def __init__(self, text: str, *, status_hint: int = 400) -> None:
        super().__init__(text)
        self.text = text
        self.status_hint = status_hint


class RemoteProtocolError(SipError):
    """The peer sent something we cannot accept.

    ``message`` is the partially parsed message when enough of it was readable to build a
    response (Via, From, To, Call-ID and CSeq present); ``None`` means drop it and count it.
    ``fatal`` means the stream's framing is lost and its connection must be closed.
    """

    def __init__(self, text: str, *, status_hint: int = 400, message: Message | None = None,
                 fatal: bool = False) -> None:
        super().__init__(text, status_hint=status_hint)
        self.message = message
        self.fatal = fatal

    @property
    def reason(self) -> str:
        """The error as a response's reason phrase: printable and short."""
        return "".join(c if c.isprintable() else "?" for c in self.text)[:80]


class LocalProtocolError(SipError):
    """Our own code drove a core in a way the protocol does not allow (a bug)."""

    def __init__(self, text: str) -> None:
        super().__init__(text, status_hint=500)
