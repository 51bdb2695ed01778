#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real Trinity-RFT 0.6.0:
#   bash tests/peers/setup_trinity.sh [VENV]      (default .venv-trinity in the repository root)
# The environment sees the test environment's packages (venv --system-site-packages) and so reuses
# its torch 2.13.0 (a machine without it there gets its own copy); what Trinity's loss module imports
# beyond torch is pinned in requirements-trinity.txt and installed inside, ahead of any shared copy.
# Trinity itself comes with --no-deps (see the requirements file). Re-running is a no-op when neither
# this script nor the requirements changed. Facts about the loss API: tests/peers/ENGINES.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh"
peer_env_begin trinity "trinity-rft==0.6.0 torch==2.13.0" "${1:-}"
# after the requirements, so that pip's resolver never sees Trinity's unmet declared requirements
"${pip[@]}" install --no-deps trinity-rft==0.6.0
peer_env_end "
from trinity.algorithm.policy_loss_fn import POLICY_LOSS_FN
from trinity.algorithm.utils import aggregate_loss
for name in ('ppo', 'gspo', 'cispo'):
    POLICY_LOSS_FN.get(name)" "Trinity-RFT 0.6.0"
