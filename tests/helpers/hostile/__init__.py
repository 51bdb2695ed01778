"""Modules whose import is the attack (tests/test_conformance_hostile.py)."""
