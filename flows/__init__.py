"""Prefect flows: orchestration only (loops, waits, submits)."""
