#!/usr/bin/env bash
# Create .venv and install everything the server and tests need. Idempotent: a stamp file skips the work
# when requirements.lock and pyproject.toml are unchanged.
#   scripts/bootstrap.sh            runtime only
#   scripts/bootstrap.sh test       runtime + test tools (pytest, hypothesis, openai SDK, playwright-core, chromium),
#                                   and .venv-frameworks (Pipecat, LiveKit Agents; requirements-frameworks.lock)
set -euo pipefail
cd "$(dirname "$0")/.."
want=${1:-runtime}
PY=${PYTHON:-python3}

apt_install() {  # system packages: espeak-ng (CPU engine), libsndfile (audio codecs), chromium (browser test)
    local missing=()
    for pkg in "$@"; do dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        echo "missing system packages: ${missing[*]} (install them, or run as root)" >&2; return 1; fi
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

sys_pkgs=(espeak-ng libsndfile1 ffmpeg)
[ "$want" = test ] && sys_pkgs+=(chromium)
apt_install "${sys_pkgs[@]}"

[ -x .venv/bin/python ] || "$PY" -m venv .venv
stamp=.venv/.installed-$want
digest=$(cat requirements.lock requirements-test.lock pyproject.toml | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$digest" ]; then
    .venv/bin/pip install -q --disable-pip-version-check -r requirements.lock
    # chatterbox-tts pins torch 2.6 and gradio; its real runtime needs are in requirements.lock.
    .venv/bin/pip install -q --disable-pip-version-check --no-deps chatterbox-tts==0.1.7
    [ "$want" = test ] && .venv/bin/pip install -q --disable-pip-version-check -r requirements-test.lock
    .venv/bin/pip install -q --disable-pip-version-check --no-deps -e .
    echo "$digest" > "$stamp"
fi
if [ "$want" = test ]; then
    # Pipecat and LiveKit Agents for tests/frameworks: Pipecat pins soundfile and soxr below requirements.lock,
    # so they get a virtualenv of their own, which the tests run as subprocesses against our server.
    [ -x .venv-frameworks/bin/python ] || "$PY" -m venv .venv-frameworks
    fw_stamp=.venv-frameworks/.installed
    fw_digest=$(sha256sum requirements-frameworks.lock | cut -c1-16)
    if [ "$(cat "$fw_stamp" 2>/dev/null)" != "$fw_digest" ]; then
        .venv-frameworks/bin/pip install -q --disable-pip-version-check -r requirements-frameworks.lock
        echo "$fw_digest" > "$fw_stamp"
    fi
fi
if [ "$want" = test ] && [ ! -d tests/browser/node_modules/playwright-core ]; then
    (cd tests/browser && npm install --silent --no-audit --no-fund >/dev/null)
fi
