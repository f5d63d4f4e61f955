"""Prefect @task wrappers, each a few lines over one core function."""
