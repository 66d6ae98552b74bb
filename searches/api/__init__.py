"""The REST API (Django REST framework): owner-filtered, with an OpenAPI schema."""
