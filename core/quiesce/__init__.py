"""quiesce: application-consistent VM and disk snapshots for databases."""

__version__ = "0.1.0"
