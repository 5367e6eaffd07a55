"""Building blocks shared by the four custom resources.

Everything here is pure pydantic: the models are the single source of truth for the wire format,
the generated CRDs (`bakeline.api.crdgen`) and every layer that reads or writes the objects.
Python attributes are snake_case; the wire format is camelCase (`model_dump(by_alias=True)`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, ClassVar, Final, Literal, Self

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "bakeline.io"
VERSION = "v1alpha1"
API_VERSION: Final = "bakeline.io/v1alpha1"  # f"{GROUP}/{VERSION}", literal for typing
CATEGORY = "bakeline"

# RFC 1123 label: names of lanes, stages and objectives end up in pod names and label values.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# A label value (also a node selector's): empty, or up to 63 of [-_.A-Za-z0-9], alphanumeric at
# both ends. A label key is an optional DNS subdomain prefix and '/', then such a name.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
LABEL_KEY = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
# RFC 1123 subdomain: names of ConfigMaps, PVCs and other Kubernetes objects.
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
# The pattern kube-openapi gives resource.Quantity, without its minus sign: every quantity
# Bakeline takes (CPU, memory, volume sizes) is an amount, and a negative one would only be
# refused later, by the API server, when the operator creates the pod or claim.
QUANTITY_PATTERN = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_SUFFIXES = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{s: Decimal(10) ** e for s, e in (("n", -9), ("u", -6), ("m", -3), ("k", 3), ("M", 6))},
    **{s: Decimal(10) ** e for s, e in (("G", 9), ("T", 12), ("P", 15), ("E", 18))},
}


def quantity_value(quantity: int | str) -> Decimal:
    """The amount a resource.Quantity stands for (e.g. 500m -> 0.5, 1Gi -> 1073741824)."""
    text = str(quantity).lstrip("+")
    for suffix in sorted(_QUANTITY_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * _QUANTITY_SUFFIXES[suffix]
    return Decimal(text)  # plain or with an exponent (1e3)


# A positive span with one unit: 30s, 5m, 6h, 30d. Kubernetes' CEL cannot parse days, so the CRD
# checks windows with the same pattern and compares them through `window_cel`.
WINDOW_PATTERN = r"^[1-9][0-9]{0,4}[smhd]$"


def cel_string(text: str) -> str:
    """`text` as a CEL string literal."""
    return json.dumps(text)


def cel_quoted(expression: str) -> str:
    """CEL: the string `expression` in double quotes, as a message shows a value."""
    return f"'\"' + {expression} + '\"'"


def shown_message(expression: str, message: str) -> str:
    """A messageExpression: the offending value (CEL `expression`, a string), then `message`."""
    return f"{cel_quoted(expression)} + {cel_string(' ' + message)}"


def named_schema(
    pattern: str, max_length: int, message: str, min_length: int = 1
) -> WithJsonSchema:
    """A name's schema: a CEL rule that says in words what the pattern means and shows the
    value (the API server's own message for a pattern is the regular expression, and a
    pattern beside the rule would report one mistake twice)."""
    return WithJsonSchema(
        {
            "type": "string",
            "minLength": min_length,
            "maxLength": max_length,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.matches(r'{pattern}')",
                    "message": message,
                    "messageExpression": shown_message("self", message),
                }
            ],
        }
    )


LABEL_NAME_MESSAGE = (
    "must be a name of at most 63 lowercase letters, digits and '-', starting and ending with a "
    "letter or digit (a name in the same namespace: no '/', no namespace)"
)
OBJECT_NAME_MESSAGE = (
    "must be a Kubernetes object name of at most 253 lowercase letters, digits, '-' and '.', "
    "starting and ending with a letter or digit (in the same namespace: no '/')"
)
LabelName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL),
    named_schema(DNS_LABEL, 63, LABEL_NAME_MESSAGE),
]
ObjectName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN),
    named_schema(DNS_SUBDOMAIN, 253, OBJECT_NAME_MESSAGE),
]
# Label keys and values (metav1 validation): a key is an optional DNS-subdomain prefix and '/',
# then a name of at most 63 characters; a value is empty or such a name.
_LABEL_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
LABEL_KEY_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?" + _LABEL_NAME + "$"
)
LABEL_VALUE_PATTERN = r"^(" + _LABEL_NAME + ")?$"
LABEL_KEY_MESSAGE = (
    "is not a label key: an optional DNS prefix and '/', then at most 63 letters, digits, "
    "'-', '_' and '.', starting and ending with a letter or digit"
)
LABEL_VALUE_MESSAGE = (
    "is not a label value: empty, or at most 63 letters, digits, '-', '_' and '.', starting "
    "and ending with a letter or digit (no ',', '=' or spaces)"
)
LabelKey = Annotated[
    str,
    StringConstraints(min_length=1, max_length=317, pattern=LABEL_KEY_PATTERN),
    named_schema(LABEL_KEY_PATTERN, 317, LABEL_KEY_MESSAGE),
]
LabelValue = Annotated[
    str,
    StringConstraints(max_length=63, pattern=LABEL_VALUE_PATTERN),
    named_schema(LABEL_VALUE_PATTERN, 63, LABEL_VALUE_MESSAGE, min_length=0),
]
QUANTITY_MESSAGE = "must be a non-negative amount such as 500m, 2 or 4Gi"
Quantity = Annotated[
    Annotated[int, Field(ge=0)]
    | Annotated[str, StringConstraints(max_length=64, pattern=QUANTITY_PATTERN)],
    # resource.Quantity's own schema: int-or-string is the one anyOf a structural schema allows.
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "minimum": 0,  # for the integer form; the pattern has no sign for the string form
            "maxLength": 64,
            "x-kubernetes-int-or-string": True,
            # The rule, not a pattern beside it: one mistake, one message, with the value.
            "x-kubernetes-validations": [
                {
                    "rule": f"type(self) == int || string(self).matches(r'{QUANTITY_PATTERN}')",
                    "message": QUANTITY_MESSAGE,
                    "messageExpression": shown_message("string(self)", QUANTITY_MESSAGE),
                }
            ],
        }
    ),
]


def window_cel(path: str) -> str:
    """CEL: the seconds in a `WINDOW_PATTERN` string at `path` (e.g. `self.longWindow`)."""
    number = f"int({path}.substring(0, size({path}) - 1))"
    unit = (
        f"({path}.endsWith('d') ? 86400 : {path}.endsWith('h') ? 3600 : "
        f"{path}.endsWith('m') ? 60 : 1)"
    )
    return f"{number} * {unit}"


def window_seconds(window: str) -> int:
    """The seconds in a window such as `30d`, `6h`, `5m` or `30s`."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(window) < 2 or window[-1] not in units or not window[:-1].isdigit():
        raise ValueError(f"not a window: {window!r} (expected e.g. 30d, 6h, 5m, 30s)")
    return int(window[:-1]) * units[window[-1]]


WINDOW_MESSAGE = "must be a positive whole number with one unit s, m, h or d, such as 30d, 6h or 5m"
Window = Annotated[
    str,
    StringConstraints(pattern=WINDOW_PATTERN, max_length=16),
    WithJsonSchema(
        {
            "type": "string",
            "maxLength": 16,
            "x-kubernetes-validations": [
                {
                    "rule": f"self.matches('{WINDOW_PATTERN}')",
                    "message": WINDOW_MESSAGE,
                    "messageExpression": shown_message("self", WINDOW_MESSAGE),
                }
            ],
        }
    ),
]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, checked twice from one definition: by the API server as CEL
    (`x-kubernetes-validations` in the CRD) and by pydantic in Python, so `bakeline run` and the
    API server reject the same objects with the same message.

    A rule that only one side checks says why: `check=None` is a limit of the cluster (the
    operator cannot do what `bakeline run` does, e.g. read a file:// model), `cel=None` a check
    the API server needs not repeat because a cluster-only rule refuses the whole field."""

    cel: str | None
    message: str
    check: Callable[[Any], bool] | None
    # Which field the API server names in the error, relative to the object the rule is on.
    field_path: str | None = None
    reason: Literal["FieldValueInvalid", "FieldValueRequired"] | None = None
    # CEL (a string) of the offending value, which the API server's message then shows first.
    shows: str | None = None

    def entry(self) -> dict[str, str]:
        assert self.cel is not None
        entry = {"rule": self.cel, "message": self.message}
        if self.shows is not None:
            entry["messageExpression"] = (
                f"{cel_quoted(self.shows)} + {cel_string(': ' + self.message)}"
            )
        if self.field_path is not None:
            entry["fieldPath"] = self.field_path
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


def _rules_schema(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules: tuple[Rule, ...] = cls.__dict__.get("cel_rules", ())
    if rules:
        entries = [r.entry() for r in rules if r.cel is not None]
        if entries:
            schema.setdefault("x-kubernetes-validations", []).extend(entries)


class WireModel(BaseModel):
    """Base of every model: camelCase on the wire, snake_case in Python, typos rejected."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        json_schema_extra=_rules_schema,
    )
    # Rules of this class only (not inherited): see `Rule`.
    cel_rules: ClassVar[tuple[Rule, ...]] = ()

    @model_validator(mode="after")
    def _check_rules(self, info: ValidationInfo) -> Self:
        # validate_workflow reports the graph rules itself, with a path per offending stage.
        skip = (info.context or {}).get("skip_rules", ())
        rules = type(self).__dict__.get("cel_rules", ())
        broken = [
            rule.message
            for rule in rules
            if rule not in skip and rule.check is not None and not rule.check(self)
        ]
        broken += self._list_duplicates()
        if broken:
            raise ValueError("; ".join(broken))
        return self

    def _list_duplicates(self) -> list[str]:
        """What the API server enforces for x-kubernetes-list-type set and map: no repeats."""
        problems = []
        for name, field_info in type(self).model_fields.items():
            extra = field_info.json_schema_extra
            items = getattr(self, name)
            if not isinstance(extra, dict) or not isinstance(items, list):
                continue
            list_type = extra.get("x-kubernetes-list-type")
            keys = extra.get("x-kubernetes-list-map-keys")
            if list_type == "set":
                seen = [repr(item) for item in items]
            elif list_type == "map" and isinstance(keys, list):
                seen = [repr(tuple(getattr(item, str(k)) for k in keys)) for item in items]
            else:
                continue
            repeats = sorted({value for value in seen if seen.count(value) > 1})
            if repeats:
                problems.append(f"{field_info.alias or name} repeats {', '.join(repeats)}")
        return problems

    def to_wire(self, *, exclude_unset: bool = False) -> dict[str, Any]:
        """The JSON-compatible wire form: camelCase keys, no nulls."""
        return self.model_dump(
            mode="json", by_alias=True, exclude_none=True, exclude_unset=exclude_unset
        )


class StatusModel(WireModel):
    """Base of status models: a newer operator may write fields an older reader does not know,
    and a reader must not fail on them during a rolling upgrade."""

    model_config = ConfigDict(extra="ignore")


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(StatusModel):
    """One aspect of the object's state, shaped like metav1.Condition."""

    type: str = Field(
        description="What this condition is about, in CamelCase, e.g. Ready or Admitted.",
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
        r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus = Field(
        description="Whether the condition holds: True, False or Unknown."
    )
    reason: str = Field(
        description="Why, as one CamelCase word a program can match on, e.g. LaneFull.",
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
    )
    message: str = Field(
        default="", description="Why, in words for a person; may be empty.", max_length=32768
    )
    last_transition_time: AwareDatetime = Field(
        description="When status last changed (not when the condition was last checked)."
    )
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the condition was computed from; older than the "
        "object's generation means the condition may be stale.",
    )


def conditions_field(kinds: str) -> Any:
    """The `conditions` field of a status: a list-map keyed by `type`, as Kubernetes expects."""
    return Field(
        default_factory=list,
        max_length=16,
        description=f"Current state as conditions ({kinds}), one per type.",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["type"],
        },
    )


def observed_generation_field() -> Any:
    return Field(
        default=None,
        ge=0,
        description="The metadata.generation this status reflects; lower than the object's "
        "generation means the operator has not yet acted on the latest spec.",
    )


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta Bakeline reads; everything else is kept as it came."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = Field(
        default=None, description="The object's name, unique in its namespace."
    )
    namespace: str | None = Field(default=None, description="The namespace the object lives in.")
    labels: dict[str, str] | None = Field(
        default=None, description="Labels to select the object by."
    )
    annotations: dict[str, str] | None = Field(
        default=None, description="Non-identifying metadata for tools."
    )
    generation: int | None = Field(
        default=None, description="Set by the API server; increases on every spec change."
    )
    uid: str | None = Field(
        default=None, description="Set by the API server; unique in time and space."
    )
    resource_version: str | None = Field(
        default=None, description="Set by the API server; for optimistic concurrency."
    )
    creation_timestamp: str | None = Field(
        default=None, description="Set by the API server: when the object was created (RFC 3339)."
    )


@dataclass(frozen=True)
class PrinterColumn:
    """One `additionalPrinterColumns` entry: what `kubectl get` shows."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0


@dataclass(frozen=True)
class ResourceInfo:
    """What the CRD says about a kind beyond its schema."""

    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[PrinterColumn, ...]


AGE_COLUMN = PrinterColumn(
    name="Age",
    type="date",
    json_path=".metadata.creationTimestamp",
    description="How long ago the object was created.",
)


class Resource(WireModel):
    """Fields every Bakeline object has: apiVersion, kind, metadata.

    The CRD takes its spec and status schemas from the `spec` and `status` fields; `cel_rules`
    of a resource go to the root of the schema, the only place a rule may read metadata.name.
    """

    info: ClassVar[ResourceInfo]

    api_version: Literal["bakeline.io/v1alpha1"] = Field(
        default=API_VERSION, alias="apiVersion", description="Always bakeline.io/v1alpha1."
    )
    metadata: ObjectMeta = Field(
        default_factory=ObjectMeta, description="Standard object metadata."
    )

    def to_manifest(self, *, exclude_unset: bool = False) -> dict[str, Any]:
        """The object as `kubectl apply` takes it: apiVersion and kind first, no nulls."""
        body = self.to_wire(exclude_unset=exclude_unset)
        head = {"apiVersion": self.api_version, "kind": body.pop("kind", type(self).__name__)}
        body.pop("apiVersion", None)
        return head | body
