"""search_client package."""
