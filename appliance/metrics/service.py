"""The 'metrics' subsystem: an HTTP endpoint on the event loop serving /metrics.

The body is produced by prometheus_client (``choose_encoder`` picks OpenMetrics when the
scraper's Accept header asks for it, the classic text format otherwise) from
:class:`~appliance.metrics.collector.ApplianceCollector`, which reads the subsystems right
then, on the loop thread that owns their state. The HTTP side is deliberately tiny and strict:
GET (or HEAD) of /metrics only, a request head of at most 8 KiB read within 5 s, one request
per connection, at most ``metrics.max_clients`` at once. Off by default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from appliance.config import ApplianceConfig
from appliance.runtime import Health, HealthLevel, Runtime
from appliance.supervision import StartFailed

from .config import MetricsConfig

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger(__name__)

MAX_HEAD = 8192
READ_TIMEOUT_S = 5.0


class MetricsEndpoint:
    name = "metrics"

    def __init__(self, runtime: Runtime, sources: dict[str, Callable[[], Any]]) -> None:
        self.runtime = runtime
        self.config: MetricsConfig = runtime.config.metrics
        self.sources = sources
        # Made when the endpoint is first enabled: prometheus_client is not imported at all on
        # a box that does not serve metrics (the default), which shortens jbcd's start.
        self.registry: CollectorRegistry | None = None
        self.server: asyncio.Server | None = None
        self.port: int | None = None
        self.scrapes = 0
        self.refused = 0
        self.problem: str | None = None
        self._clients = 0

    async def __aenter__(self) -> MetricsEndpoint:
        self.config = self.runtime.config.metrics  # a retried start uses a reloaded config
        await self._start()
        if self.problem:  # the Appliance shows it and tries again with backoff
            raise StartFailed(self.problem)
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self._stop()

    async def reconfigure(self, config: ApplianceConfig) -> None:
        if config.metrics == self.config:
            return
        await self._stop()
        self.config = config.metrics
        await self._start()
        if self.problem:
            log.error("metrics endpoint: %s", self.problem)
            self.runtime.journal.record("metrics", "listen-failed", self.problem)

    async def _start(self) -> None:
        self.problem = None
        if not self.config.enabled:
            return
        if self.registry is None:
            self.registry = self._make_registry()
        try:
            self.server = await asyncio.start_server(
                self._serve, self.config.listen_address, self.config.port,
                limit=MAX_HEAD)
        except OSError as error:
            self.problem = (f"cannot listen on {self.config.listen_address}:{self.config.port}"
                            f": {error.strerror or error} (is another program using the port? "
                            "or change metrics.listen_address/port)")
            return
        self.port = self.server.sockets[0].getsockname()[1]
        log.info("metrics at http://%s:%d/metrics", self.config.listen_address, self.port)

    def _make_registry(self) -> CollectorRegistry:
        from prometheus_client import CollectorRegistry
        from prometheus_client.process_collector import ProcessCollector

        from .collector import ApplianceCollector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(ApplianceCollector(self.sources,
                                             site=lambda: self.runtime.config.site_name))
        ProcessCollector(namespace="jbcd", registry=registry)
        return registry

    async def _stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()
            self.server = None
            self.port = None

    def health(self) -> Health:
        if not self.config.enabled:
            return Health(level=HealthLevel.DISABLED, summary="off (metrics.enabled = false)")
        if self.problem:
            return Health(level=HealthLevel.FAILED, summary=self.problem)
        return Health(level=HealthLevel.OK,
                      summary=f"http://{self.config.listen_address}:{self.port}/metrics, "
                      f"{self.scrapes} scrapes served",
                      details={"port": self.port, "scrapes": self.scrapes,
                               "refused": self.refused})

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        if self._clients >= self.config.max_clients:
            self.refused += 1
            await _reply(writer, 503, b"too many scrapes at once\n", "text/plain")
            return
        self._clients += 1
        try:
            await self._answer(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                TimeoutError, ValueError):
            pass
        except Exception:  # a bug costs this scrape, never the endpoint
            log.exception("metrics scrape failed")
            with contextlib.suppress(Exception):
                await _reply(writer, 500, b"internal error\n", "text/plain")
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _answer(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(READ_TIMEOUT_S):
            head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _reply(writer, 400, b"bad request\n", "text/plain")
            return
        method, target = parts[0], parts[1]
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            await _reply(writer, 405, b"only GET\n", "text/plain", {"Allow": "GET, HEAD"})
            return
        if target.split("?", 1)[0] != "/metrics":
            await _reply(writer, 404, b"see /metrics\n", "text/plain")
            return
        from prometheus_client.exposition import choose_encoder
        encoder, content_type = choose_encoder(headers.get("accept", ""))
        body = encoder(self.registry)
        self.scrapes += 1
        await _reply(writer, 200, b"" if method == "HEAD" else body, content_type,
                     length=len(body))


async def _reply(writer: asyncio.StreamWriter, status: int, body: bytes, content_type: str,
                 extra: dict[str, str] | None = None, *, length: int | None = None) -> None:
    reason = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
              500: "Internal Server Error", 503: "Service Unavailable"}[status]
    head = [f"HTTP/1.1 {status} {reason}", f"Content-Type: {content_type}",
            f"Content-Length: {len(body) if length is None else length}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (extra or {}).items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
    await writer.drain()
