"""The endpoint server's HTTP application (FastAPI): routes, authentication, errors, OpenAPI."""
