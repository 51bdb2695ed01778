#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real Trinity-RFT 0.6.0:
#   bash tests/peers/setup_trinity.sh [VENV]      (default .venv-trinity in the repository root)
# The environment sees the test environment's packages (venv --system-site-packages) and so reuses
# its torch 2.13.0 (a machine without it there gets its own copy); what Trinity's loss module imports
# beyond torch is pinned in requirements-trinity.txt and installed inside, ahead of any shared copy.
# Trinity itself comes with --no-deps (see the requirements file). Re-running is a no-op when neither
# this script nor the requirements changed. Facts about the loss API: tests/peers/ENGINES.md.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-trinity}"
req="$here/requirements-trinity.txt"
stamp="$venv/.espo-ref-ready"
want="trinity-rft==0.6.0 torch==2.13.0 $(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
pip=("$venv/bin/python" -m pip --quiet --disable-pip-version-check)
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    "${pip[@]}" install --no-deps -e "$root"
    exit 0
fi
python3 -m venv --system-site-packages "$venv"
echo '*' > "$venv/.gitignore"
"$venv/bin/python" -c 'import sys, torch; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
    || "${pip[@]}" install torch==2.13.0
"${pip[@]}" install -r "$req"
# after the requirements, so that pip's resolver never sees Trinity's unmet declared requirements
"${pip[@]}" install --no-deps trinity-rft==0.6.0
"${pip[@]}" install --no-deps -e "$root"
"$venv/bin/python" -c "
from trinity.algorithm.policy_loss_fn import POLICY_LOSS_FN
from trinity.algorithm.utils import aggregate_loss
for name in ('ppo', 'gspo', 'cispo'):
    POLICY_LOSS_FN.get(name)"
echo "$want" > "$stamp"
echo "Trinity-RFT 0.6.0 environment ready: $venv"
