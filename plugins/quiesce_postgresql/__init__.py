"""quiesce's built-in PostgreSQL engine: backup mode (pg_backup_start/stop) or CHECKPOINT.

Modules: ``plugin`` (the pluggy hook, imports no driver), ``config`` (the instance schema),
``engine`` (the Quiescer), ``wal`` (LSN, WAL file and backup_label helpers, no driver),
``restore`` (writing a recorded backup_label into a restored data directory).
"""
