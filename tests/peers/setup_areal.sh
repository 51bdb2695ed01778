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
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
venv="${1:-$root/.venv-areal}"
req="$here/requirements-areal.txt"
stamp="$venv/.espo-ref-ready"
want="areal==1.0.4 torch==2.13.0 $(cat "$req" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
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
# after the requirements, so that pip's resolver never sees AReaL's unmet declared requirements
"${pip[@]}" install --no-deps --ignore-requires-python areal==1.0.4
"${pip[@]}" install --no-deps -e "$root"
"$venv/bin/python" -c "from areal.utils.functional.functional import ppo_actor_loss_fn"
echo "$want" > "$stamp"
echo "AReaL 1.0.4 environment ready: $venv"
