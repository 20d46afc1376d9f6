"""quiesce's built-in postgresql engine plugin."""
