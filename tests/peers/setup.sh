#!/usr/bin/env bash
# Build every engine environment the conformance tests meet (verl, Trinity-RFT, SkyRL, AReaL,
# OpenRLHF; TRL lives in the project's own environment, [trl] extra):
#   bash tests/peers/setup.sh
# Each script is a no-op when its environment is already built from the same pins.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
for engine in verl trinity skyrl areal openrlhf; do
    start=$SECONDS
    bash "$here/setup_$engine.sh"
    echo "$engine environment: $((SECONDS - start)) s"
done
