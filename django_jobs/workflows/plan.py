"""Turn a canvas into steps and edges, check every step, and write them all at once.

Planning is pure: each step gets its parents (the outputs of what came before it) and
what it receives from them (one value, or the list of a group's values, in order).
Then every step is checked as ``enqueue()`` checks a job, plus that its arguments bind
to the function with what it will receive in front of them; the first problem raises
with the step's place in the workflow, and nothing is written. Writing is two
statements on the caller's connection, so it commits or rolls back with the caller's
transaction: ids are drawn for every step, then the workflow row and all the steps go
in with one INSERT (``protocol/workflows.py``), whatever the number of steps.
"""

import json
from dataclasses import dataclass, field

from django.db import connections

from .. import policy, registry
from ..backend import JobsBackend, get_backend
from ..codec import binding_problem, encode_arguments, encode_json
from ..compat import InvalidTask, InvalidTaskBackend, Task
from ..exceptions import InvalidWorkflow
from ..models import Receives
from ..protocol import workflows as protocol
from .canvas import Canvas, Chain, Chord, Group, Signature
from .results import WorkflowResult

#: Most parent -> dependent edges one workflow may have. A group after a group makes
#: every member of the second wait for every member of the first (N x M edges), each
#: stored on both rows; past this, put one step between them that gathers the list.
MAX_EDGES = 1_000_000

#: (step indexes whose return values flow on, "value" for one step's or "list" for a
#: group's). A workflow's first steps receive nothing.
Flow = tuple[list[int], str]
_NOTHING: Flow = ([], "")


@dataclass
class Step:
    signature: Signature
    #: Where the step sits, for error messages: "chain step 2 > chord header member 17".
    where: str
    parents: list[int]
    receives: str
    dependents: list[int] = field(default_factory=list)


@dataclass
class Plan:
    steps: list[Step]
    #: The steps whose values make the workflow's return value, and whether it is a list.
    outputs: list[int]
    returns_list: bool
    on_error: Signature | None
    description: str


class _Builder:
    def __init__(self, root: Canvas) -> None:
        self.root = root
        self.steps: list[Step] = []
        self.edges = 0

    def add(self, node: Canvas, flow: Flow, where: str, inside: tuple[int, ...]) -> Flow:
        """Add ``node``'s steps after ``flow``; return what flows out of it."""
        if isinstance(node, Signature):
            return self._step(node, flow, where)
        if id(node) in inside:
            raise InvalidWorkflow(
                f"{where or 'The workflow'} contains itself, which would make it run in a "
                "circle; build each part of a workflow from new chain/group/chord objects."
            )
        inside = (*inside, id(node))
        if node.on_error is not None and node is not self.root:
            raise InvalidWorkflow(
                f"{where} has an on_error task; only the outermost chain, group or chord of "
                "a workflow may have one (it runs when any step fails)."
            )
        if isinstance(node, Chain):
            if not node.members:
                raise InvalidWorkflow(f"{where or 'The workflow'} is an empty chain().")
            for position, member in enumerate(node.members, 1):
                flow = self.add(member, flow, _at(where, f"chain step {position}"), inside)
            return flow
        if isinstance(node, Group):
            if not node.members:
                raise InvalidWorkflow(
                    f"{where or 'The workflow'} is an empty group(): there is nothing to run."
                )
            outputs: list[int] = []
            for position, member in enumerate(node.members, 1):
                ids, _ = self.add(member, flow, _at(where, f"group member {position}"), inside)
                outputs.extend(ids)
            return outputs, Receives.LIST
        if isinstance(node, Chord):
            if not node.header.members:
                raise InvalidWorkflow(
                    f"{_at(where, 'the chord') or 'The chord'} has an empty header group: a "
                    "chord needs at least one step before its body."
                )
            header = self.add(node.header, flow, _at(where, "chord header"), inside)
            return self.add(node.body, header, _at(where, "chord body"), inside)
        raise InvalidWorkflow(f"{where or 'The workflow'} is {node!r}, which is not a step.")

    def _step(self, signature: Signature, flow: Flow, where: str) -> Flow:
        parents, shape = flow
        self.edges += len(parents)
        if self.edges > MAX_EDGES:
            raise InvalidWorkflow(
                f"The workflow has more than {MAX_EDGES:,} dependencies between its steps "
                f"(at {where or 'its first step'}): a group after a group makes each member "
                "of the second wait for each member of the first. Put one step between "
                "them that receives the first group's list and returns it."
            )
        index = len(self.steps)
        receives = "" if signature.immutable or not parents else shape
        self.steps.append(Step(signature, where or "the step", list(parents), receives))
        for parent in parents:
            self.steps[parent].dependents.append(index)
        return [index], Receives.VALUE


def _at(where: str, part: str) -> str:
    return f"{where} > {part}" if where else part


def plan(canvas: Canvas) -> Plan:
    """The steps of ``canvas``, with edges; raise InvalidWorkflow for a shape that cannot run."""
    if not isinstance(canvas, Canvas):
        raise InvalidWorkflow(f"Expected a signature, chain, group or chord, got {canvas!r}.")
    builder = _Builder(canvas)
    outputs, shape = builder.add(canvas, _NOTHING, "", ())
    return Plan(
        steps=builder.steps,
        outputs=outputs,
        returns_list=shape == Receives.LIST,
        on_error=canvas.on_error,
        description=describe(canvas)[:255],
    )


def describe(node: Canvas) -> str:
    """A short text for the admin: ``fetch x 1000 -> merge``."""
    if isinstance(node, Signature):
        return node.task.name
    if isinstance(node, Chain):
        return " -> ".join(describe(m) for m in node.members)
    if isinstance(node, Group):
        names = {describe(m) for m in node.members}
        if len(names) == 1:
            return f"{len(node.members)} x {names.pop()}"
        return (
            "("
            + " | ".join(describe(m) for m in node.members[:5])
            + (" | ..." if len(node.members) > 5 else "")
            + ")"
        )
    if isinstance(node, Chord):
        return f"{describe(node.header)} -> {describe(node.body)}"
    return type(node).__name__


@dataclass(frozen=True, slots=True)
class _Checked:
    task: Task
    args_json: str
    kwargs_json: str
    max_attempts: int


#: What a step is given in front of its own arguments, for error messages.
_FIRST = {
    Receives.VALUE: " It receives the return value of the step before it first.",
    Receives.LIST: " It receives the list of the return values of the steps before it first.",
    "error": " It receives the failed step's id and error first (use .si() to receive nothing).",
}


def _check(
    signature: Signature,
    where: str,
    backend: JobsBackend,
    receives: str,
    validated: set[int] | None = None,
) -> _Checked:
    """The step as it will be written; raise naming ``where`` if it could not run.

    ``validated`` holds the ids of tasks checked already: a group usually repeats one.
    """
    task = signature.task
    label = f"{where} ({task.module_path})"
    if task.backend != backend.alias:
        raise InvalidWorkflow(
            f"{label} uses the backend {task.backend!r}, the workflow {backend.alias!r}: the "
            "steps of a workflow share one backend (its jobs wait on each other in one "
            "database). Use .using(backend=...) on the task, or split the workflow."
        )
    if validated is None or id(task) not in validated:
        try:
            backend.validate_task(task)
        except InvalidTask as exc:
            raise InvalidTask(f"{label}: {exc}") from None
        if validated is not None:
            validated.add(id(task))
    try:
        args_json, kwargs_json = encode_arguments(task, signature.args, signature.kwargs)
    except TypeError as exc:
        raise TypeError(f"{label}: {exc}") from None
    leading = {"": 0, "error": 2}.get(receives, 1)
    problem = binding_problem(task, signature.args, signature.kwargs, leading=leading)
    if problem:
        raise TypeError(f"{label}: {problem}{_FIRST.get(receives, '')}")
    return _Checked(
        task, args_json, kwargs_json, policy.default_max_attempts(task, backend.jobs_options)
    )


def _backend_of(built: Plan) -> JobsBackend:
    alias = built.steps[0].signature.task.backend
    try:
        return get_backend(alias)
    except InvalidTaskBackend as exc:
        raise InvalidTaskBackend(f"Workflows need a jobs backend: {exc}") from None


def _on_error_json(signature: Signature | None, backend: JobsBackend) -> str | None:
    if signature is None:
        return None
    checked = _check(signature, "on_error", backend, "" if signature.immutable else "error")
    task = checked.task
    return encode_json(
        {
            "task_path": task.module_path,
            "queue_name": task.queue_name,
            "priority": task.priority,
            "max_attempts": checked.max_attempts,
            "args": json.loads(checked.args_json),
            "kwargs": json.loads(checked.kwargs_json),
            "immutable": signature.immutable,
            "task_proof": registry.proof(task.module_path),
        },
        "on_error",
    )


def enqueue(canvas: Canvas) -> WorkflowResult:
    """Check and write the workflow ``canvas`` in the caller's transaction."""
    built = plan(canvas)
    backend = _backend_of(built)
    validated: set[int] = set()  # the signatures keep their tasks alive meanwhile
    checked = [
        _check(step.signature, step.where, backend, step.receives, validated)
        for step in built.steps
    ]
    on_error = _on_error_json(built.on_error, backend)
    # A step of a task under limits is claimed within them, as any of its jobs (a unique
    # key would make no sense for one step of a workflow: it is not used).
    flows = [
        backend.new_job(item.task, step.signature.args, step.signature.kwargs)
        if backend.uses_flow(item.task)
        else None
        for step, item in zip(built.steps, checked, strict=True)
    ]
    with connections[backend.database].cursor() as cursor:
        workflow_id, ids = protocol.reserve_ids(cursor, len(built.steps))
        steps = [
            protocol.NewStep(
                id=ids[index],
                task_path=item.task.module_path,
                queue_name=item.task.queue_name,
                priority=item.task.priority,
                backend=backend.alias,
                args_json=item.args_json,
                kwargs_json=item.kwargs_json,
                run_after=item.task.run_after,
                max_attempts=item.max_attempts,
                parents=protocol.array_literal([ids[p] for p in step.parents])
                if step.parents
                else None,
                dependents=protocol.array_literal([ids[d] for d in step.dependents])
                if step.dependents
                else None,
                pending=len(step.parents),
                receives=step.receives,
                callback_url=getattr(item.task, "callback_url", None),
                # Lets a worker that does not know the task import its module.
                task_proof=registry.proof(item.task.module_path),
                concurrency_key=flow and flow.concurrency_key,
                concurrency_limit=flow and flow.concurrency_limit,
                flow=flow and flow.flow,
            )
            for index, (step, item, flow) in enumerate(
                zip(built.steps, checked, flows, strict=True)
            )
        ]
        workflow = protocol.NewWorkflow(
            id=workflow_id,
            backend=backend.alias,
            description=built.description,
            outputs=[ids[i] for i in built.outputs],
            returns_list=built.returns_list,
            on_error_json=on_error,
        )
        written = protocol.enqueue_workflow(cursor, workflow, steps)
    results = [
        backend.enqueued(
            item.task,
            step_id,
            enqueued_at,
            json.loads(item.args_json),
            json.loads(item.kwargs_json),
        )
        for item, (step_id, enqueued_at) in zip(checked, written, strict=True)
    ]
    blocked = sum(1 for step in steps if step.pending)
    return WorkflowResult.enqueued(workflow, results, written[0][1], blocked=blocked)
