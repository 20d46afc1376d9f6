"""Per-engine drill targets; :func:`target_for` picks one by ``--engine`` name."""

from __future__ import annotations

from quiesce.drill.targets.base import Backend, Target

ENGINES = ("postgresql", "mysql", "mariadb", "mongodb")


def target_for(engine: str, backend: Backend) -> Target:
    if engine == "postgresql":
        from quiesce.drill.targets.postgresql import PostgresTarget

        return PostgresTarget(backend)
    if engine in ("mysql", "mariadb"):
        from quiesce.drill.targets.mysql import MySQLTarget

        return MySQLTarget(backend, engine)
    if engine == "mongodb":
        from quiesce.drill.targets.mongodb import MongoTarget

        return MongoTarget(backend)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Backend", "Target", "target_for"]
