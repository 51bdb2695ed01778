"""Entry point of the conformance worker process (``python -m espo_ref.conformance.worker``)."""

import sys

from .execution import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
