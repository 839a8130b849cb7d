"""The HTTP API of `sandboxer serve` (DESIGN §8; docs/api.md).

``app.create_app`` builds the FastAPI application, ``server.serve`` runs it with uvicorn.
Nothing here is imported by the CLI's read paths.
"""
