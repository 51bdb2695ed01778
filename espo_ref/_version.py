"""Package and specification versions (the spec version is cited by golden data)."""

__version__ = "0.1.0"
SPEC_VERSION = "1.0.0"
