"""The web page and the HTTP API: FastAPI routes over the service, Jinja2 templates, SSE."""
