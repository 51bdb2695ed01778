#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real SkyRL, both releases
# side by side (different top-level packages): skyrl-train 0.3.1 (skyrl_train.utils.ppo_utils) and
# skyrl 0.4.0 (skyrl.backends.skyrl_train.utils.ppo_utils, with skyrl-gym 0.4.0):
#   bash tests/peers/setup_skyrl.sh [VENV]        (default .venv-skyrl in the repository root)
# The environment sees the test environment's packages (venv --system-site-packages) and so reuses
# its torch 2.13.0 (a machine without it there gets its own copy); what the loss modules import
# beyond torch is pinned in requirements-skyrl.txt and installed inside, ahead of any shared copy.
# The wheels declare Python 3.12 but are pure Python: --no-deps --ignore-requires-python. On Python
# 3.11, skyrl 0.4.0 imports only after typing.TypedDict = typing_extensions.TypedDict (pydantic refuses
# typing.TypedDict before 3.12): the import check below does so, as an adapter must. Re-running is a
# no-op when neither this script nor the requirements changed. Facts: tests/peers/ENGINES.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh"
peer_env_begin skyrl "skyrl-train==0.3.1 skyrl==0.4.0 torch==2.13.0" "${1:-}"
# after the requirements, so that pip's resolver never sees the wheels' unmet declared requirements
"${pip[@]}" install --no-deps --ignore-requires-python skyrl-train==0.3.1 skyrl==0.4.0 skyrl-gym==0.4.0
peer_env_end "
import skyrl_train.utils.ppo_utils
import typing, typing_extensions
typing.TypedDict = typing_extensions.TypedDict
import skyrl.backends.skyrl_train.utils.ppo_utils
from skyrl.train.config import AlgorithmConfig" "SkyRL (skyrl-train 0.3.1, skyrl 0.4.0)"
