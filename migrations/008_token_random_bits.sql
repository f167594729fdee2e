-- Tokens now carry 128 random bits that are never stored (see sync/tokens.py), so neither the signing
-- key nor this database can recreate one. Tokens made before this migration have none: they keep
-- working, `token list` marks them legacy, and `serve` warns while any is live, until they are
-- replaced (`token create`, then `token revoke ID`): docs/operations.md, "Tokens".
ALTER TABLE api_tokens ADD COLUMN random_bits INTEGER NOT NULL DEFAULT 0;
