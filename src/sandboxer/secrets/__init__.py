"""The secret boundary: refs are resolved only at provision time, held only in memory."""
