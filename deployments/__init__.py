"""Serving the deployments, the reconciler, the local stack and the `campaigns` CLI."""
