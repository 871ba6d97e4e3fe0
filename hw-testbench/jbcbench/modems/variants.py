"""Run one scenario against several simulator variants at once (vendor x timing jitter).

Scenarios spend most of their time waiting for simulated call progress, so running the
variants concurrently on one loop costs little and keeps the test suite short. A failure
names the variant it happened in.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence

from .timing import SimTiming


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Variant:
    name: str
    profile: object
    timing: SimTiming


def jittered(profiles: Sequence[tuple[str, object]], *, jitter_s: float = 0.015,
             boot_s: float = 1.0) -> list[Variant]:
    """Each profile twice: with exact timing and with random jitter on every line/frame."""
    out = []
    for name, profile in profiles:
        out.append(Variant(name=name, profile=profile, timing=SimTiming.fast(boot_s=boot_s)))
        out.append(Variant(name=f"{name}+jitter", profile=profile,
                           timing=SimTiming.fast(jitter_s=jitter_s, boot_s=boot_s)))
    return out


async def run_variants(scenario: Callable[[Variant], Awaitable[None]],
                       variants: Sequence[Variant]) -> None:
    results = await asyncio.gather(*(scenario(v) for v in variants), return_exceptions=True)
    failures = [(v, r) for v, r in zip(variants, results, strict=True)
                if isinstance(r, BaseException)]
    if failures:
        names = ", ".join(v.name for v, _ in failures)
        raise ExceptionGroup(f"scenario failed for: {names}",
                             [_named(v, error) for v, error in failures])


def _named(variant: Variant, error: BaseException) -> Exception:
    if isinstance(error, Exception):
        error.add_note(f"variant: {variant.name}")
        return error
    return RuntimeError(f"{variant.name}: {error!r}")
