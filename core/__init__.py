"""Plain-Python domain of the campaign service: no Prefect or FastAPI imports here."""
