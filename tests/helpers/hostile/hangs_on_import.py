"""An import that never ends."""

import time

time.sleep(3600)


def espo_loss(*args):  # never reached
    raise AssertionError
