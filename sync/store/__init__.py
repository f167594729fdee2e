"""The store: the SQLite database (one writer, readers beside it), its migrations, backups and data versions.

Everything below this package owns a table or a file in the data directory; nothing here talks to GitLab.
"""
