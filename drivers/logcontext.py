"""Log lines that say which trunk (and which call) they are about, whatever the log format.

``logging.LoggerAdapter`` only adds its context to the record's attributes, which a plain
``%(name)s: %(message)s`` format never prints. :class:`TrunkLog` puts the context in front of
the message itself (``lte1 call 7: audio problem ...``) and keeps it in ``extra`` too, for a
handler that wants the fields (``trunk``, ``call``).
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any


class TrunkLog(logging.LoggerAdapter):
    def __init__(self, logger: logging.Logger, trunk: str, call: int | str | None = None
                 ) -> None:
        extra: dict[str, Any] = {"trunk": trunk}
        if call is not None:
            extra["call"] = call
        super().__init__(logger, extra)
        self._context = trunk if call is None else f"{trunk} call {call}"

    def for_call(self, call: int | str) -> TrunkLog:
        """The same trunk's log, about one call."""
        return TrunkLog(self.logger, self.extra["trunk"], call)

    def log(self, level: int, msg: Any, *args: Any, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        # the prefix joins the format string only when there are arguments to format with
        context = self._context.replace("%", "%%") if args else self._context
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        kwargs.setdefault("stacklevel", 2)
        self.logger.log(level, f"{context}: {msg}", *args, **kwargs)

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]
                ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**self.extra, **kwargs.get("extra", {})}
        return f"{self._context}: {msg}", kwargs
