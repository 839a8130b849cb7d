"""Provisioning backends; each is a package registered under ``sandboxer.extensions``."""
