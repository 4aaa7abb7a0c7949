"""Evaluation with the serving engine, the release gate, and the release ledger."""
