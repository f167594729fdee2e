"""The HTTP face of lore-gateway."""
