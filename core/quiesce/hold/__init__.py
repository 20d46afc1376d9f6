"""The hold: the holder process, its client protocol and inbox, the guardian, the lifecycle
that drives engines' Quiescers, the trace a hold leaves, and the run records. May import:
errors, deadline, engine, settings, plugins, security, atomic; never the harness, the
callers or a bundled engine.
"""
