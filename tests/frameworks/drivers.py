"""Running the framework drivers (drive_*.py) in .venv-frameworks, and checking what they heard."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

from harness import REPO_ROOT

FRAMEWORKS_PYTHON = REPO_ROOT / ".venv-frameworks" / "bin" / "python"
DRIVER_TIMEOUT_S = 240.0
ESPEAK_CHARS_PER_SECOND = 14.0  # espeak-ng at its default 175 words per minute, roughly

API_KEY = "framework-test-key"


def drive(driver: str, *args: Any) -> dict[str, Any]:
    """Run tests/frameworks/<driver> in the frameworks' virtualenv; its JSON result."""
    script = Path(__file__).with_name(driver)
    done = subprocess.run([str(FRAMEWORKS_PYTHON), str(script), *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S,
                          env={**os.environ, "CBR_API_KEY": API_KEY})
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout)


def seconds_of(turn: dict[str, Any], sample_rate: int) -> float:
    return turn["audio_bytes"] / 2 / sample_rate  # 16-bit mono PCM


def assert_spoken(turn: dict[str, Any], text: str, sample_rate: int) -> None:
    """The whole reply came back as audio at the expected rate, about as long as espeak speaks it."""
    expected_s = len(text) / ESPEAK_CHARS_PER_SECOND
    assert turn["sample_rates"] == [sample_rate], turn
    assert 0.5 * expected_s < seconds_of(turn, sample_rate) < 2.0 * expected_s, turn
