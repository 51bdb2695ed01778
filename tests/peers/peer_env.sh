# Sourced by tests/peers/setup_<engine>.sh: the part every engine environment shares.
#
#   peer_env_begin ENGINE "PINS" [VENV]   sets $venv, $pip, $root; exits 0 after refreshing this
#                                         project's editable install when the environment is already
#                                         built from the same pins, requirements and script; else
#                                         makes a venv that sees the test environment's packages
#                                         (--system-site-packages: the shared torch 2.13.0, or its
#                                         own copy where there is none) and installs
#                                         requirements-ENGINE.txt inside, ahead of any shared copy
#   peer_env_end "IMPORT CHECK" "LABEL"   installs this project (--no-deps, editable), runs the
#                                         import check, and stamps the environment ready
#
# The engine itself is installed between the two with --no-deps, after its pinned requirements,
# so that pip's resolver never sees (nor prints) the engine's unmet declared requirements.

peer_env_begin() {
    local engine="$1" pins="$2"
    here="$(cd "$(dirname "${BASH_SOURCE[1]}")" && pwd)"
    root="$(cd "$here/../.." && pwd)"
    venv="${3:-$root/.venv-$engine}"
    local req="$here/requirements-$engine.txt"
    stamp="$venv/.espo-ref-ready"
    want="$pins $(cat "$req" "${BASH_SOURCE[1]}" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
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
}

peer_env_end() {
    "${pip[@]}" install --no-deps -e "$root"
    "$venv/bin/python" -c "$1"
    echo "$want" > "$stamp"
    echo "$2 environment ready: $venv"
}
