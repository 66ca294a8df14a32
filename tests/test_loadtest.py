"""The load-testing tool: its pieces on their own, then tiny ramps against a real espeak server."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Iterator

import pytest

from harness import RunningServer, free_port, make_settings, run_server
from load.loadtest import command_line, main
from load.metrics import ReplyRecord, ServiceLevel, aggregate_step
from load.ramp import RampResult, doubling_steps
from load.replies import REPLY_POOL, TokenTiming, tokenize
from load.report import write_reports

FAST_RAMP = ["--replies", "1", "--reply-chars", "80", "--token-rate", "200", "--stagger-s", "0.1",
             "--think-s", "0", "--cooldown-s", "0"]


@pytest.fixture(scope="module")
def espeak_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with run_server(make_settings(tmp_path_factory.mktemp("server"))) as server:
        yield server


def test_tokens_rejoin_to_the_reply_and_average_about_four_characters() -> None:
    for reply in REPLY_POOL:
        tokens = tokenize(reply)
        assert "".join(tokens) == reply
        assert 3.0 <= len(reply) / len(tokens) <= 5.0


def test_token_gaps_average_the_requested_rate_and_stalls_lengthen_them() -> None:
    rng = random.Random(1)
    steady = TokenTiming(tokens_per_s=50, stall_probability=0)
    gaps = [steady.next_gap(rng) for _ in range(20_000)]
    assert sum(gaps) / len(gaps) == pytest.approx(1 / 50, rel=0.05)
    assert max(gaps) > 3 / 50  # jittered, not a metronome
    stalling = TokenTiming(tokens_per_s=50, stall_probability=0.1, stall_mean_s=0.2)
    stalled = [stalling.next_gap(rng) for _ in range(20_000)]
    assert sum(stalled) / len(stalled) == pytest.approx(1 / 50 + 0.1 * 0.2, rel=0.1)


def test_reply_counts_each_stall_of_a_listener_started_at_the_first_byte() -> None:
    record = ReplyRecord(session=0, context_id="c", text_chars=0, bytes_per_s=1000)
    record.on_text_sent("Hi", 9.5)
    record.on_audio(250, 10.0)  # plays until 10.25
    record.on_audio(250, 10.125)  # in time: plays until 10.5
    record.on_audio(250, 10.75)  # 250 ms late: the listener stalled, then plays until 11.0
    record.on_audio(250, 11.0)  # exactly in time for the shifted playback
    record.on_audio(250, 11.5)  # 250 ms late again: a second stall
    assert record.playback.underruns == 2
    assert record.to_dict()["underrun_ms"] == pytest.approx(500)
    assert record.audio_s == pytest.approx(1.25)
    assert record.ttfa_ms == pytest.approx(500)
    assert record.rtf == pytest.approx((11.5 - 9.5) / 1.25)


def test_first_chunk_is_timed_from_the_message_that_completed_it_and_from_its_release() -> None:
    record = ReplyRecord(session=0, context_id="c", text_chars=0, bytes_per_s=48_000)
    tokens = tokenize("Sure! The quickest way is north, then east.")
    for sent_at, token in enumerate(tokens):
        record.on_text_sent(token, float(sent_at))
    # The server re-capitalizes and re-punctuates chunks; the comma token right after "north" still belongs.
    record.on_first_chunk_started("Sure! The quickest way is north.", now=10.0)
    record.on_audio(4800, 10.5)
    comma_sent_at = float(tokens.index(","))
    assert tokens[int(comma_sent_at) - 1] == " north"
    assert record.ttfa_ms == pytest.approx(10_500)
    assert record.ttfa_from_chunk_ms == pytest.approx((10.5 - comma_sent_at) * 1000)
    assert record.ttfa_from_release_ms == pytest.approx(500)


def test_first_chunk_holding_all_text_is_timed_from_end() -> None:
    record = ReplyRecord(session=0, context_id="c", text_chars=0, bytes_per_s=48_000)
    for sent_at, token in enumerate(tokenize("Okay")):
        record.on_text_sent(token, float(sent_at))
    record.end_sent_at = 3.0
    record.on_first_chunk_started("Okay.", now=3.1)
    record.on_audio(4800, 3.5)
    assert record.ttfa_from_chunk_ms == pytest.approx(500)


def test_doubling_steps_end_on_the_maximum() -> None:
    assert doubling_steps(1) == [1]
    assert doubling_steps(16) == [1, 2, 4, 8, 16]
    assert doubling_steps(12) == [1, 2, 4, 8, 12]


def test_reported_command_masks_the_api_key() -> None:
    shown = command_line(["--url", "ws://h/v1/stream", "--api-key", "secret", "--api-key=secret2"])
    assert "secret" not in shown
    assert shown.startswith("python -m load.loadtest --url ws://h/v1/stream --api-key '***'")


def test_reports_are_written_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    record = ReplyRecord(session=0, context_id="c", text_chars=4, bytes_per_s=48_000)
    record.on_text_sent("Okay", 1.0)
    record.on_audio(48_000, 1.1)
    record.done_at = 1.2
    level = ServiceLevel(ttfa_p95_ms=250, ttfa_from="text")
    step = aggregate_step(1, [record], [], 1.0, 0.0, level)
    written = write_reports(tmp_path, RampResult([step]), level, "python -m load.loadtest", {})
    assert [path.name for path in written] == ["results.json", "summary.md"]
    assert "matplotlib is not installed" in caplog.text
    assert json.loads((tmp_path / "results.json").read_text())["max_passing_sessions"] == 1


def test_tiny_ramp_against_espeak_writes_sane_reports(espeak_server: RunningServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--url", espeak_server.ws_url, "--sessions", "1,2", *FAST_RAMP, "--slo-ttfa-ms", "5000",
            "--out", str(out)]
    assert main(argv) == 0

    results = json.loads((out / "results.json").read_text())
    assert [step["sessions"] for step in results["steps"]] == [1, 2]
    assert results["max_passing_sessions"] == 2
    for step in results["steps"]:
        assert step["passed"], step["violations"]
        assert step["errors"] == 0 and step["underruns"] == 0
        assert step["replies"] == step["completed_replies"] == step["sessions"]
        assert 0 < step["ttfa_ms"]["p50"] <= step["ttfa_ms"]["p95"] <= step["ttfa_ms"]["max"] < 5000
        assert 0 < step["ttfa_from_release_ms"]["p50"] <= step["ttfa_from_chunk_ms"]["p50"] <= step["ttfa_ms"]["p50"]
        assert step["audio_s"] > 1.0
        assert 0 < step["rtf"]["max"] < 10
        # The server's own view of the same replies agrees with the client's within a client round trip.
        for reply in step["replies_detail"]:
            assert reply["server_stats"]["ttfa_ms"] == pytest.approx(reply["ttfa_ms"], abs=100)
            assert reply["server_stats"]["ttfa_from_release_ms"] == pytest.approx(reply["ttfa_from_release_ms"],
                                                                                   abs=100)
            assert reply["server_stats"]["audio_s"] == pytest.approx(reply["audio_s"], abs=0.01)

    summary = (out / "summary.md").read_text()
    assert "| 1 | 1 (1) |" in summary and "| 2 | 2 (2) |" in summary
    assert "**2**" in summary
    assert command_line(argv) in summary
    assert (out / "ttfa.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ramp_stops_at_the_first_step_that_breaks_the_service_level(espeak_server: RunningServer,
                                                                      tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--url", espeak_server.ws_url, "--sessions", "1,2", *FAST_RAMP, "--slo-ttfa-ms", "0.001",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert [step["sessions"] for step in results["steps"]] == [1]
    assert results["max_passing_sessions"] is None
    assert results["steps"][0]["violations"][0].startswith("p95 ttfa")
    assert "No step met the service level" in (out / "summary.md").read_text()


def test_no_ramp_runs_when_the_server_never_becomes_ready(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["--url", f"ws://127.0.0.1:{free_port()}/v1/stream", "--wait-ready-s", "0", "--out", str(out)]) == 1
    assert not out.exists()
