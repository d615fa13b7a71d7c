"""The layout's rules, read from the source: which package may import which.

Layers, lowest first (docs/explanation/architecture.md says why each is where it is):

    store       the tables, the states, what goes in the JSON columns, options
    protocol    every statement that writes the tables; the retry policy; declared tasks
    contract    django.tasks: the Task subclass and the backend (enqueue, results)
    services    the leader's chores, the schedule tick, the schedules themselves
    runtime     the runjobs process and its children
    interfaces  the admin, the console numbers and moves, the commands, the checks

A module imports only from its own layer or lower ones, nothing imports in a circle, and
imports inside functions are the few listed in ALLOWED_LATE_IMPORTS, each with its reason.
"""

import ast
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "django_jobs"

LAYERS = {
    "store": {
        "compat",
        "conf",
        "exceptions",
        "states",
        "models",
        "codec",
        "migrations",
        # Signals, the integrations' wrappers and the event counts: no Django models, no
        # I/O; everything above may send, wrap or count.
        "signals",
        "instrumentation",
        "tally",
        "redaction",
        # Flow control's definitions: rates, keys, limits (no SQL, no models).
        "limits",
    },
    "protocol": {"protocol", "policy", "registry"},
    "contract": {"task", "backend", "context", "control", "workflows"},
    "services": {"services", "schedules", "webhooks", "tasks"},
    "runtime": {"worker"},
    "interfaces": {
        "console",
        "admin",
        "management",
        "templatetags",
        "checks",
        "apps",
        "metrics",
        "integrations",
        "api",
        "testing",
    },
}
RANK = {name: rank for rank, (_, names) in enumerate(LAYERS.items()) for name in names}

#: Interfaces may use the runtime (``runjobs`` starts it), but these never run jobs.
NEVER_IMPORT_THE_RUNTIME = {
    "admin", "console", "templatetags", "checks", "apps", "api", "metrics", "integrations",
}  # fmt: skip

#: Imports inside a function, and why each is there and not at the top of its module.
ALLOWED_LATE_IMPORTS = {
    # The package imports nothing at first so that INSTALLED_APPS/TASKS stay cheap.
    ("django_jobs", "django_jobs.task"): "lazy public names",
    ("django_jobs.testing", "django_jobs.testing.runner"): "lazy public names",
    ("django_jobs.testing", "django_jobs.testing.assertions"): "lazy public names",
    # pytest loads the plugin before Django is configured.
    ("django_jobs.testing.pytest_plugin", "django_jobs.testing"): "before django.setup()",
    ("django_jobs", "django_jobs.backend"): "lazy public names",
    # Django's idiom: system checks register when the app is ready.
    ("django_jobs.apps", "django_jobs.checks"): "registered in ready()",
    # Optional integrations: imported only when their DJANGO_JOBS key is on.
    ("django_jobs.apps", "django_jobs.conf"): "settings are read in ready()",
    ("django_jobs.apps", "django_jobs.metrics"): "only with DJANGO_JOBS['METRICS']",
    ("django_jobs.apps", "django_jobs.integrations"): "only with TRACING or SENTRY",
    # Optional extras (prometheus-client): imported only when the feature is used.
    (
        "django_jobs.management.commands.runjobs",
        "django_jobs.metrics.exposition",
    ): "the prometheus extra, only with --metrics-port",
    # A workflow's enqueue() needs the backend, which imports task.py, which imports
    # the canvas (for .s()): the canvas reaches the planner only when called.
    ("django_jobs.workflows.canvas", "django_jobs.workflows.plan"): "backend imports the canvas",
    # Django may build a backend while the app registry is still loading.
    ("django_jobs.backend", "django_jobs.models"): "models need the app registry",
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The django_jobs modules an import statement names (a name may be a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "django_jobs"]
    if node.level:
        base = module.split(".")
        if not is_package:
            base = base[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target.split(".")[0] != "django_jobs":
        return []
    names = [target]
    for alias in node.names:
        candidate = f"{target}.{alias.name}"
        if (PACKAGE.parent / (candidate.replace(".", "/") + ".py")).exists() or (
            PACKAGE.parent / candidate.replace(".", "/") / "__init__.py"
        ).exists():
            names.append(candidate)
    return names


class _Imports(ast.NodeVisitor):
    """Each import of a module with where it stands: at the top, in a function, or under
    ``if TYPE_CHECKING`` (for annotations only: never executed)."""

    def __init__(self) -> None:
        self.found: list[tuple[ast.Import | ast.ImportFrom, str]] = []
        self._where = ["top"]

    def _inside(self, node: ast.AST, where: str) -> None:
        self._where.append(where)
        self.generic_visit(node)
        self._where.pop()

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self._inside(node, "function")

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self._inside(node, "function")

    def visit_If(self, node: ast.If) -> None:
        if ast.unparse(node.test) == "TYPE_CHECKING":
            self._inside(node, "typing")
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        self.found.append((node, self._where[-1]))

    visit_ImportFrom = visit_Import


def collect() -> tuple[dict[str, set[str]], set[tuple[str, str]]]:
    """(module -> modules it imports at the top level, {(module, late import)})."""
    top: dict[str, set[str]] = defaultdict(set)
    late: set[tuple[str, str]] = set()
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        top[module]
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for node, where in visitor.found:
            for target in resolve(module, path.name == "__init__.py", node):
                # A module's own package is imported before it: not an edge.
                if module == target or module.startswith(target + ".") or where == "typing":
                    continue
                if where == "function":
                    late.add((module, target))
                else:
                    top[module].add(target)
    return top, late


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_each_module_imports_only_its_own_layer_or_lower_ones():
    top, late = collect()
    problems = []
    for module, targets in top.items():
        for target in targets | {t for m, t in late if m == module}:
            source, dest = layer_of(module), layer_of(target)
            if source is None or dest is None:
                continue
            if RANK[dest] > RANK[source]:
                problems.append(f"{module} ({source}) imports {target} ({dest}), a higher layer")
            if source in NEVER_IMPORT_THE_RUNTIME and dest == "worker":
                problems.append(f"{module} imports the runtime ({target}); it must not run jobs")
    assert not problems, "\n".join(problems)


def test_every_top_level_module_has_a_layer():
    names = {
        p.stem if p.is_file() else p.name
        for p in PACKAGE.iterdir()
        if p.is_dir() or p.suffix == ".py"
    }
    names -= {"__init__", "__pycache__", "static", "templates"}
    assert names <= set(RANK), f"not in a layer: {sorted(names - set(RANK))}"


def test_no_import_circles():
    top, _ = collect()
    # Importing a package runs its __init__; an edge to a submodule implies its parents.
    graph = {m: {t for t in targets if t in top} for m, targets in top.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            pytest.fail("import circle: " + " -> ".join(cycle))


def test_imports_inside_functions_are_the_listed_ones():
    _, late = collect()
    unexplained = sorted(late - set(ALLOWED_LATE_IMPORTS))
    assert not unexplained, (
        "function-level imports of our own modules hide a layering problem or a circle; "
        f"move them to the top or list them with a reason: {unexplained}"
    )


def test_a_spawned_child_can_import_its_module_before_django_is_set_up():
    # multiprocessing's spawn imports the child's module first, django.setup() comes after:
    # nothing it imports may need settings or the app registry (a models import would).
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    done = subprocess.run(
        [sys.executable, "-c", "import django_jobs.worker.child"],
        cwd=PACKAGE.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def test_only_compat_imports_the_tasks_framework():
    # django.tasks on Django 6, the django_tasks backport on 5.2: one module chooses.
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "compat.py" and path.parent == PACKAGE:
            continue
        visitor = _Imports()
        visitor.visit(ast.parse(path.read_text(), str(path)))
        for node, _ in visitor.found:
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
            )
            if any(
                n.split(".")[0] == "django_tasks" or n.startswith("django.tasks") for n in names
            ):
                offenders.append(f"{module_name(path)}: {ast.unparse(node)}")
    assert not offenders, "import the Tasks framework's names from django_jobs.compat:\n" + (
        "\n".join(offenders)
    )
