"""Error type raised for bad input [ESPO-INPUT]."""


class ESPOInputError(ValueError):
    """[ESPO-INPUT] A bad argument: the message names the argument and what is wrong with it."""
