#!/bin/sh
# Entrypoint of the CPU image: serve Chatterbox when a checkpoint is mounted at $CBR_CHECKPOINT, otherwise the
# light espeak engine. An explicit CBR_ENGINE always wins. Arguments go on to `chatterbox-realtime serve`.
set -eu
if [ -z "${CBR_ENGINE:-}" ]; then
    if [ -f "${CBR_CHECKPOINT:-}/t3_cfg.safetensors" ]; then
        CBR_ENGINE=chatterbox
    else
        CBR_ENGINE=espeak
    fi
    export CBR_ENGINE
    echo "cbr-cpu-entrypoint: CBR_ENGINE=$CBR_ENGINE (checkpoint dir: ${CBR_CHECKPOINT:-unset})" >&2
fi
exec chatterbox-realtime serve "$@"
