#!/usr/bin/env python3
"""Container health probe: exit 0 when the local server answers 200 on a path (default /health), else 1.

Installed in the images as `cbr-healthcheck`; uses only the standard library and app.settings (for the port
and API key, read from the same CBR_* environment the server reads), so the images need no curl.
    cbr-healthcheck            liveness  (GET /health)
    cbr-healthcheck /ready     readiness (GET /ready: 503 while warming up or draining)
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request

from app.settings import load_settings

TIMEOUT_S = 4.0


def probe(port: int, path: str, api_key: str = "", timeout_s: float = TIMEOUT_S) -> bool:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if api_key:
        request.add_header("Authorization", f"Bearer {api_key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):  # HTTPError (e.g. 503) is a URLError
        return False


def main(argv: list[str]) -> int:
    path = argv[1] if len(argv) > 1 else "/health"
    settings = load_settings()
    return 0 if probe(settings.port, path, settings.api_key) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
