#!/usr/bin/env bash
# Build the separate environment in which the conformance runner meets the real OpenRLHF 0.11.2:
#   bash tests/peers/setup_openrlhf.sh [VENV]     (default .venv-openrlhf in the repository root)
# The environment sees the test environment's packages (venv --system-site-packages) and so reuses
# its torch 2.13.0 (a machine without it there gets its own copy); what the loss module imports
# beyond torch is pinned in requirements-openrlhf.txt and installed inside, ahead of any shared copy.
# OpenRLHF comes with --no-deps, deepspeed 0.19.6 is built from its sdist against the shared torch.
# flash-attn has no CPU build, yet openrlhf/models/__init__.py imports it (through ring_attn_utils) before
# the loss module can load: this environment, and only it, gets a stand-in flash_attn package with
# the five names imported there, each raising if called (none is used by PolicyLoss). It carries no
# package metadata, so transformers does not report flash-attn as available. Re-running is a no-op
# when neither this script nor the requirements changed. Facts: tests/peers/ENGINES.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/peer_env.sh"
peer_env_begin openrlhf "openrlhf==0.11.2 deepspeed==0.19.6 torch==2.13.0" "${1:-}"
# deepspeed's build imports torch: no build isolation (its requirements are in the requirements file)
"${pip[@]}" install --no-deps --no-build-isolation deepspeed==0.19.6
# after the requirements, so that pip's resolver never sees OpenRLHF's unmet declared requirements
"${pip[@]}" install --no-deps openrlhf==0.11.2
site="$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
mkdir -p "$site/flash_attn/utils"
cat > "$site/flash_attn/__init__.py" <<'PY'
"""Stand-in for flash-attn, written by espo-ref's tests/peers/setup_openrlhf.sh (no kernels, no metadata).

openrlhf.models imports flash_attn.bert_padding and flash_attn.utils.distributed at module level, so
openrlhf.models.loss cannot be imported without them; flash-attn has no CPU build. PolicyLoss uses none
of these names: each raises if called."""


def absent(name):
    def call(*args, **kwargs):
        raise RuntimeError(f"flash_attn.{name} is a stand-in (tests/peers/setup_openrlhf.sh): no flash-attn on CPU")
    call.__name__ = name
    return call
PY
cat > "$site/flash_attn/bert_padding.py" <<'PY'
from einops import rearrange  # flash_attn.bert_padding re-exports einops' rearrange

from flash_attn import absent

index_first_axis = absent("bert_padding.index_first_axis")
pad_input = absent("bert_padding.pad_input")
unpad_input = absent("bert_padding.unpad_input")
PY
: > "$site/flash_attn/utils/__init__.py"
cat > "$site/flash_attn/utils/distributed.py" <<'PY'
from flash_attn import absent

all_gather = absent("utils.distributed.all_gather")
PY
export DS_ACCELERATOR=cpu  # deepspeed's accelerator, said rather than detected (no warning on import)
peer_env_end "from openrlhf.models.loss import PolicyLoss, aggregate_loss" "OpenRLHF 0.11.2"
