"""The HTTP API of `sandboxer serve` (docs/api.md).

``app.create_app`` builds the FastAPI application, ``server.serve`` runs it with uvicorn.
Nothing here is imported by the CLI's read paths.
"""
