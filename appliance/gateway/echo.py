"""Line echo cancellation on the trunk side of the bridge.

What the handset says goes up the trunk (the *far-end reference*: what we send); part of it
comes back down mixed into what the phone network sends us: the analog line's hybrid, or the
LTE module's own acoustic/electrical path when its echo profile is off (reference section 1.11
#12). Left alone, the handset user hears themself a few hundred milliseconds late.

The canceller is a partitioned-block frequency-domain adaptive filter (overlap-save, one
20 ms block per partition, NLMS step normalised per frequency bin) with two filters:
a *background* filter that always adapts and a *foreground* filter that produces the output
and is only replaced by the background one when that one demonstrably removes more echo.
During double talk (both sides speaking) the background filter is disturbed, but the
foreground one keeps cancelling and the near-end speech passes untouched; if the background
filter diverges it is reset from the foreground. This is the two-path structure used by
mature cancellers (e.g. Speex's MDF).

Two paths were not enough (issue 13 finding 7): when the handset's own loudspeaker leaks
into its microphone, the reference carries the far party's voice too, a little later, and
during double talk the background filter learnt to cancel the far party with it; once it won
a comparison it was copied in, and the far party faded (13-16 dB in 12 s, warbling at the
beat of the two voices). So a double-talk detector guards both paths, per frequency: what
came down the line at a frequency, louder than any echo of the reference could be there (an
echo is never louder than its cause), is the far party talking. Such bins do not adapt (in
proportion to how much louder they are), and while a good share of the line's energy is of
that kind, and for a hangover after, nothing is copied to the foreground. Unlike a Geigel
detector this still works when the line returns its echo at almost full level: the test is
against the reference at each frequency, not against a fraction of its peak.

Frames are 8 kHz signed 16-bit little-endian, 160 samples. Pure numpy, no I/O, no threads;
the media port calls :meth:`EchoCanceller.far` with each frame it sends up the trunk and
:meth:`EchoCanceller.near` with each frame that came down, once per 20 ms tick.
"""

from __future__ import annotations

import math

import numpy as np

BLOCK = 160
FFT = 2 * BLOCK
BINS = FFT // 2 + 1
ECHO_HEADROOM = 0.25
"""The loudest echo at a frequency, against the reference's power there in the strongest
block of the tail: 0 dB once the windows are compared alike (the reference's spectrum spans
two blocks, the line's one: a quarter of the power for the same tone). An echo louder than
its cause is the far party talking."""
SLIPS = (0, 1, -1, 2, -2, 3, -3, 4, -4)
"""Frames by which the echo may have slipped (up to 80 ms either way), tried on the last
foreground that cancelled when the foreground stops cancelling (0: the path came back and
the dropped foreground was right after all)."""
FOREGROUND_WORSE = 1.0
"""A foreground whose output is louder (smoothed) than what came in is dropped."""
DOUBLE_TALK_SHARE = 0.3
"""Double talk: this share of what came down the line is louder than any echo could be."""
DOUBLE_TALK_HANGOVER = 15
"""Frames (300 ms) double talk is held after it was last seen (syllables have gaps)."""


class EchoCanceller:
    def __init__(self, *, tail_ms: int = 200, step: float = 1.0,
                 sample_rate: int = 8000) -> None:
        if sample_rate * 20 // 1000 != BLOCK:
            raise ValueError("the echo canceller works on 20 ms frames at 8 kHz")
        self.partitions = max(1, math.ceil(tail_ms * sample_rate / 1000 / BLOCK))
        self.tail_ms = self.partitions * 20
        self.step = step
        p = self.partitions
        self._far_spectra = np.zeros((p, BINS), dtype=np.complex128)
        self._far_prev = np.zeros(BLOCK)
        self._background = np.zeros((p, BINS), dtype=np.complex128)
        self._foreground = np.zeros((p, BINS), dtype=np.complex128)
        self._far_power = np.full(BINS, 1.0)
        self._near_power = np.zeros(BINS)
        self._unexplained_share = 0.0
        self._double_talk_until = 0
        self.double_talk_frames = 0
        self._talk = np.ones(BINS)
        self._part_power = np.zeros((p, BINS))
        self._constrain_next = 0
        self._energy_bg = 0.0
        self._energy_fg = 0.0
        self._energy_near = 0.0
        self._energy_far = 0.0
        self._has_far = False
        self.shifts = 0
        self.copies_to_foreground = 0
        self.foreground_dropped = 0
        self.slips_followed = 0
        self._slip_energy = np.zeros(len(SLIPS))
        self._fg_short = 0.0
        self._slip_run = 0
        self._slip_best = -1
        self._trained: np.ndarray | None = None
        """The last foreground that won a comparison: what a slip is searched around."""
        self.resets_from_foreground = 0
        self.frames = 0

    # -- per tick ------------------------------------------------------------------------------

    def far(self, frame: bytes | None) -> None:
        """The frame sent up the trunk this tick (None: nothing was sent, i.e. silence)."""
        block = _samples(frame)
        window = np.concatenate((self._far_prev, block))
        self._far_prev = block
        self._far_spectra[1:] = self._far_spectra[:-1]  # one block older (memmove)
        self._far_spectra[0] = np.fft.rfft(window)
        power = self._far_spectra[0].real ** 2 + self._far_spectra[0].imag ** 2
        self._part_power[1:] = self._part_power[:-1]
        self._part_power[0] = power
        self._far_power = 0.7 * self._far_power + 0.3 * power
        energy = float(np.dot(block, block))
        self._energy_far = 0.8 * self._energy_far + 0.2 * energy
        self._has_far = True

    def near(self, frame: bytes) -> bytes:
        """The frame that came down the trunk this tick, with the echo removed."""
        self.frames += 1
        near = _samples(frame)
        if not self._has_far:
            return frame
        fg_out, bg_out = self._filter_both()
        err_fg = near - fg_out
        err_bg = near - bg_out
        self._adapt(err_bg, near)
        self._choose(near, err_fg, err_bg)
        self._track_slips(near, float(np.dot(err_fg, err_fg)))
        return _frame(err_fg)

    def _track_slips(self, near: np.ndarray, fg_error: float) -> None:
        """Follow the echo when it slips by whole frames. A modem whose audio buffer ran
        dry plays a frame of silence and its echo comes a frame later from then on (a
        loaded host delivers frames bunched; frames dropped on the way move it earlier):
        nothing on our side sees it. When the foreground stops cancelling, the last filter
        that did (kept even if the foreground was dropped) is tried one or two frames later
        and earlier against what comes down; a shift that cancels far better for a few
        frames in a row is put in both filters at once, rather than learning the path again."""
        if self._trained is None or self.frames < self._double_talk_until:
            self._slip_run = 0
            return
        if self._energy_fg < 0.1 * self._energy_near:  # cancelling well: nothing to find
            self._slip_run = 0
            return
        candidates = [_shifted(self._trained, slip) for slip in SLIPS]
        spectra = np.stack([np.einsum("pk,pk->k", weights, self._far_spectra)
                            for weights in candidates])
        estimates = np.fft.irfft(spectra, FFT, axis=1)[:, BLOCK:]
        errors = near[None, :] - estimates
        energies = np.einsum("sn,sn->s", errors, errors)
        self._slip_energy = 0.7 * self._slip_energy + 0.3 * energies
        self._fg_short = 0.7 * self._fg_short + 0.3 * fg_error
        best = int(np.argmin(self._slip_energy))
        if self._slip_energy[best] < 0.25 * self._fg_short:
            self._slip_run = self._slip_run + 1 if best == self._slip_best else 1
            self._slip_best = best
        else:
            self._slip_run = 0
        if self._slip_run >= 3:
            self._trained = candidates[best]
            self._foreground[:] = self._trained
            self._background[:] = self._trained
            self._fg_short = self._slip_energy[best]
            self._energy_fg = self._energy_bg = min(self._energy_fg, self._energy_near)
            self._slip_energy[:] = self._slip_energy[best]
            self._slip_run = 0
            self.slips_followed += 1

    def shift(self, frames: int) -> None:
        """Our own side changed the echo path's delay by whole frames (the playout buffer
        inserted silence, or dropped a frame; a frame sent up never reached the line):
        move what the filters learnt along with it instead of learning it all again.
        Positive: the echo now comes later."""
        if frames == 0:
            return
        for weights in (self._foreground, self._background):
            if abs(frames) >= self.partitions:
                weights[:] = 0
            elif frames > 0:
                weights[frames:] = weights[:-frames].copy()
                weights[:frames] = 0
            else:
                weights[:frames] = weights[-frames:].copy()
                weights[frames:] = 0
        self.shifts += 1

    # -- internals -----------------------------------------------------------------------------

    def _filter_both(self) -> tuple[np.ndarray, np.ndarray]:
        """Echo estimates of the foreground and background filters (one inverse FFT)."""
        spectra = np.stack((np.einsum("pk,pk->k", self._foreground, self._far_spectra),
                            np.einsum("pk,pk->k", self._background, self._far_spectra)))
        estimates = np.fft.irfft(spectra, FFT, axis=1)[:, BLOCK:]
        return estimates[0], estimates[1]

    def _adapt(self, error: np.ndarray, near: np.ndarray) -> None:
        padded = np.zeros((2, FFT))
        padded[0, BLOCK:] = error
        padded[1, BLOCK:] = near
        error_spectrum, near_spectrum = np.fft.rfft(padded, axis=1)  # one call: half the overhead
        # NLMS over the whole tail: each bin's step is normalised by the reference power in
        # every partition (not a smoothed guess, which lags at speech onsets and lets the
        # filter overshoot)
        total_power = np.maximum(self._part_power.sum(axis=0), self._far_power)
        regularise = 1e-3 * float(np.mean(total_power)) + BLOCK * 4.0
        gain = self.step / (total_power + regularise)
        # Double-talk detection, per frequency bin: what came down the line at a frequency,
        # far louder than anything the reference could have echoed there, is the far party
        # speaking, not echo; the filter must not learn from it (else it learns to cancel
        # their voice out of leakage and noise in the reference, finding 7). Each bin adapts
        # in proportion. The line's own signal is the judge, not the filter's error, which
        # a filter that has started to cancel the far party would make small.
        near_power = near_spectrum.real ** 2 + near_spectrum.imag ** 2
        self._near_power = np.maximum(near_power, 0.7 * self._near_power)
        echo_bound = ECHO_HEADROOM * self._part_power.max(axis=0) + regularise
        self._talk = np.minimum(1.0, echo_bound / (self._near_power + 1e-9)) ** 2
        gain *= self._talk
        unexplained = float(np.dot(near_power, self._talk < 0.25))
        self._unexplained_share = unexplained / max(float(near_power.sum()), 1e-9)
        self._background += np.conj(self._far_spectra) * (error_spectrum * gain)
        # Keep each partition's impulse response causal and one block long (overlap-save
        # constraint), one partition per tick to spread the cost.
        index = self._constrain_next
        impulse = np.fft.irfft(self._background[index], FFT)
        impulse[BLOCK:] = 0.0
        self._background[index] = np.fft.rfft(impulse)
        self._constrain_next = (index + 1) % self.partitions

    def _choose(self, near: np.ndarray, err_fg: np.ndarray, err_bg: np.ndarray) -> None:
        smoothing = 0.9
        self._energy_fg = smoothing * self._energy_fg + (1 - smoothing) * float(
            np.dot(err_fg, err_fg))
        self._energy_bg = smoothing * self._energy_bg + (1 - smoothing) * float(
            np.dot(err_bg, err_bg))
        self._energy_near = smoothing * self._energy_near + (1 - smoothing) * float(
            np.dot(near, near))
        far_active = self._energy_far > BLOCK * 100.0  # about -50 dBFS
        if self._energy_fg > FOREGROUND_WORSE * self._energy_near + BLOCK * 100.0:
            # The foreground adds more than it removes: the echo path moved (frames bunched
            # or slipped on their way, a modem buffer re-centred). Never worse than no
            # canceller: drop it and let the background learn the new path.
            self._foreground[:] = 0
            self._energy_fg = self._energy_near
            self.foreground_dropped += 1
        if self._unexplained_share > DOUBLE_TALK_SHARE:
            self._double_talk_until = self.frames + DOUBLE_TALK_HANGOVER
        if self.frames < self._double_talk_until:
            # both sides talking: the background filter's lead may be the far party's voice
            # it learnt to cancel; never let that into the output
            self.double_talk_frames += 1
            return
        if not far_active:
            return
        if self._energy_bg < 0.5 * self._energy_fg:
            self._foreground[:] = self._background
            self._energy_fg = self._energy_bg
            self.copies_to_foreground += 1
            self._trained = self._foreground.copy()
        elif self._energy_bg > 8.0 * self._energy_fg + BLOCK * 100.0:
            self._background[:] = self._foreground
            self._energy_bg = self._energy_fg
            self.resets_from_foreground += 1

    def counters(self) -> dict[str, int]:
        """What the canceller did so far, for the call's audio figures."""
        return {"double_talk_frames": self.double_talk_frames,
                "copies_to_foreground": self.copies_to_foreground,
                "resets_from_foreground": self.resets_from_foreground,
                "foreground_dropped": self.foreground_dropped,
                "slips_followed": self.slips_followed, "shifts": self.shifts}

    def echo_delay_ms(self) -> int | None:
        """Where the foreground filter has most of its energy: the echo path's delay, to
        within a 20 ms block (None before it learnt anything)."""
        energy = np.sum(np.abs(self._foreground) ** 2, axis=1)
        if not np.any(energy > 0):
            return None
        return int(np.argmax(energy)) * 20

    def erle_db(self) -> float:
        """Echo return loss enhancement of the output, smoothed (near energy / output)."""
        if self._energy_fg <= 0:
            return 0.0
        return 10.0 * math.log10(max(self._energy_near, 1e-9) / max(self._energy_fg, 1e-9))


def _shifted(weights: np.ndarray, frames: int) -> np.ndarray:
    """The filter with its partitions moved ``frames`` later (earlier when negative)."""
    out = np.zeros_like(weights)
    if frames == 0:
        out[:] = weights
    elif frames > 0:
        out[frames:] = weights[:-frames]
    else:
        out[:frames] = weights[-frames:]
    return out


def _samples(frame: bytes | None) -> np.ndarray:
    if not frame:
        return np.zeros(BLOCK)
    data = np.frombuffer(frame[: BLOCK * 2], dtype="<i2").astype(np.float64)
    if data.size < BLOCK:
        data = np.concatenate((data, np.zeros(BLOCK - data.size)))
    return data


def _frame(samples: np.ndarray) -> bytes:
    return np.clip(np.rint(samples), -32768, 32767).astype("<i2").tobytes()
