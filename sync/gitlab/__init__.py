"""GitLab access: the REST/GraphQL client, the request budget, the instance's version, project webhooks.

The only package that sends requests to GitLab; the ingest stages call it, never the other way round.
"""
