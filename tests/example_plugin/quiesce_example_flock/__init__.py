"""An example third-party quiesce engine: "flock" holds an exclusive flock() on a file."""
