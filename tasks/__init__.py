"""Prefect tasks: thin wrappers over the plain-Python core that add retries, timeouts and caching rules.

No task carries tags: Prefect asks the server for tag-concurrency slots on every run of a tagged
task, which measured 0.1–2 s per run here, more than the work of most tasks. Deployments and
flows carry the tags instead.
"""
