"""Pure renderers: plain dicts and arrays in, markdown, PNG and JSON files out (no training, timing or model loading)."""
