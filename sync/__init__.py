"""The sync engine: store, GitLab client, pipeline, scheduler and locks.

Nothing in this package imports the web layer (`gateway` or `aiohttp.web`):
the engine runs the same under `serve`, the CLI and the tests.
"""
