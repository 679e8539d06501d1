"""The monitoring stage: the capture record format and reader, the prediction log, the monitors' rules and
verdicts, drift, live quality, the product report, system health, alerts and lineage."""
