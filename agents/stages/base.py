"""The shape every agent shares: declared params, one `run` per stage.

Agents register themselves (Olive-style passes): a name, a typed params model and the checkpoint
files they read and write. What the drivers know of an agent without importing it (whether it
reads a checkpoint, the job parts it reads, the metrics it reports first) is its row in
`bakeline.contract.AGENT_TRAITS`, declared there only: an agent without a row does not register.
`bakeline-agent` looks them up here.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from bakeline.agents.checkpoint_io import InputCheckpoint, OutputCheckpoint, open_input
from bakeline.agents.contract import InvalidInput, JobSpec, Outcome, StageParams, kebab
from bakeline.checkpoints.manifest import ArtifactFormat, Manifest, utc_now
from bakeline.contract import AGENT_TRAITS

P = TypeVar("P", bound=StageParams)


@dataclass
class StageContext:
    """Everything a stage may look at, resolved by the CLI."""

    agent: str
    stage: str
    job: JobSpec
    input_dir: Path | None
    output_dir: Path
    started_at: str = ""

    def __post_init__(self) -> None:
        self.started_at = self.started_at or utc_now()

    def open_input(self) -> InputCheckpoint:
        return open_input(self.input_dir)

    def output(self, source: InputCheckpoint | None) -> OutputCheckpoint:
        return OutputCheckpoint(self.output_dir, source)


@dataclass
class StageResult:
    outcome: Outcome
    manifest: Manifest


class Agent(ABC, Generic[P]):
    """One baking agent. Subclasses set the class attributes and implement `run`."""

    name: ClassVar[str]
    params_model: ClassVar[type[StageParams]]
    reads: ClassVar[tuple[str, ...]] = ()  # checkpoint files it needs
    writes: ClassVar[tuple[str, ...]] = ()  # files it adds

    @abstractmethod
    def run(self, ctx: StageContext, params: P) -> StageResult: ...

    def finish(
        self,
        ctx: StageContext,
        out: OutputCheckpoint,
        params: P,
        *,
        artifact: str,
        format: ArtifactFormat,
        metrics: dict[str, float],
        attributes: dict[str, Any] | None = None,
    ) -> Manifest:
        """Seal the output checkpoint with this agent's name, stage, params and start time."""
        return out.finish(
            agent=self.name,
            stage=ctx.stage,
            artifact=artifact,
            format=format,
            params=params.model_dump(by_alias=True),
            metrics=metrics,
            started_at=ctx.started_at,
            attributes=attributes,
        )


REGISTRY: dict[str, type[Agent[StageParams]]] = {}


def register(cls: type[Agent[P]]) -> type[Agent[P]]:
    if cls.name not in AGENT_TRAITS:
        raise TypeError(f"agent {cls.name} has no row in bakeline.contract.AGENT_TRAITS")
    REGISTRY[cls.name] = cls  # type: ignore[assignment]
    return cls


def resolve(name: str) -> type[Agent[StageParams]]:
    """CamelCase name, or its kebab-case alias (`graph-optimizer`)."""
    for registered, cls in REGISTRY.items():
        if name in (registered, kebab(registered)) or name.lower() == registered.lower():
            return cls
    known = ", ".join(sorted(REGISTRY))
    raise InvalidInput(f"unknown agent {name!r}; known: {known}")
