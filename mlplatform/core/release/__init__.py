"""The release stage: the model registry (versions, aliases, approval) and deployment (the production alias
moved under the platform's deployment lock, smoke test, rollback)."""
