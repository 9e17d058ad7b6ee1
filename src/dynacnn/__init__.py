"""dynacnn."""
