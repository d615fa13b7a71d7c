"""Printing tables, judging the issue's targets, writing the JSON results file.

A target that is not met is reported, never an error: only the correctness checks
(``Context.check``) decide the exit status.
"""

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def _cell(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def format_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table: the title, a header line, a rule, one line per row."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for n, text in enumerate(row):
            widths[n] = max(widths[n], len(text))
    lines = [f"\n{title}"]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    for row in cells:
        lines.append(
            "  ".join(
                text.rjust(w) if n else text.ljust(w)
                for n, (text, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    print(format_table(title, headers, rows), flush=True)


# ── targets ─────────────────────────────────────────────────────────────────


@dataclass(frozen=True)
class Target:
    name: str
    goal: str
    measured: str
    #: None when the scenario (or its reference) did not run.
    met: bool | None


def _get(results: dict[str, Any], *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def evaluate_targets(results: dict[str, Any]) -> list[Target]:
    """The issue's targets against this run's figures (ratios use this run's references)."""
    s1 = _get(results, "S1", "median_jobs_per_s_draining")
    r2 = _get(results, "R2", "two_children_batch50", "median_jobs_per_s")
    r3 = _get(results, "R3", "median_jobs_per_s")
    startup = _get(results, "S1", "median_startup_s")
    s2_by_hand = _get(results, "S2", "share_of_psycopg")
    open_p50 = _get(results, "S4", "open_loop", "p50_ms")
    open_p99 = _get(results, "S4", "open_loop", "p99_ms")
    s7 = _get(results, "S7", "drain_s")
    s2 = _get(results, "S2", "jobs_per_s")
    r1 = _get(results, "R1", "enqueue_one_per_transaction", "jobs_per_s")
    s3 = _get(results, "S3", "jobs_per_s")
    p50 = _get(results, "S4", "listen", "p50_ms")
    p99 = _get(results, "S4", "listen", "p99_ms")
    poll = _get(results, "S4", "poll")
    s5 = _get(results, "S5", "ratio_to_s1")
    s6 = _get(results, "S6", "no_backlog_growth")
    rss = _get(results, "RSS", "growth_pct")
    w1_enqueue = _get(results, "W1", "enqueue_s")
    w1_share = _ratio(_get(results, "W1", "members_per_s_draining"), s1)
    w1_wait = _get(results, "W1", "callback_wait_ms")
    declaring = _get(results, "S1", "declaring_limits", "median_jobs_per_s_draining")
    f1 = _get(results, "F1", "accuracy")
    f1_default = _get(results, "F1", "accuracy_default_poll")
    f1_peak = _get(results, "F1", "max_starts_in_any_second")
    f2 = _get(results, "F2", "ratio_to_s1")

    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.0%}"

    def rate(x: float | None) -> str:
        return "n/a" if x is None else f"{x:,.0f}/s"

    def ms(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.2f} ms"

    def judge(value: Any, test: Callable[[Any], bool]) -> bool | None:
        return None if value is None else bool(test(value))

    s1_share = _ratio(s1, r2)
    s1_lean = _ratio(s1, r3)
    s2_share = _ratio(s2, r1)
    poll_text = "n/a" if poll is None else f"max {poll['max_ms']:.0f} of {poll['bound_ms']:.0f} ms"
    s6_text = _get(results, "S6", "verdict") or "n/a"
    rss_text = "n/a" if rss is None else f"{rss:+.1f}%"
    return [
        Target("S1 drain rate", ">= 10,000 jobs/s", rate(s1), judge(s1, lambda v: v >= 10_000)),
        Target(
            "S1 vs R3 (the lean queue)", ">= 50%", pct(s1_lean), judge(s1_lean, lambda v: v >= 0.5)
        ),
        Target(
            "S1 vs R2 (2 children, batch 50)",
            ">= 35%",
            pct(s1_share),
            judge(s1_share, lambda v: v >= 0.35),
        ),
        Target(
            "S1 start-up (runjobs start to first job)",
            "< 1 s",
            "n/a" if startup is None else f"{startup:.2f} s",
            judge(startup, lambda v: v < 1),
        ),
        Target(
            "S2 vs the same enqueue by hand (psycopg)",
            ">= 80%",
            pct(s2_by_hand),
            judge(s2_by_hand, lambda v: v >= 0.80),
        ),
        Target(
            "S2 vs R1 one-per-transaction enqueue",
            ">= 60%",
            pct(s2_share),
            judge(s2_share, lambda v: v >= 0.60),
        ),
        Target("S3 bulk enqueue", ">= 100,000 jobs/s", rate(s3), judge(s3, lambda v: v >= 1e5)),
        Target("S4 latency p50 (LISTEN)", "< 5 ms", ms(p50), judge(p50, lambda v: v < 5)),
        Target("S4 latency p99 (LISTEN)", "< 25 ms", ms(p99), judge(p99, lambda v: v < 25)),
        Target(
            "S4 open loop p50 (50 jobs/s)",
            "<= 2 ms",
            ms(open_p50),
            judge(open_p50, lambda v: v <= 2),
        ),
        Target(
            "S4 open loop p99 (50 jobs/s)",
            "<= 4 ms",
            ms(open_p99),
            judge(open_p99, lambda v: v <= 4),
        ),
        Target(
            "S7 asyncio: 2,000 x sleep(0.1), one child",
            "< 3 s",
            "n/a" if s7 is None else f"{s7:.2f} s",
            judge(s7, lambda v: v < 3),
        ),
        Target(
            "S4 polling latency (--no-listen)",
            "<= poll interval",
            poll_text,
            judge(poll, lambda v: v["within_interval"]),
        ),
        Target("S5 with history vs S1", "within 10%", pct(s5), judge(s5, lambda v: v >= 0.9)),
        Target("S6 held transaction", "no backlog growth", s6_text, judge(s6, bool)),
        Target(
            "W1 enqueue of a 10,000-member chord",
            "< 1 s, one transaction",
            "n/a" if w1_enqueue is None else f"{w1_enqueue:.2f} s",
            judge(w1_enqueue, lambda v: v < 1.0),
        ),
        Target(
            "W1 members' drain vs S1",
            "within 20%",
            pct(w1_share),
            judge(w1_share, lambda v: v >= 0.8),
        ),
        Target(
            "W1 last member -> callback start",
            "< 50 ms",
            ms(w1_wait),
            judge(w1_wait, lambda v: v < 50),
        ),
        Target(
            "RSS after N vs after 10,000",
            "flat within 10%",
            rss_text,
            judge(rss, lambda v: v <= 10),
        ),
        Target(
            "S1 in a process declaring limits vs S1",
            ">= 95%",
            pct(_ratio(declaring, s1)),
            judge(_ratio(declaring, s1), lambda v: v >= 0.95),
        ),
        Target(
            "F1 rate achieved (100/s, --poll-interval 0.2)",
            ">= 90%, none above",
            "n/a" if f1 is None else f"{f1:.0%} ({pct(f1_default)} at 1 s), peak {f1_peak}/s",
            judge(f1, lambda v: v >= 0.9 and f1_peak <= 100),
        ),
        Target("F2 drain under keys vs S1", "reported", pct(f2), None if f2 is None else True),
    ]


def print_summary(targets: Sequence[Target]) -> None:
    verdict = {True: "met", False: "NOT MET", None: "not run"}
    print_table(
        "Summary: targets (a target not met is reported, it does not fail the run)",
        ["target", "goal", "measured", "result"],
        [[t.name, t.goal, t.measured, verdict[t.met]] for t in targets],
    )


# ── results file ────────────────────────────────────────────────────────────


def write_results(payload: dict[str, Any], results_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<timestamp>.json`` and ``latest.json`` under ``results_dir``; return the first."""
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    path = results_dir / f"{stamp}.json"
    text = json.dumps(payload, indent=2, default=str, sort_keys=False)
    path.write_text(text + "\n")
    (results_dir / "latest.json").write_text(text + "\n")
    return path
