"""The AT channel's asyncio shell on a real pseudo-terminal, with the test playing the modem
byte by byte: the loop is never blocked, URCs arrive in order, a vanished port fails what
was pending and is reopened (under a new name) with backoff."""

from __future__ import annotations

import asyncio

import pytest

from drivers.at.channel import AtChannel
from drivers.at.results import AtCommandError, AtPortClosed, AtTimeout
from jbcbench.modems.pty import PtyPort

pytestmark = pytest.mark.integration


class Peer:
    """The modem side: records what the host sent; the test answers by hand."""

    def __init__(self) -> None:
        self.port = PtyPort(self._on_data)
        self.received = bytearray()
        self.got_line = asyncio.Event()

    def _on_data(self, data: bytes) -> None:
        self.received += data
        if b"\r" in data:
            self.got_line.set()

    async def next_command(self) -> str:
        while b"\r" not in self.received:
            self.got_line.clear()
            await self.got_line.wait()
        line, _, rest = bytes(self.received).partition(b"\r")
        self.received = bytearray(rest)
        return line.decode()


async def test_commands_urcs_and_a_port_that_vanishes_and_comes_back():
    peer = Peer()
    path = {"now": peer.port.slave_path}
    urcs, lost, opened = [], [], []
    first, reopened = asyncio.Event(), asyncio.Event()

    def on_opened(where: str) -> None:
        opened.append(where)
        (reopened if len(opened) > 1 else first).set()

    channel = AtChannel(lambda: path["now"], name="t", on_urc=urcs.append,
                        on_lost=lost.append, on_opened=on_opened, backoff=(0.05, 0.1))
    channel.keep_open()
    async with asyncio.timeout(3.0):
        await first.wait()
    try:
        pending = asyncio.ensure_future(channel.command("AT+CSQ", timeout_s=2.0))
        assert await peer.next_command() == "AT+CSQ"
        for chunk in (b"\r\n^RSS", b"I:26\r\n+CSQ: 2", b"8,99\r\n\r\nO", b"K\r\n"):
            peer.port.write(chunk)
            await asyncio.sleep(0.01)  # the loop keeps running between the pieces
        response = await pending
        assert response.lines == ("+CSQ: 28,99",) and urcs == ["^RSSI:26"]

        pending = asyncio.ensure_future(channel.command("AT+CPIN?", timeout_s=2.0))
        await peer.next_command()
        peer.port.write(b"\r\n+CME ERROR: SIM not inserted\r\n")
        with pytest.raises(AtCommandError) as refused:
            await pending
        assert refused.value.cme == 10

        with pytest.raises(AtTimeout):
            await channel.command("AT+COPS?", timeout_s=0.2)

        # the modem resets: the port disappears with a command in flight
        pending = asyncio.ensure_future(channel.command("AT", timeout_s=5.0))
        await asyncio.sleep(0.05)
        peer.port.close()
        with pytest.raises(AtPortClosed):
            await pending
        assert lost and not channel.is_open
        with pytest.raises(AtPortClosed):
            await channel.command("AT")
        # ... and comes back under another name: the locator finds it, the channel reopens
        second = Peer()
        path["now"] = second.port.slave_path
        async with asyncio.timeout(3.0):
            await reopened.wait()
        pending = asyncio.ensure_future(channel.command("ATI", timeout_s=2.0))
        assert await second.next_command() == "ATI"
        second.port.write(b"\r\nQuectel\r\nEG25\r\n\r\nOK\r\n")
        assert (await pending).lines == ("Quectel", "EG25")
        assert channel.reopen_count == 1
        assert opened == [peer.port.slave_path, second.port.slave_path]
    finally:
        await channel.close()
