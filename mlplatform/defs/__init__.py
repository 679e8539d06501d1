"""Thin Dagster wiring: assets call core functions, attach metadata and return."""
