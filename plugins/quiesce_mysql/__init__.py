"""quiesce's built-in mysql engine plugin."""
