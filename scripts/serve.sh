#!/usr/bin/env bash
# The one serve command: installs into .venv if needed, then runs `chatterbox-realtime serve`.
#   scripts/serve.sh                                   127.0.0.1:8000: Chatterbox from the hub on a CUDA GPU, else espeak
#   scripts/serve.sh --engine espeak                   the light CPU engine (no GPU, no weights)
#   scripts/serve.sh --engine chatterbox               the model from the hub (GPU recommended)
#   scripts/serve.sh --engine chatterbox --checkpoint DIR
# Every flag also has an environment variable (CBR_*); see README.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh runtime
exec .venv/bin/chatterbox-realtime serve "$@"
