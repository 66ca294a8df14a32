"""The ramp: run N = 1, 2, 4, ... concurrent sessions, one step at a time, until the service level breaks."""

from __future__ import annotations

import asyncio
import logging
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

from load.metrics import ServiceLevel, StepResult, aggregate_step
from load.session import SessionConfig, SessionRunner

log = logging.getLogger("load")

LAG_PROBE_INTERVAL_S = 0.05
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # as the WebSocket client: direct


def doubling_steps(max_sessions: int) -> list[int]:
    """1, 2, 4, ... up to max_sessions, ending exactly on it."""
    steps = [1]
    while steps[-1] * 2 <= max_sessions:
        steps.append(steps[-1] * 2)
    if steps[-1] != max_sessions and max_sessions > 1:
        steps.append(max_sessions)
    return steps


@dataclass(frozen=True)
class RampConfig:
    steps: list[int]
    session: SessionConfig
    service_level: ServiceLevel
    cooldown_s: float = 2.0  # lets the server finish and release the previous step's contexts
    seed: int = 0


@dataclass
class RampResult:
    steps: list[StepResult] = field(default_factory=list)

    @property
    def max_passing_sessions(self) -> int | None:
        """Largest N that held; the ramp stops at the first failure, so every earlier step passed too."""
        passing = [step.sessions for step in self.steps if step.passed]
        return max(passing) if passing else None


async def run_ramp(config: RampConfig) -> RampResult:
    result = RampResult()
    for position, sessions in enumerate(config.steps):
        if position:
            await asyncio.sleep(config.cooldown_s)
        step = await run_step(sessions, config)
        result.steps.append(step)
        log.info("N=%d: %s", sessions, "pass" if step.passed else "FAIL: " + "; ".join(step.violations))
        if not step.passed:
            break
    return result


async def run_step(sessions: int, config: RampConfig) -> StepResult:
    runners = [
        SessionRunner(index, config.session, random.Random(f"{config.seed}/{sessions}/{index}"))
        for index in range(sessions)
    ]
    lag = LoopLagProbe()
    probe = asyncio.create_task(lag.run())
    started_at = time.monotonic()
    try:
        await asyncio.gather(*(runner.run() for runner in runners))
    finally:
        probe.cancel()
    return aggregate_step(
        sessions=sessions,
        records=[record for runner in runners for record in runner.records],
        session_errors=[error for runner in runners for error in runner.errors],
        duration_s=time.monotonic() - started_at,
        loop_lag_ms_max=lag.max_lag_s * 1000,
        service_level=config.service_level,
    )


class LoopLagProbe:
    """How late this client's event loop wakes up: if it lags, the client, not the server, limits the test."""

    def __init__(self) -> None:
        self.max_lag_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(LAG_PROBE_INTERVAL_S)
            self.max_lag_s = max(self.max_lag_s, time.monotonic() - before - LAG_PROBE_INTERVAL_S)


def ready_url(stream_url: str) -> str:
    """ws(s)://host/v1/stream -> http(s)://host/ready."""
    parts = urlsplit(stream_url)
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "/ready", "", ""))


async def wait_until_ready(stream_url: str, api_key: str | None, timeout_s: float) -> bool:
    """Poll GET /ready while the server is down or answers 503 (warming up), so warm-up does not count
    against the first step. Any other answer ends the wait: the sessions will then report what is wrong."""
    deadline = time.monotonic() + timeout_s
    url = ready_url(stream_url)
    while True:
        status = await asyncio.to_thread(_http_status, url, api_key)
        if status not in (None, 503):
            return True
        if time.monotonic() >= deadline:
            return False
        log.info("waiting for %s (%s)", url, status or "no answer")
        await asyncio.sleep(1.0)


def _http_status(url: str, api_key: str | None) -> int | None:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with _NO_PROXY.open(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return None
