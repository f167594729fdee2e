"""A fake GitLab (REST, GraphQL, webhooks, version profiles) for tests, benchmarks and `lore-gateway demo`.

Not part of the gateway's face: product code never imports this package; only the `demo` command does
(tests/test_architecture.py enforces it).
"""
