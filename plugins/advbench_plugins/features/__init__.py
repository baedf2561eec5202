"""Built-in features plugins."""
