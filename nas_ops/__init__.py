"""nas_ops package."""
