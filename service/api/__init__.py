"""The HTTP API: the FastAPI application (`service.api.app.build_app`) and its routes by resource."""
