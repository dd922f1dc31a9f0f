"""Helpers every stage shares: SQLite engines, atomic files, HTML page parts."""
