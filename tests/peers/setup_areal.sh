#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real AReaL 1.0.4:
#   bash tests/peers/setup_areal.sh [VENV]        (default .venv-areal in the repository root)
# The environment sees the test environment's packages (venv --system-site-packages) and so reuses
# its torch 2.13.0 (a machine without it there gets its own copy; AReaL declares torch < 2.11, which
# its loss function does not need); what the loss module imports beyond torch is pinned in
# requirements-areal.txt and installed inside, ahead of any shared copy. AReaL itself comes with
# --no-deps --ignore-requires-python (see the requirements file). Re-running is a no-op when neither
# this script nor the requirements changed. Facts about the loss API: tests/peers/ENGINES.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh"
peer_env_begin areal "areal==1.0.4 torch==2.13.0" "${1:-}"
# after the requirements, so that pip's resolver never sees AReaL's unmet declared requirements
"${pip[@]}" install --no-deps --ignore-requires-python areal==1.0.4
peer_env_end "from areal.utils.functional.functional import ppo_actor_loss_fn" "AReaL 1.0.4"
