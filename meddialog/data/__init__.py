"""Raw sources, conversations, cleaning and splits."""
