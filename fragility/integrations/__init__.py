"""Integrations with training frameworks (optional dependencies, imported only from their modules)."""
