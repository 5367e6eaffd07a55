"""Read the YAML a user hands to `bakeline run`: one BakingJob, optionally its Workflow and Lanes.

Everything is validated with the API models, so `bakeline run` refuses what the API server would
refuse, with the same messages, and names the document and field at fault.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bakeline.api import (
    DEFAULT_WORKFLOW_NAME,
    BakingJob,
    Lane,
    SLOPolicy,
    Workflow,
    default_workflow,
    validate_workflow,
)


class InputError(ValueError):
    """The manifest cannot be run; the message says what to fix."""


@dataclass(frozen=True)
class JobFile:
    path: Path
    job: BakingJob
    workflow: Workflow
    lanes: dict[str, Lane] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # things worth telling the user that are not errors

    @property
    def workflow_name(self) -> str:
        return self.workflow.metadata.name or DEFAULT_WORKFLOW_NAME


_KINDS: dict[str, type[BakingJob] | type[Workflow] | type[Lane] | type[SLOPolicy]] = {
    "BakingJob": BakingJob,
    "Workflow": Workflow,
    "Lane": Lane,
    "SLOPolicy": SLOPolicy,
}


def load_job_file(path: Path) -> JobFile:
    """The job in `path`, with the workflow it names (from the file, or the built-in default)."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except yaml.YAMLError as exc:
        raise InputError(f"{path} is not valid YAML: {exc}") from exc
    jobs: list[BakingJob] = []
    workflows: dict[str, Workflow] = {}
    lanes: dict[str, Lane] = {}
    notes: list[str] = []
    for index, document in enumerate(documents, start=1):
        where = f"{path}, document {index}"
        if not isinstance(document, dict):
            raise InputError(
                f"{where}: expected a Kubernetes object, got {type(document).__name__}"
            )
        kind = document.get("kind")
        model = _KINDS.get(str(kind))
        if model is None:
            notes.append(f"{where}: kind {kind!r} is not used by `bakeline run`; ignored")
            continue
        if kind == "Workflow":
            _check_workflow(document, where)
        obj = _validate(model, document, where)
        name = obj.metadata.name or ""
        if isinstance(obj, BakingJob):
            if not name:
                raise InputError(f"{where}: the BakingJob needs metadata.name")
            jobs.append(obj)
        elif isinstance(obj, Workflow):
            workflows[name] = obj
        elif isinstance(obj, Lane):
            lanes[name] = obj
    if len(jobs) != 1:
        found = ", ".join(j.metadata.name or "?" for j in jobs) or "none"
        raise InputError(f"{path} must hold exactly one BakingJob (found {found})")
    job = jobs[0]
    ref = job.spec.workflow_ref
    if ref is not None and ref in workflows:
        workflow = workflows[ref]
    elif ref is None or ref == DEFAULT_WORKFLOW_NAME:
        workflow = default_workflow()
        unused = sorted(workflows)
        if unused:
            notes.append(
                f"Workflow {', '.join(unused)} in {path} is not used: the job names "
                f"workflowRef {ref or '(none)'}, which is the built-in default"
            )
    else:
        raise InputError(
            f"the job's workflowRef {ref!r} names no Workflow in {path}; add the Workflow "
            f"document to the file, or drop workflowRef to use the built-in default"
        )
    return JobFile(path, job, workflow, lanes, tuple(notes))


def with_output(job_file: JobFile, uri: str) -> JobFile:
    """The job file with its spec.output replaced by `uri` (`bakeline run --output`): a URI
    as spec.output.uri takes it, or a folder, relative to the current directory."""
    if "://" not in uri:
        uri = Path(uri).resolve().as_uri()
    document = job_file.job.to_wire()
    document["spec"]["output"] = {"uri": uri}
    job = _validate(BakingJob, document, f"--output {uri}")
    return dataclasses.replace(job_file, job=job)


def _validate(model: Any, document: dict[str, Any], where: str) -> Any:
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in error['loc']) or '(root)'}: "
            f"{error['msg'].removeprefix('Value error, ')}"
            for error in exc.errors()
        )
        raise InputError(f"{where} ({document.get('kind')}): {problems}") from exc


def _check_workflow(document: dict[str, Any], where: str) -> None:
    """Every problem of a Workflow at once (cycles too), with field paths, as the operator
    reports them in its status."""
    spec = document.get("spec")
    if not isinstance(spec, dict):
        raise InputError(f"{where} (Workflow): spec is missing")
    problems = validate_workflow(spec)
    if problems:
        lines = "\n".join(f"  {p.path}: {p.message}" for p in problems)
        raise InputError(f"{where} (Workflow) is invalid:\n{lines}")
