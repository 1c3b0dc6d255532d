"""Prefect tasks: thin wrappers over the plain-Python core that add retries, timeouts and tags."""
