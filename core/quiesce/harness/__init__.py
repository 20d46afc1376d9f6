"""The harness: drill orchestration, throwaway server and disk base classes, image builds and
pytest fixtures. Engine-agnostic: each engine plugin brings its own server, drill target
and fixtures through hooks. Production commands (pre, post, status, run, check, install)
never import it.
"""
