"""Write a ramp's results: results.json (everything), summary.md (table and verdict), ttfa.png (plot)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from load.metrics import TTFA_FIELDS, ServiceLevel, Spread, StepResult
from load.ramp import RampResult

log = logging.getLogger("load")


def verdict(result: RampResult, service_level: ServiceLevel) -> str:
    rule = service_level.describe()
    best = result.max_passing_sessions
    failed = next((step for step in result.steps if not step.passed), None)
    if best is None:
        reasons = "; ".join(failed.violations) if failed else "no step ran"
        return f"No step met the service level ({rule}): {reasons}."
    if failed is None:
        return (f"Largest N meeting the service level ({rule}): **{best}** — every step passed, so the limit "
                f"lies above the largest N tried.")
    return (f"Largest N meeting the service level ({rule}): **{best}**. "
            f"N={failed.sessions} failed: {'; '.join(failed.violations)}.")


def write_reports(out_dir: Path, result: RampResult, service_level: ServiceLevel, command: str,
                  config: dict[str, Any]) -> list[Path]:
    """Write every report; returns the paths written (the plot is skipped when matplotlib is missing)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = verdict(result, service_level)
    written = [
        _write_json(out_dir / "results.json", result, service_level, command, config, summary),
        _write_markdown(out_dir / "summary.md", result, command, summary),
    ]
    plot = write_plot(out_dir / "ttfa.png", result.steps, service_level)
    if plot is not None:
        written.append(plot)
    return written


def _write_json(path: Path, result: RampResult, service_level: ServiceLevel, command: str,
                config: dict[str, Any], summary: str) -> Path:
    document = {
        "command": command,
        "config": config,
        "service_level": {"ttfa_p95_ms": service_level.ttfa_p95_ms, "ttfa_from": service_level.ttfa_from,
                          "underruns": 0, "errors": 0},
        "max_passing_sessions": result.max_passing_sessions,
        "verdict": summary.replace("**", ""),
        "steps": [step.to_dict() for step in result.steps],
    }
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")
    return path


_COLUMNS = ("N", "replies (ok)", "TTFA p50", "TTFA p95", "TTFA max", "from chunk p95", "from release p50",
            "from release p95", "server: from release p95", "underruns (ms)", "RTF p50 / max", "audio s", "errors",
            "loop lag", "result")

_NOTES = (
    "Times in ms, measured on the client, each ending at the reply's first audio byte. TTFA starts at the "
    "reply's first text; *from chunk* at the text message that completed the first chunk (matched to the text "
    "of the server's first `chunk_started`); *from release* at that `chunk_started` itself (queueing and "
    "synthesis only). *Server* columns are the server's own stats from `done`. Underruns: a listener that "
    "starts playing at the first audio byte runs dry (count, total stall). RTF: first text → last audio byte "
    "÷ audio seconds. Loop lag: the load generator's own event-loop delay; if it is high, the client is the "
    "bottleneck, not the server."
)


def _write_markdown(path: Path, result: RampResult, command: str, summary: str) -> Path:
    lines = [
        "# Load test",
        "",
        "| " + " | ".join(_COLUMNS) + " |",
        "|" + "---|" * len(_COLUMNS),
        *(_table_row(step) for step in result.steps),
        "",
        summary,
        "",
        _NOTES,
        "",
        "Command:",
        "",
        "```",
        command,
        "```",
        "",
    ]
    path.write_text("\n".join(lines))
    return path


def _table_row(step: StepResult) -> str:
    cells = [
        str(step.sessions),
        f"{step.replies} ({step.completed_replies})",
        _fmt(_field(step.ttfa_ms, "p50")),
        _fmt(_field(step.ttfa_ms, "p95")),
        _fmt(_field(step.ttfa_ms, "max")),
        _fmt(_field(step.ttfa_from_chunk_ms, "p95")),
        _fmt(_field(step.ttfa_from_release_ms, "p50")),
        _fmt(_field(step.ttfa_from_release_ms, "p95")),
        _fmt(_field(step.server.get("ttfa_from_release_ms"), "p95")),
        f"{step.underruns} ({step.underrun_ms:.0f})",
        f"{_fmt(_field(step.rtf, 'p50'), 2)} / {_fmt(_field(step.rtf, 'max'), 2)}",
        f"{step.audio_s:.1f}",
        str(step.errors),
        f"{step.client_loop_lag_ms_max:.0f}",
        "pass" if step.passed else "**FAIL**",
    ]
    return "| " + " | ".join(cells) + " |"


def _field(spread: Spread | None, name: str) -> float | None:
    return None if spread is None else getattr(spread, name)


def _fmt(value: float | None, digits: int = 0) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def write_plot(path: Path, steps: list[StepResult], service_level: ServiceLevel) -> Path | None:
    """p50/p95 TTFA and underruns against N; skipped with a warning when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        log.warning("matplotlib is not installed; skipping %s", path.name)
        return None
    sessions = [step.sessions for step in steps]
    figure, ttfa_axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        underrun_axis = ttfa_axis.twinx()
        underrun_axis.bar(sessions, [step.underruns for step in steps], width=[n * 0.25 for n in sessions],
                          color="tab:red", alpha=0.3, label="underruns")
        underrun_axis.set_ylabel("underruns")
        underrun_axis.set_ylim(bottom=0, top=max([1] + [step.underruns for step in steps]) * 1.2)
        underrun_axis.yaxis.set_major_locator(MaxNLocator(integer=True))
        ttfa_axis.set_zorder(underrun_axis.get_zorder() + 1)
        ttfa_axis.patch.set_visible(False)
        bases = ["text"] if service_level.ttfa_from == "text" else ["text", service_level.ttfa_from]
        for color, basis in zip(("tab:blue", "tab:orange"), bases):
            for name, marker in (("p50", "o"), ("p95", "s")):
                values = [_field(getattr(step, TTFA_FIELDS[basis]), name) for step in steps]
                ttfa_axis.plot(sessions, values, marker=marker, color=color, linestyle="-" if name == "p95" else ":",
                               label=f"{name} from {basis}")
        ttfa_axis.axhline(service_level.ttfa_p95_ms, color="gray", linestyle="--",
                          label=f"SLO (p95 from {service_level.ttfa_from})")
        for step in steps:
            if not step.passed:
                ttfa_axis.axvline(step.sessions, color="tab:red", linestyle=":", linewidth=1)
        ttfa_axis.set_xscale("log", base=2)
        ttfa_axis.set_xticks(sessions, [str(n) for n in sessions])
        ttfa_axis.set_xlabel("concurrent sessions (N)")
        ttfa_axis.set_ylabel("time to first audio (ms)")
        ttfa_axis.set_ylim(bottom=0)
        handles, labels = ttfa_axis.get_legend_handles_labels()
        more_handles, more_labels = underrun_axis.get_legend_handles_labels()
        ttfa_axis.legend(handles + more_handles, labels + more_labels, loc="upper left", fontsize="small")
        ttfa_axis.set_title("Time to first audio and underruns vs concurrency")
        figure.tight_layout()
        figure.savefig(path)
    finally:
        plt.close(figure)
    return path
