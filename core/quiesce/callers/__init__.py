"""The callers: the Azure contract (config, permission checks, scripts, the runner, snapshot
providers, the status report), `check` and `install`. May import: errors, schema, settings,
security, the hold's client side and freezing; never the harness or a bundled engine.
"""
