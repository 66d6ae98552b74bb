"""Views of the web UI, one module per resource; each fetches objects through owner-filtered helpers."""
