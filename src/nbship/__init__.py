"""nbship: notebooks to a served, operated model."""

__version__ = "0.1.0"
