"""[CONF-EXIT] The runner's one exception for usage and setup problems (exit status 2)."""


class SetupError(Exception):
    """A usage or setup problem (exit status 2): bad arguments, an unimportable implementation,
    an unknown adapter, an unavailable device, unreadable golden or xfail files, an engine
    version without an expected-failure file."""
