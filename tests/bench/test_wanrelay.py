"""The loopback WAN stand-in: it forwards, and it fails the way a WAN fails."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import types

import pytest

from jbcbench.wanrelay import WanRelay

pytestmark = pytest.mark.integration


class UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data, addr):
        self.received.put_nowait(data)


async def echo_stream(reader, writer):
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@pytest.fixture
async def relay():
    loop = asyncio.get_running_loop()
    udp, _ = await loop.create_datagram_endpoint(UdpEcho, local_addr=("127.0.0.1", 0))
    tcp = await asyncio.start_server(echo_stream, "127.0.0.1", 0)
    wan = WanRelay(address="127.0.0.1", seed=5)
    paths = types.SimpleNamespace(
        udp_cloud=await wan.add("sip", "cloud", socket.SOCK_DGRAM,
                                udp.get_extra_info("sockname")),
        udp_anchor=await wan.add("anchor-udp", "internet", socket.SOCK_DGRAM,
                                 udp.get_extra_info("sockname")),
        tcp_cloud=await wan.add("api", "cloud", socket.SOCK_STREAM,
                                tcp.sockets[0].getsockname()[:2]),
        set_fault=wan.set_fault)
    yield paths
    await wan.close()
    udp.close()
    tcp.close()


async def client(path):
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        UdpClient, remote_addr=path.listen)
    return transport, protocol


async def answered(transport, protocol, payload: bytes, wait_s: float = 0.3) -> bool:
    transport.sendto(payload)
    try:
        async with asyncio.timeout(wait_s):
            return await protocol.received.get() == payload
    except TimeoutError:
        return False


async def test_datagrams_cross_until_the_blackhole_and_again_after(relay):
    transport, protocol = await client(relay.udp_cloud)
    assert await answered(transport, protocol, b"one")
    relay.set_fault("blackhole")
    assert not await answered(transport, protocol, b"two")
    relay.set_fault(None)
    assert await answered(transport, protocol, b"three")
    transport.close()


async def test_a_cloud_only_outage_spares_the_internet(relay):
    cloud_t, cloud_p = await client(relay.udp_cloud)
    anchor_t, anchor_p = await client(relay.udp_anchor)
    relay.set_fault("cloud")
    assert not await answered(cloud_t, cloud_p, b"sip")
    assert await answered(anchor_t, anchor_p, b"ping")
    cloud_t.close()
    anchor_t.close()


async def test_loss_drops_about_the_share_asked_for_each_way(relay):
    transport, protocol = await client(relay.udp_cloud)
    relay.set_fault("loss", 50.0)
    for n in range(200):
        transport.sendto(b"%d" % n)
    await asyncio.sleep(0.3)
    got = protocol.received.qsize()
    # each way 50 %: a quarter comes back
    assert 25 <= got <= 80, got
    transport.close()


async def test_a_stream_stalls_in_a_blackhole_and_resumes_intact(relay):
    reader, writer = await asyncio.open_connection(*relay.tcp_cloud.listen)
    writer.write(b"hello ")
    await writer.drain()
    assert await asyncio.wait_for(reader.readexactly(6), 2) == b"hello "
    relay.set_fault("blackhole")
    writer.write(b"world")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.readexactly(5), 0.3)
    relay.set_fault(None)
    assert await asyncio.wait_for(reader.readexactly(5), 2) == b"world"
    writer.close()


async def test_a_new_connection_in_a_blackhole_never_reaches_the_server(relay):
    relay.set_fault("blackhole")
    reader, writer = await asyncio.open_connection(*relay.tcp_cloud.listen)
    writer.write(b"handshake")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(10), 0.3)
    writer.close()
