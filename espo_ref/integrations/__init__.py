"""Integrations of the ESPO loss into RL training frameworks (optional dependencies)."""
