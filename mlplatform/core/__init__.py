"""Pure domain logic. Nothing in this package imports dagster."""
