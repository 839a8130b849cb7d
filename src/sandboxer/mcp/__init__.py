"""`sandboxer mcp`: MCP tools over stdio for agent harnesses (docs/api.md, "MCP server").

The SDK is the top-level ``mcp`` package; modules here import it with absolute imports.
"""
