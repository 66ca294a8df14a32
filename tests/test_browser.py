"""The browser demo (static/) against a real server with the espeak engine, in headless Chromium.

`tests/browser/demo.spec.mjs` (playwright-core driving /usr/bin/chromium) streams a simulated LLM reply,
checks that audio reached the AudioWorklet, that the figures and timeline filled in, barges in with Stop,
speaks a whole text, downloads the session WAV and saves screenshots; this file starts the server, runs it
and checks what it reports and the screenshots it left in var/screenshots/.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest
from harness import metric_samples

REPO_ROOT = Path(__file__).resolve().parents[1]
BROWSER_TESTS = REPO_ROOT / "tests" / "browser"
SCREENSHOTS = REPO_ROOT / "var" / "screenshots"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
NODE = shutil.which("node")
SPEC_TIMEOUT_S = 120
# Full-page screenshots: (viewport width, viewport height as the least page height).
SCREENSHOT_SIZES = {"demo.png": (1280, 900), "demo-streaming.png": (1280, 900), "demo-phone.png": (390, 844)}
API_KEY = "browser-test-key"
AUTH = {"X-API-Key": API_KEY}

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed (the browser tests run on Node.js)")
needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)")


def run_node(*args: str) -> subprocess.CompletedProcess[str]:
    assert NODE is not None
    return subprocess.run([NODE, *args], cwd=BROWSER_TESTS, capture_output=True, text=True, timeout=SPEC_TIMEOUT_S)


def png_size_and_variety(path: Path) -> tuple[int, int, int]:
    """(width, height, distinct byte values in the pixel data): a blank page compresses to a handful."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    idat, offset = bytearray(), 8
    while offset < len(data):
        length, kind = struct.unpack(">I4s", data[offset:offset + 8])
        if kind == b"IDAT":
            idat += data[offset + 8:offset + 8 + length]
        offset += 12 + length
    return width, height, len(set(zlib.decompress(bytes(idat))))


@needs_node
def test_playback_worklet_units() -> None:
    result = run_node("--test", "worklet.unit.mjs")
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "# fail 0" in result.stdout


@needs_node
@needs_chromium
def test_demo_page_streams_plays_and_barges_in(server_factory, tmp_path: Path) -> None:
    assert (BROWSER_TESTS / "node_modules" / "playwright-core").is_dir(), \
        "playwright-core is not installed: run scripts/bootstrap.sh test (npm install in tests/browser)"
    # The page is public; its socket and fetches carry the key. Two models: the page offers both.
    server = server_factory(api_key=API_KEY, models="standard,turbo")
    for stale in SCREENSHOT_SIZES:
        (SCREENSHOTS / stale).unlink(missing_ok=True)

    reference = tmp_path / "reference.wav"  # uploaded through the page when the server has a voice library
    subprocess.run(["espeak-ng", "-w", str(reference), "A short reference recording for the voice library."],
                   check=True, timeout=30)

    result = run_node("demo.spec.mjs", "--url", server.base_url + "/", "--out", str(SCREENSHOTS),
                      "--chromium", CHROMIUM, "--voice-file", str(reference), "--api-key", API_KEY)
    assert result.returncode == 0, result.stderr[-6000:]
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    # The worklet itself reported the audio (its counters come from its messages, not from the socket).
    llm = summary["llm"]["state"]
    assert llm["samplesReceived"] > 0 and llm["samplesPlayed"] > 0
    assert llm["outputRate"] >= 8000
    assert llm["ttfaMs"] > 0 and llm["rtf"] > 0
    assert any(chunk["state"] == "done" and chunk["end"] > chunk["start"] for chunk in llm["chunks"])
    assert summary["stop"]["level"] == 0
    assert summary["whole"]["utteranceState"] == "done"
    assert summary["wav"]["seconds"] > 0.2
    voices = server.get("/v1/voices", headers=AUTH)
    if voices.status_code == 200:
        listed = [voice["id"] for voice in voices.json()["voices"]]
        assert summary["voiceLibrary"]["uploaded"] in listed, "the page's upload reached the voice library"

    assert summary["models"] == ["standard", "turbo"] and summary["defaultModel"] == "standard"
    spoken = metric_samples(server)
    assert spoken.get("chatterbox_chunks_total{model=turbo}", 0) > 0, "the LLM stream spoke with the picked model"
    assert spoken.get("chatterbox_chunks_total{model=standard}", 0) > 0, "the whole text with the default"

    text = summary["text"]
    for label in ("Time to first audio", "Real-time factor", "Buffered audio", "Underruns", "Timeline",
                  "Speak", "Stop", "Download WAV", "Voice", "simulated LLM stream"):
        assert label in text, f"{label!r} missing from the page"
    served = server.get("/optimization-status", headers=AUTH).json()["engine"]
    assert served["engine"] in summary["engine"] and served["device"] in summary["engine"]
    spoken_chunk = next(chunk["text"] for chunk in summary["whole"]["chunks"])
    assert spoken_chunk.strip() in text, "the timeline shows the chunk texts"

    for name, (width, min_height) in SCREENSHOT_SIZES.items():
        png_width, png_height, variety = png_size_and_variety(SCREENSHOTS / name)
        assert png_width == width and min_height <= png_height <= 12000, (name, png_width, png_height)
        assert variety > 50, f"{name} looks blank"
