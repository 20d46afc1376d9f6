"""Fixtures for mysql (filled in by its own module owner)."""

__all__: list[str] = []
