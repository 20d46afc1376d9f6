"""Monotonic deadlines: every wait in quiesce is bounded by one of these."""

from __future__ import annotations

import time


class Deadline:
    """A point on the monotonic clock; immune to wall-clock jumps (NTP, suspend)."""

    __slots__ = ("at", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)
        self.at = time.monotonic() + self.seconds

    def remaining(self) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.at - time.monotonic())

    def expired(self) -> bool:
        return time.monotonic() >= self.at

    def sooner(self, seconds: float) -> Deadline:
        """A deadline that ends after ``seconds`` or at this one, whichever comes first."""
        other = Deadline(seconds)
        other.at = min(other.at, self.at)
        return other

    def __repr__(self) -> str:
        return f"Deadline(remaining={self.remaining():.3f}s of {self.seconds:g}s)"
