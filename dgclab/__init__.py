"""dgclab."""
