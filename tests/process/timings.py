"""What several process tests (and the chaos run) share: short timings and the process tree.

Importable without pytest or a database, so that ``chaos/`` can use it too.
"""

#: Rescue within about 2 s of a worker's death: heartbeat 0.5 s, lost after 2 s.
FAST_RESCUE = {
    "JOBS_HEARTBEAT_INTERVAL": "0.5",
    "JOBS_WORKER_TIMEOUT": "2",
    "JOBS_MAINTENANCE_INTERVAL": "0.5",
    "JOBS_RETRY_BASE_DELAY": "0.1",
}

#: WORKER_TIMEOUT 4 s with a 1 s heartbeat: a cut-off worker's fence comes at 3 s, the
#: rescue at 4 s or later, so a test can tell the two apart.
WORKER_TIMEOUT = 4.0
FENCE_TIMINGS = {
    "JOBS_HEARTBEAT_INTERVAL": "1",
    "JOBS_WORKER_TIMEOUT": str(WORKER_TIMEOUT),
    "JOBS_MAINTENANCE_INTERVAL": "1",
    "JOBS_RETRY_BASE_DELAY": "0.1",
}


def children_of(pid: int) -> list[int]:
    """The pids of ``pid``'s children (Linux), or [] once it is gone."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
