"""quiesce's built-in mongodb engine plugin."""
