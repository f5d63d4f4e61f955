"""The HTTP API (FastAPI): thin routes over core/, errors mapped in one place."""
