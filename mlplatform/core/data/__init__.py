"""The data stage: the dataset contract and schema, ingest quality checks, the lake (landing, hashing,
quarantine, checkout ledger), the review features and labels, stable splits, pre-training bias, the text a
model sees, and synthetic demo data."""
