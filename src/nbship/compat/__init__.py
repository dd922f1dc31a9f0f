"""Private APIs of third-party libraries that nbship relies on, each behind a named function
and checked by a test that names the version it was verified against."""
