"""Throwaway database servers for the drill and the tests (local binaries or Docker)."""
