"""The chaos run's verdict: read the job rows and the tasks' journal, print the tally.

Executions are counted from the journal (what really ran), never from the job rows (what
the queue believes). One execution is the run of one job in one process for one attempt
number: a released job runs again under the same number in another process.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from datetime import datetime
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

from django.db.models import Count

from django_jobs.models import Job, Schedule
from django_jobs.states import FINISHED
from django_jobs.workflows.results import get_workflow
from testproject.example.models import Execution

from .traffic import SCHEDULES

if TYPE_CHECKING:
    from .run import Run, Worker

KILLED = {
    "django_jobs.exceptions.WorkerLost",
    "django_jobs.exceptions.WorkerProcessDied",
    "django_jobs.exceptions.TimeLimitExceeded",
}
BY_DESIGN = {"retried", "snoozed", "times_out"}


def _executions(journal: Path) -> dict[int, list[dict[str, Any]]]:
    runs: dict[tuple[int, int, int], dict[str, Any]] = {}
    if journal.exists():
        for line in journal.read_text().splitlines():
            r = json.loads(line)
            key = (r["job"], r["attempt"], r["pid"])
            run = runs.setdefault(
                key,
                {"attempt": r["attempt"], "pid": r["pid"], "host": r["host"], "kind": r["kind"],
                 "first": r["t"], "last": r["t"], "ended": False},
            )  # fmt: skip
            run["first"], run["last"] = min(run["first"], r["t"]), max(run["last"], r["t"])
            run["ended"] |= r["event"] == "end"
    by_job: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for (job_id, _, _), run in runs.items():
        by_job[job_id].append(run)
    for runs_of_job in by_job.values():
        runs_of_job.sort(key=lambda r: r["first"])
    return by_job


def _most_at_once(intervals: list[tuple[float, float]]) -> int:
    edges = sorted([(a, 1) for a, _ in intervals] + [(b, -1) for _, b in intervals])
    now = most = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def report(run: Run, journal: Path, workers: list[Worker], drained: bool, elapsed: float) -> int:
    rows = {
        r["id"]: r
        for r in Job.objects.values(
            "id", "task_path", "state", "attempts", "errors", "args", "return_value"
        )
    }
    execs = _executions(journal)
    kind_of = {i: r["task_path"].rpartition(".")[2] for i, r in rows.items()}
    checks: list[tuple[str, bool, str]] = []

    def check(name: str, problems: list[str], detail: str = "") -> None:
        shown = "; ".join(problems[:5]) + (
            f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        )
        checks.append((name, not problems, shown or detail))

    unfinished = [f"{i} {r['state']}" for i, r in rows.items() if r["state"] not in FINISHED]
    check("every job in a final state", unfinished, f"{len(rows)} jobs")
    lost = [str(i) for i in run.enqueued if i not in rows]
    check("no enqueued job lost", lost, f"{len(run.enqueued)} enqueued, all found")

    wrong: list[str] = []
    for i, r in rows.items():
        kind = kind_of[i]
        classes = [e["exception_class_path"] for e in r["errors"]]
        if kind == "times_out":
            ok = r["state"] == "FAILED" and set(classes) <= KILLED
        else:
            ok = r["state"] == "SUCCESSFUL"
        if not ok:
            wrong.append(f"{i} {kind} {r['state']} {classes[-1:] or ''}")
    check("outcomes as designed (times_out FAILED by its limit, the rest SUCCESSFUL)", wrong)

    counts = dict(
        Execution.objects.filter(key__startswith="chaos-atomic-")
        .values_list("key")
        .annotate(n=Count("id"))
    )
    atomic_wrong = []
    for i, r in rows.items():
        if kind_of[i] == "atomic":
            want = 1 if r["state"] == "SUCCESSFUL" else 0
            if counts.get(f"chaos-atomic-{i}", 0) != want:
                atomic_wrong.append(f"{i}: {counts.get(f'chaos-atomic-{i}', 0)} rows, want {want}")
    check("atomic jobs: the writes of exactly one attempt", atomic_wrong)

    dup = Counter()
    unexplained = []
    for i, runs in execs.items():
        if len(runs) <= 1 or i not in rows:
            continue
        interrupted = sum(1 for x in runs if not x["ended"] or x["pid"] in run.stopped_pids)
        # Each run beyond the first needs a cause: a spent attempt (an error, a retry, a
        # snooze, a rescue: the attempt count went up) or a run that was cut short.
        if len(runs) - 1 <= (rows[i]["attempts"] - 1) + interrupted:
            dup["by design" if kind_of[i] in BY_DESIGN else "after a kill or a stop"] += (
                len(runs) - 1
            )
        else:
            unexplained.append(
                f"{i} {kind_of[i]}: {len(runs)} runs, attempts {rows[i]['attempts']}"
            )
            dup["unexplained"] += len(runs) - 1
    check("every repeated execution explained by a killed or spent attempt", unexplained)

    t0 = min((x["first"] for runs in execs.values() for x in runs), default=0.0)
    overlaps = []
    for i, runs in execs.items():
        for a, b in pairwise(runs):
            if a["last"] >= b["first"]:
                overlaps.append(
                    f"{i}: attempt {a['attempt']} on {a['host']} until {a['last'] - t0:.2f} s, "
                    f"attempt {b['attempt']} on {b['host']} from {b['first'] - t0:.2f} s"
                )
    check("no two executions of one job overlap in time (s from the first start)", overlaps)

    schedule_problems = list(run.schedule_conflicts)
    fired_jobs = {j for j in run.schedule_runs.values() if j is not None}
    fires = 0
    for schedule in Schedule.objects.filter(name__in=SCHEDULES):
        times = sorted(
            datetime.fromisoformat(t) for (sid, t) in run.schedule_runs if sid == schedule.pk
        )
        fires += len(times)
        path = SCHEDULES[schedule.name]["task_path"]
        jobs = {i for i, r in rows.items() if r["task_path"] == path}
        if jobs - fired_jobs:
            schedule_problems.append(
                f"{schedule.name}: jobs {sorted(jobs - fired_jobs)[:5]} from no run"
            )
        if len(jobs) != len([t for (sid, t) in run.schedule_runs if sid == schedule.pk]):
            schedule_problems.append(
                f"{schedule.name}: {len(jobs)} jobs for {len(times)} fire times"
            )
        if "interval_seconds" in SCHEDULES[schedule.name]:
            gaps = [
                f"{a:%H:%M:%S}->{b:%H:%M:%S}"
                for a, b in pairwise(times)
                if (b - a).total_seconds() != 1
            ]
            if gaps:
                schedule_problems.append(f"{schedule.name}: gaps {gaps[:5]}")
    check("each schedule fire time enqueued once (and every second fired)", schedule_problems,
          f"{fires} fire times")  # fmt: skip

    wf_problems = []
    for shape, wf_id, expected in run.workflows:
        result = get_workflow(wf_id)
        if result.status != "SUCCESSFUL" or result.return_value != expected:
            wf_problems.append(
                f"{shape} {wf_id}: {result.status} {result.return_value!r} != {expected!r}"
            )
    check("workflows: every chain, group and chord completed with the right value", wf_problems,
          f"{len(run.workflows)} workflows")  # fmt: skip

    by_key: dict[str, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    capped = []
    for i, runs in execs.items():
        for x in runs:
            if x["kind"] == "unique_key" and i in rows:
                by_key[rows[i]["args"][0]].append((i, x))
            if x["kind"] == "capped":
                capped.append((x["first"], x["last"]))
    unique_problems = []
    for key, runs in by_key.items():
        runs.sort(key=lambda p: p[1]["first"])
        for (ia, a), (ib, b) in pairwise(runs):
            if ia != ib and a["last"] >= b["first"]:
                unique_problems.append(f"{key}: jobs {ia} and {ib} ran at once")
    check("unique jobs: one job per key at a time", unique_problems)
    most = _most_at_once(capped)
    check("concurrency limit 2 never exceeded", [f"{most} at once"] if most > 2 else [],
          f"at most {most} at once")  # fmt: skip

    # ── the tally ──
    print("\n══ chaos tally ══════════════════════════════════════════════")
    print(
        "events injected: "
        + (", ".join(f"{k} {n}" for k, n in sorted(run.events.items())) or "none")
    )
    for kind, why in run.skipped.items():
        print(f"  skipped {kind}: {why}")
    print("workers: " + ", ".join(f"{w.name} started {w.starts}x" for w in workers))
    print(f"enqueue rounds refused while the database was away: {run.enqueue_errors}")
    by_state: dict[str, Counter] = defaultdict(Counter)
    for i, r in rows.items():
        by_state[kind_of[i]][r["state"]] += 1
    print(f"jobs by kind and final state ({len(rows)} in all):")
    for kind in sorted(by_state):
        print(f"  {kind:14} " + ", ".join(f"{s} {n}" for s, n in sorted(by_state[kind].items())))
    executions = sum(len(v) for v in execs.values())
    print(f"executions journaled: {executions}; repeated: "
          + (", ".join(f"{k} {n}" for k, n in sorted(dup.items())) or "none"))  # fmt: skip
    errors = Counter(
        e["exception_class_path"].rpartition(".")[2] for r in rows.values() for e in r["errors"]
    )
    print("errors recorded: " + (", ".join(f"{k} {n}" for k, n in errors.most_common()) or "none"))
    print(f"drain finished: {'yes' if drained else 'NO'}")
    failed = 0
    for name, ok, detail in checks:
        failed += not ok
        print(f"  {'PASS' if ok else 'FAIL'}  {name}" + (f": {detail}" if detail else ""))
    print(f"checks: {len(checks) - failed} passed, {failed} failed; {elapsed:.0f} s so far")
    return 1 if failed or not drained else 0
