"""Helpers of the test suite (not test modules): oracles, strategies, assertions, bad implementations.

Test modules import them as ``helpers.<module>`` (pytest puts tests/ on the path); nothing
here is collected as a test.
"""
