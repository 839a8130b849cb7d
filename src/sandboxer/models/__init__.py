"""Pydantic models (``extra="forbid"``) shared by the CLI, API, store and extensions."""
