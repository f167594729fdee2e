"""The read side: item listings, full-text search, experts and the change feed, read from the store.

Nothing here writes; the gateway's REST, MCP and CLI handlers call these.
"""
