"""The `sandboxer` command line: a thin shell over one Client."""
