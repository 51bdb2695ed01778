#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real verl 0.9.1:
#   bash tests/peers/setup_verl.sh [VENV]        (default .venv-verl in the repository root)
# tests/test_verl_real.py finds it there (or at $ESPO_VERL_PYTHON). Re-running is a no-op
# when the requirements did not change.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv-verl}"
req="$root/tests/peers/requirements-verl.txt"
stamp="$venv/.espo-ref-ready"
want="verl==0.9.1 torch==2.13.0 $(sha256sum "$req" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps -e "$root"
    exit 0
fi
python3 -m venv "$venv"
pip="$venv/bin/pip"
"$pip" install --quiet --disable-pip-version-check torch==2.13.0
"$pip" install --quiet --disable-pip-version-check -r "$req"
# after the requirements, so that pip's resolver never sees (nor prints) verl's unmet declared requirements
"$pip" install --quiet --disable-pip-version-check --no-deps verl==0.9.1
"$pip" install --quiet --disable-pip-version-check --no-deps -e "$root"
"$venv/bin/python" -c "import verl.trainer.ppo.core_algos, verl.workers.config, verl.workers.utils.losses"
echo "$want" > "$stamp"
echo "verl 0.9.1 environment ready: $venv"
