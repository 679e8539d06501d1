"""mlplatform: the whole life of a sentiment model as a Dagster asset graph."""

__version__ = "0.1.0"
