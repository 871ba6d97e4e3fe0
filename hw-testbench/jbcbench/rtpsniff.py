"""Watch RTP on the loopback interface, to prove what is (not) on the wire.

An AF_PACKET socket bound to ``lo`` (needs root or CAP_NET_RAW) sees every UDP datagram of
the calls the bench sets up on 127.0.0.1. :func:`capture_udp` collects those to one port;
:func:`describe_rtp` says whether they look like plain RTP carrying G.711 audio (the tone is
recoverable from the payload) or SRTP (an authentication tag after the payload, and
payload bytes that decode to noise).
"""

from __future__ import annotations

import dataclasses
import math
import socket
import struct
import time

ETH_P_ALL = 0x0003


def can_capture() -> bool:
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    except (PermissionError, OSError, AttributeError):
        return False
    sock.close()
    return True


def capture_udp(port: int, seconds: float, *, interface: str = "lo",
                limit: int = 500) -> list[bytes]:
    """UDP payloads sent to ``port`` on ``interface`` during the next ``seconds``."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.ntohs(ETH_P_ALL))
    try:
        sock.bind((interface, 0))
        sock.settimeout(0.1)
        payloads: list[bytes] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and len(payloads) < limit:
            try:
                frame, address = sock.recvfrom(65535)
            except TimeoutError:
                continue
            if address[2] == socket.PACKET_OUTGOING:
                continue  # on lo every packet is seen twice: keep the incoming copy
            payload = _udp_to(frame, port)
            if payload is not None:
                payloads.append(payload)
        return payloads
    finally:
        sock.close()


def _udp_to(frame: bytes, port: int) -> bytes | None:
    if len(frame) < 14 + 20 + 8:
        return None
    ethertype = struct.unpack("!H", frame[12:14])[0]
    if ethertype != 0x0800:
        return None
    ip = frame[14:]
    header_len = (ip[0] & 0x0F) * 4
    if ip[9] != 17:  # UDP
        return None
    udp = ip[header_len:]
    dst = struct.unpack("!H", udp[2:4])[0]
    if dst != port:
        return None
    length = struct.unpack("!H", udp[4:6])[0]
    return udp[8:length]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RtpVerdict:
    packets: int
    payload_type: int | None
    trailer_bytes: int
    """Bytes after a 20 ms G.711 payload: 0 for RTP, 10 or 4 for SRTP's HMAC-SHA1 tag."""
    tone_level: float
    """Amplitude of ``frequency`` when the payload is decoded as G.711 mu-law (encrypted
    bytes decode to noise whose Goertzel amplitude over 160 samples is about 1500)."""

    def looks_like_srtp(self, tone_amplitude: float = 8000.0) -> bool:
        return self.trailer_bytes in (4, 10) and self.tone_level < 0.4 * tone_amplitude

    def looks_like_plain_g711_tone(self, tone_amplitude: float = 8000.0) -> bool:
        return self.trailer_bytes == 0 and self.tone_level > 0.9 * tone_amplitude


def describe_rtp(payloads: list[bytes], *, frequency: float = 1000.0) -> RtpVerdict:
    rtp = [p for p in payloads if len(p) >= 12 and p[0] >> 6 == 2 and (p[1] & 0x7F) < 35]
    if not rtp:
        return RtpVerdict(packets=0, payload_type=None, trailer_bytes=-1, tone_level=0.0)
    sizes = sorted(len(p) for p in rtp)
    typical = sizes[len(sizes) // 2]
    levels = []
    for packet in rtp[-25:]:
        body = packet[12 + 4 * (packet[0] & 0x0F):][:160]
        samples = [_ulaw(b) for b in body]
        levels.append(_goertzel(samples, frequency))
    return RtpVerdict(packets=len(rtp), payload_type=rtp[-1][1] & 0x7F,
                      trailer_bytes=typical - 12 - 160,
                      tone_level=sum(levels) / len(levels))


def _ulaw(byte: int) -> int:
    byte = ~byte & 0xFF
    sign, exponent, mantissa = byte & 0x80, (byte >> 4) & 0x07, byte & 0x0F
    magnitude = ((mantissa << 3) + 0x84) << exponent
    value = magnitude - 0x84
    return -value if sign else value


def _goertzel(samples: list[int], frequency: float, rate: int = 8000) -> float:
    n = len(samples)
    if not n:
        return 0.0
    coefficient = 2 * math.cos(2 * math.pi * frequency / rate)
    s1 = s2 = 0.0
    for x in samples:
        s1, s2 = x + coefficient * s1 - s2, s1
    power = s1 * s1 + s2 * s2 - coefficient * s1 * s2
    return 2 * math.sqrt(max(power, 0.0)) / n
