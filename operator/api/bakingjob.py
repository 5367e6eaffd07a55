"""BakingJob (`bj`): one model to bake."""

from __future__ import annotations

import re
from typing import Annotated, Literal
from urllib.parse import urlparse

from pydantic import AwareDatetime, Field, StringConstraints

from bakeline.api.common import (
    AGE_COLUMN,
    Condition,
    LabelName,
    ObjectName,
    PrinterColumn,
    Resource,
    ResourceInfo,
    Rule,
    StatusModel,
    WireModel,
    conditions_field,
    observed_generation_field,
)
from bakeline.api.names import AgentName
from bakeline.api.output import URI_CEL, parse_target
from bakeline.api.workflow import MAX_STAGES

BUILTIN_MODELS = ("minilm-l6", "digits-cnn")
BuiltinModel = Literal["minilm-l6", "digits-cnn"]
# What the BakingCoordinator loads (safetensors alone holds weights without a graph: nothing to
# bake; a Hugging Face folder's config.json names the graph).
ModelFormat = Literal["auto", "exported-program", "torchscript", "onnx", "huggingface"]
Device = Literal["cpu", "cuda"]
QualityMetric = Literal["cosine", "accuracy", "max-abs-error"]
JobPhase = Literal[
    "Pending", "Queued", "Running", "RollingBack", "Succeeded", "Failed", "Suspended"
]
StagePhase = Literal["Pending", "Running", "Succeeded", "Failed", "Cached", "RolledBack", "Skipped"]

SHA256_PATTERN = r"^[0-9a-f]{64}$"
RelativePath = Annotated[str, StringConstraints(min_length=1, max_length=1024)]


def _relative_path_ok(path: str) -> bool:
    return not path.startswith("/") and ".." not in path.split("/")


class ConfigMapModel(WireModel):
    """A model stored in a ConfigMap key (binaryData), for small models."""

    name: ObjectName = Field(description="Name of the ConfigMap, in the job's namespace.")
    key: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key of the ConfigMap holding the model file (one file: a Hugging Face "
        "model directory goes on a PersistentVolumeClaim).",
    )


class PvcModel(WireModel):
    """A model file on a PersistentVolumeClaim."""

    claim_name: ObjectName = Field(description="Name of the claim, in the job's namespace.")
    path: RelativePath = Field(
        description="Path of the model file inside the volume, relative; or of a Hugging Face "
        "model directory (config.json, model.safetensors or its shards, tokenizer files)."
    )

    cel_rules = (
        Rule(
            "!self.path.startsWith('/') && !self.path.split('/').exists(p, p == '..')",
            "path is relative to the volume's root and has no '..' segments",
            lambda p: _relative_path_ok(p.path),
            field_path=".path",
            shows="self.path",
        ),
    )


URL_IN_CLUSTER_MESSAGE = (
    "a url model source cannot be baked in a cluster: the operator does not download models "
    "(https://, http://) and a stage pod cannot read a file:// path; put the file in a "
    "ConfigMap (configMap) or on a PersistentVolumeClaim (pvc), or bake it on one machine with "
    "`bakeline run`"
)


def _url_has_host(url: str) -> bool:
    return not url.startswith(("https://", "http://")) or bool(urlparse(url).hostname)


HUGGINGFACE_CONFIGMAP_MESSAGE = (
    "a Hugging Face model directory cannot come from a ConfigMap: a ConfigMap source is one "
    "file (one key); put the folder on a PersistentVolumeClaim (source.pvc.path names the folder)"
)


class UrlModel(WireModel):
    """A model file by address, for `bakeline run` (file://, https://); its bytes must match
    sha256.

    The API server refuses url sources (`URL_IN_CLUSTER_MESSAGE`), so the rules below are
    `bakeline run`'s alone: one mistake, one message."""

    url: str = Field(
        min_length=1,
        max_length=2048,
        description="For `bakeline run` on one machine: file:// path of the model file (or of "
        "a Hugging Face model directory), or an https:// or http:// address it downloads (once, "
        "into a cache by sha256, resumed where a connection dropped, at most 16 GiB). A cluster "
        "refuses url sources: the operator does not download models.",
    )
    # Required, but checked by a rule so the API server's message says why (see cel_rules).
    sha256: str | None = Field(
        default=None,
        max_length=64,
        description="Lowercase hex sha256 of the file (64 characters); of a folder, the sha256 "
        "of `sha256sum` lines over its files sorted by path (`bakeline digest PATH` prints "
        "either). A source that does not match is refused.",
    )

    cel_rules = (
        Rule(
            None,
            "url must start with https://, http:// or file://",
            lambda u: u.url.startswith(("https://", "http://", "file://")),
        ),
        Rule(None, "an https:// or http:// url needs a host", lambda u: _url_has_host(u.url)),
        Rule(
            None,
            "a url source needs sha256: Bakeline never loads model bytes it cannot verify",
            lambda u: u.sha256 is not None,
        ),
        Rule(
            None,
            "sha256 must be 64 lowercase hex characters",
            lambda u: (
                u.sha256 is None
                or (len(u.sha256) == 64 and all(c in "0123456789abcdef" for c in u.sha256))
            ),
        ),
    )


class ModelSource(WireModel):
    """Where the model comes from: exactly one of builtin, configMap, pvc or url."""

    builtin: BuiltinModel | None = Field(
        default=None,
        description="A model shipped with the agents: minilm-l6 (all-MiniLM-L6-v2 sentence "
        "embeddings) or digits-cnn (a small CNN on scikit-learn's digits).",
    )
    config_map: ConfigMapModel | None = Field(
        default=None, description="A model in a ConfigMap key (small models only: 1 MiB)."
    )
    pvc: PvcModel | None = Field(default=None, description="A model file on a volume.")
    url: UrlModel | None = Field(default=None, description="A model downloaded and verified.")

    cel_rules = (
        Rule(
            "[has(self.builtin), has(self.configMap), has(self.pvc), has(self.url)]"
            ".filter(x, x).size() == 1",
            "set exactly one of builtin, configMap, pvc or url",
            lambda m: sum(x is not None for x in (m.builtin, m.config_map, m.pvc, m.url)) == 1,
        ),
        # The cluster's limit, not the job's: `bakeline run` reads file:// sources.
        Rule(
            "!has(self.url)",
            URL_IN_CLUSTER_MESSAGE,
            None,
            field_path=".url",
            shows="self.url.url",
        ),
    )


class ModelSpec(WireModel):
    """The model to bake."""

    source: ModelSource = Field(
        description="Where the model comes from: exactly one of builtin, configMap, pvc or url."
    )
    format: ModelFormat = Field(
        default="auto",
        description="Format of the model: exported-program (torch.export .pt2), torchscript, "
        "onnx, or huggingface (a model directory of a text, image or waveform model: "
        "config.json of an architecture transformers knows, model.safetensors or its shards, "
        "tokenizer files, preprocessor_config.json; "
        "never trust_remote_code); auto detects it from the file's bytes, or a folder with "
        "config.json. Pickled files are never loaded.",
    )
    input_shapes: (
        dict[str, Annotated[list[Annotated[int, Field(ge=1, le=1_000_000)]], Field(max_length=8)]]
        | None
    ) = Field(
        default=None,
        max_length=32,
        description="Each input's dims without the batch, by input name, e.g. {image: [3, 224, "
        "224]}: needed for a TorchScript file (which records no shapes) and for a Hugging Face "
        "image model whose config gives no image_size ({pixel_values: [3, 224, 224]}, which "
        "also wins over the config's); a Hugging Face waveform model's clip length "
        "({input_values: [16000]}; one second at its feature extractor's rate otherwise); and "
        "fixing the dynamic dims of the synthetic inputs of any other model.",
    )

    cel_rules = (
        Rule(
            "self.format != 'huggingface' || !has(self.source.configMap)",
            HUGGINGFACE_CONFIGMAP_MESSAGE,
            lambda m: m.format != "huggingface" or m.source.config_map is None,
            field_path=".source.configMap",
        ),
    )


class Target(WireModel):
    """What the baked model must run on and how fast."""

    device: Device = Field(default="cpu", description="Where the model will run: cpu or cuda.")
    batch_sizes: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[1, 32],
        min_length=1,
        max_length=8,
        description="Batch sizes to optimize and profile for; the first is the headline speedup.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    latency_budget_ms: float | None = Field(
        default=None,
        gt=0,
        le=600000,
        description="Latency at the first batch size the result must meet, in milliseconds.",
    )
    size_budget_mb: float | None = Field(
        default=None,
        alias="sizeBudgetMB",
        gt=0,
        le=1048576,
        description="Largest acceptable artifact, in megabytes (10^6 bytes).",
    )


DATASET_URL_MESSAGE = (
    "quality.dataset by s3://, oci:// or another scheme is not fetched yet: put the file in a "
    "ConfigMap (configmap/NAME/KEY) or on a PersistentVolumeClaim (pvc://CLAIM/PATH) for a "
    "cluster, or name a local file (file://PATH) or an https:// address for `bakeline run`"
)
DATASET_CONFIGMAP_MESSAGE = (
    "a ConfigMap dataset is configmap/NAME or configmap/NAME/KEY: NAME a ConfigMap in the "
    "job's namespace (lowercase DNS name), KEY one of its keys (letters, digits, '-', '_', '.')"
)
DATASET_PVC_MESSAGE = (
    "a PersistentVolumeClaim dataset is pvc://CLAIM/PATH: CLAIM a claim in the job's namespace "
    "(lowercase DNS name), PATH the file on it (segments of letters, digits, '-', '_', '.', "
    "none starting with '.')"
)
DATASET_IN_CLUSTER_MESSAGE = (
    "in a cluster quality.dataset is builtin, configmap/NAME[/KEY] or pvc://CLAIM/PATH: a stage "
    "pod cannot read a local file (file://, a path) and has no network (https://); bake it "
    "with `bakeline run`, or put the file in a ConfigMap or on a claim"
)
_URL_SCHEME = re.compile(r"^[a-zA-Z][-+.a-zA-Z0-9]*://")
_DNS_SUBDOMAIN = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
_CONFIGMAP_DATASET = f"^configmap/{_DNS_SUBDOMAIN}(/[-._a-zA-Z0-9]*[-_a-zA-Z0-9][-._a-zA-Z0-9]*)?$"
# No segment starts with '.': no `..` out of the claim, no hidden file.
_PVC_DATASET = f"^pvc://{_DNS_SUBDOMAIN}(/[-_a-zA-Z0-9][-._a-zA-Z0-9]*)+$"


def _dataset_not_fetched(dataset: str) -> bool:
    schemes = ("file://", "pvc://", "https://", "http://")
    return not _URL_SCHEME.match(dataset) or dataset.startswith(schemes)


def _pvc_dataset_ok(dataset: str) -> bool:
    if not dataset.startswith("pvc://"):
        return True
    claim = dataset.removeprefix("pvc://").split("/")[0]
    return bool(re.fullmatch(_PVC_DATASET, dataset)) and len(claim) <= 253


def _configmap_dataset_ok(dataset: str) -> bool:
    if not dataset.startswith("configmap/"):
        return True
    name = dataset.split("/")[1]
    return bool(re.fullmatch(_CONFIGMAP_DATASET, dataset)) and len(name) <= 253


OUTPUT_URI_MESSAGE = (
    "uri is s3://BUCKET/PREFIX, oci://REGISTRY/REPOSITORY[:TAG], pvc://CLAIM/PATH (in a "
    "cluster) or a local folder (bakeline run): file:///DIR or a relative path"
)
OUTPUT_IN_CLUSTER_MESSAGE = (
    "in a cluster the output is s3://, oci:// or pvc://CLAIM/PATH: a folder (file://, a path) "
    "would be written inside the delivery pod and lost; deliver to a folder with `bakeline run`"
)


class Quality(WireModel):
    """How close the baked model's outputs must stay to the original's."""

    dataset: str = Field(
        default="builtin",
        min_length=1,
        max_length=2048,
        description="Calibration and evaluation inputs. builtin: a builtin model's own data, "
        "synthetic inputs for another (quality then unverified). configmap/NAME[/KEY] (in a "
        "cluster): a ConfigMap key holding the file, mounted read-only into the import stage; "
        "pvc://CLAIM/PATH (in a cluster): a file on a PersistentVolumeClaim of the job's "
        "namespace, the claim mounted read-only into the import stage; "
        "file://PATH or a path relative to the job file, or an https:// address, downloaded "
        "(`bakeline run`). The file is "
        "safetensors or npz (arrays keyed by input name, optional __labels__; never "
        "unpickled), JSON lines (text, for a model with a tokenizer, or token ids by input "
        "name, optional label) or, for a Hugging Face image or waveform model with a "
        "preprocessor_config.json, a zip of PNG and JPEG images or of WAV clips (labelled by "
        "folder: a class index or a label2id name); every third sample calibrates, the rest "
        "evaluate. Datasets "
        "by s3:// or oci:// are not fetched yet and are refused.",
    )
    metric: QualityMetric = Field(
        default="cosine",
        description="cosine: mean cosine similarity of outputs; accuracy: agreement of predicted "
        "classes; max-abs-error: largest absolute output difference.",
    )
    threshold: float | None = Field(
        default=None,
        ge=0,
        description="Bound the metric must meet: at least this for cosine and accuracy (a "
        "fraction in (0, 1]), at most this for max-abs-error. Unset: 0.98 for cosine, 0.05 for "
        "max-abs-error, and for accuracy the original model's own accuracy on the evaluation "
        "labels less 0.01 (status.result.quality.threshold says which bound was used).",
    )

    cel_rules = (
        Rule(
            "!self.dataset.matches('^[a-zA-Z][-+.a-zA-Z0-9]*://') "
            "|| self.dataset.startsWith('file://') || self.dataset.startsWith('pvc://') "
            "|| self.dataset.startsWith('https://') || self.dataset.startsWith('http://')",
            DATASET_URL_MESSAGE,
            lambda q: _dataset_not_fetched(q.dataset),
            field_path=".dataset",
            shows="self.dataset",
        ),
        Rule(
            "!self.dataset.startsWith('configmap/') "
            f"|| (self.dataset.matches('{_CONFIGMAP_DATASET}') "
            "&& self.dataset.split('/')[1].size() <= 253)",
            DATASET_CONFIGMAP_MESSAGE,
            lambda q: _configmap_dataset_ok(q.dataset),
            field_path=".dataset",
            shows="self.dataset",
        ),
        Rule(
            "!self.dataset.startsWith('pvc://') "
            f"|| (self.dataset.matches('{_PVC_DATASET}') "
            "&& self.dataset.substring(6).split('/')[0].size() <= 253)",
            DATASET_PVC_MESSAGE,
            lambda q: _pvc_dataset_ok(q.dataset),
            field_path=".dataset",
            shows="self.dataset",
        ),
        # The cluster's limit, not the job's: `bakeline run` reads local files.
        Rule(
            "self.dataset == 'builtin' || self.dataset.startsWith('configmap/') "
            "|| (self.dataset.matches('^[a-zA-Z][-+.a-zA-Z0-9]*://') "
            "&& !self.dataset.startsWith('file://') && !self.dataset.startsWith('https://') "
            "&& !self.dataset.startsWith('http://'))",
            DATASET_IN_CLUSTER_MESSAGE,
            None,
            field_path=".dataset",
            shows="self.dataset",
        ),
        Rule(
            "!has(self.threshold) || self.metric == 'max-abs-error' "
            "|| (self.threshold > 0.0 && self.threshold <= 1.0)",
            "threshold for cosine and accuracy is a fraction in (0, 1], e.g. 0.98",
            lambda q: (
                q.threshold is None or q.metric == "max-abs-error" or 0.0 < q.threshold <= 1.0
            ),
            field_path=".threshold",
        ),
    )


class Checkpoints(WireModel):
    """Checkpoint retention of this job (where checkpoints live is the lane's storage)."""

    retain: int = Field(
        default=3,
        ge=0,
        le=MAX_STAGES,
        description="Checkpoints kept after the job finishes, newest first, besides the "
        "result's (always kept); the others' records and ConfigMap store objects are deleted. "
        "All are kept while it runs, since a rollback may need any of them. `bakeline run` "
        "keeps every checkpoint: its work directory is its cache.",
    )


def _target_ok(uri: str) -> bool:
    try:
        parse_target(uri)
    except ValueError:
        return False
    return True


class Output(WireModel):
    """Where the package goes once baked, beside the job's final checkpoint."""

    uri: str = Field(
        min_length=1,
        max_length=1024,
        description="s3://BUCKET/PREFIX (an S3-compatible bucket), oci://REGISTRY/REPOSITORY[:TAG] "
        "(an OCI registry; the tag defaults to latest), pvc://CLAIM/PATH (a folder on a "
        "PersistentVolumeClaim of the job's namespace; a cluster only), or, for `bakeline run` "
        "only, a local folder (file:///DIR, or a path relative to the job file). Files go "
        "first, the package's manifest.json last; a package already there is not written "
        "again.",
    )
    endpoint: str | None = Field(
        default=None,
        max_length=1024,
        description="For s3://: the endpoint URL of an S3-compatible server (MinIO, SeaweedFS, "
        "...), e.g. https://minio.example:9000; empty: AWS.",
    )
    region: str | None = Field(
        default=None, max_length=64, description="For s3://: the region (default us-east-1)."
    )
    credentials_secret: ObjectName | None = Field(
        default=None,
        description="In a cluster: a Secret of the job's namespace, mounted by the delivery "
        "alone: keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY for s3://, a "
        "kubernetes.io/dockerconfigjson for oci://. `bakeline run` reads where the clients "
        "look (the AWS variables or profile; DOCKER_CONFIG or ~/.docker/config.json).",
    )
    insecure: bool = Field(
        default=False,
        description="Plain HTTP to the registry, and no TLS verification of the endpoint (a "
        "server on loopback or inside the cluster).",
    )

    cel_rules = (
        Rule(
            f"self.uri.matches('{URI_CEL}')",
            OUTPUT_URI_MESSAGE,
            lambda o: _target_ok(o.uri),
            field_path=".uri",
            shows="self.uri",
        ),
        # The cluster's limit: `bakeline run` delivers to folders (and refuses pvc://).
        # (only folders: an unknown scheme is the rule above's to name)
        Rule(
            "self.uri.matches('^[a-zA-Z][-+.a-zA-Z0-9]*://') && !self.uri.startsWith('file://')",
            OUTPUT_IN_CLUSTER_MESSAGE,
            None,
            field_path=".uri",
            shows="self.uri",
        ),
        Rule(
            "!has(self.credentialsSecret) || self.uri.startsWith('s3://') "
            "|| self.uri.startsWith('oci://')",
            "credentialsSecret is for s3:// and oci:// outputs (a folder or a claim is written "
            "with no credentials)",
            lambda o: o.credentials_secret is None or o.uri.startswith(("s3://", "oci://")),
            field_path=".credentialsSecret",
        ),
        Rule(
            "!has(self.insecure) || !self.insecure || self.uri.startsWith('s3://') "
            "|| self.uri.startsWith('oci://')",
            "insecure is for s3:// and oci:// outputs (a folder or a claim has no TLS)",
            lambda o: not o.insecure or o.uri.startswith(("s3://", "oci://")),
            field_path=".insecure",
        ),
        Rule(
            "!has(self.region) || self.uri.startsWith('s3://')",
            "region is for s3:// outputs",
            lambda o: o.region is None or o.uri.startswith("s3://"),
            field_path=".region",
        ),
        Rule(
            "!has(self.endpoint) || self.uri.startsWith('s3://')",
            "endpoint is for s3:// outputs",
            lambda o: o.endpoint is None or o.uri.startswith("s3://"),
            field_path=".endpoint",
        ),
        Rule(
            "!has(self.endpoint) || self.endpoint.matches('^https?://[^/]+')",
            "endpoint is an http:// or https:// URL with a host",
            lambda o: o.endpoint is None or bool(re.match(r"^https?://[^/]+", o.endpoint)),
            field_path=".endpoint",
            shows="self.endpoint",
        ),
    )


ACCURACY_NEEDS_LABELS_MESSAGE = (
    "quality.metric accuracy needs labelled evaluation data: of the builtin models only "
    "digits-cnn brings labels, and synthetic inputs have none; name a dataset with labels in "
    "quality.dataset (__labels__, or `label` per JSON line), or gate on cosine or "
    "max-abs-error"
)


def _accuracy_has_labels(spec: BakingJobSpec) -> bool:
    """What the spec alone shows: with the builtin dataset and the default workflow, only
    digits-cnn's own data is labelled (a Workflow's import params may name data of its own)."""
    return (
        spec.quality.metric != "accuracy"
        or spec.quality.dataset != "builtin"
        or spec.workflow_ref is not None
        or spec.model.source.builtin == "digits-cnn"
    )


class BakingJobSpec(WireModel):
    """The model, the workflow and lane to bake it with, and what the result must meet."""

    model: ModelSpec = Field(description="The model to bake.")
    workflow_ref: LabelName | None = Field(
        default=None,
        description="Name of a Workflow in this namespace; empty uses the built-in default "
        "(import, graph, quantize, memory, hardware, accelerate, validate, profile, package).",
    )
    lane_ref: LabelName = Field(
        default="standard", description="Name of the Lane (same namespace) that queues the job."
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="Order within a lane with queueing Priority: higher first, then oldest.",
    )
    target: Target = Field(default_factory=Target, description="Device and budgets.")
    quality: Quality = Field(default_factory=Quality, description="The quality gate.")
    checkpoints: Checkpoints = Field(
        default_factory=Checkpoints, description="Checkpoint retention."
    )
    deadline_seconds: int | None = Field(
        default=None,
        ge=60,
        le=604800,
        description="Seconds from admission, or from the latest `bakeline rerun`, after which "
        "an unfinished job fails (reason DeadlineExceeded); empty: no deadline.",
    )
    suspend: bool = Field(
        default=False,
        description="True stops the job at the next stage boundary (phase Suspended); false "
        "resumes it from its last checkpoint.",
    )
    output: Output | None = Field(
        default=None,
        description="Where the package is delivered once baked: by `bakeline run` itself, in "
        "a cluster by a delivery pod (status.output, condition Delivered).",
    )

    cel_rules = (
        Rule(
            "self.quality.metric != 'accuracy' || self.quality.dataset != 'builtin' "
            "|| has(self.workflowRef) "
            "|| (has(self.model.source.builtin) && self.model.source.builtin == 'digits-cnn')",
            ACCURACY_NEEDS_LABELS_MESSAGE,
            _accuracy_has_labels,
            field_path=".quality.metric",
        ),
    )


class StageStatus(StatusModel):
    """What happened to one stage."""

    name: str = Field(max_length=32, description="The stage's name in the workflow.")
    agent: AgentName | None = Field(default=None, description="The stage's agent.")
    phase: StagePhase = Field(
        description="Pending, Running, Succeeded, Failed, Cached (reused an earlier checkpoint), "
        "RolledBack (its output was discarded by a rollback) or Skipped."
    )
    attempt: int = Field(
        default=0,
        ge=0,
        description="Attempts so far, across fallbacks and rollbacks (1 for the first); the "
        "latest attempt's pod is <job>-<stage>-<attempt>.",
    )
    attempts_with_params: int = Field(
        default=0,
        ge=0,
        description="Attempts with the current params (fallback); retries of transient failures "
        "count against retry.limit from here.",
    )
    fallback: int = Field(
        default=0,
        ge=0,
        description="Which params ran: 0 the stage's params, n its fallbacks[n-1].",
    )
    pod: str | None = Field(default=None, max_length=253, description="Pod of the latest attempt.")
    started_at: AwareDatetime | None = Field(
        default=None, description="Start of the latest attempt."
    )
    finished_at: AwareDatetime | None = Field(
        default=None, description="End of the latest attempt."
    )
    duration_seconds: float | None = Field(
        default=None, ge=0, description="Run time of the latest attempt, in seconds."
    )
    checkpoint: str | None = Field(
        default=None, max_length=253, description="Checkpoint the stage produced (or reused)."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict,
        max_length=32,
        description="Small numeric results, e.g. speedup, sizeBytes, cosine.",
    )
    message: str | None = Field(
        default=None, max_length=4096, description="Why the stage is in its phase, in words."
    )


class QualityResult(StatusModel):
    """The quality gate's outcome."""

    metric: QualityMetric = Field(description="The metric measured.")
    value: float = Field(description="Its value on the evaluation set.")
    threshold: float = Field(description="The bound it had to meet.")
    passed: bool = Field(description="Whether it met the bound.")


# Bounds of the result's free-text labels; the engine clips an agent's longer label to them.
RUNTIME_MAX = 64
PRECISION_MAX = 256


class BakeResult(StatusModel):
    """The baked artifact and what baking bought."""

    artifact: str = Field(
        max_length=1024, description="Where the artifact is: checkpoint, ConfigMap or path."
    )
    format: str = Field(max_length=64, description="Artifact format, e.g. onnx.")
    sha256: str | None = Field(default=None, max_length=64, description="sha256 of the artifact.")
    size_bytes: int | None = Field(default=None, ge=0, description="Size of the artifact.")
    original_size_bytes: int | None = Field(
        default=None, ge=0, description="Size of the original model."
    )
    speedup: float | None = Field(
        default=None,
        ge=0,
        description="Median latency of the original over the baked model at the first batch "
        "size (2.0 = twice as fast).",
    )
    speedups: dict[str, float] = Field(
        default_factory=dict, max_length=8, description="Speedup per batch size, e.g. {'32': 2.8}."
    )
    runtime: str | None = Field(
        default=None, max_length=RUNTIME_MAX, description="Runtime chosen, e.g. onnxruntime."
    )
    precision: str | None = Field(
        default=None,
        max_length=PRECISION_MAX,
        description="What the artifact's weights are, e.g. 'int8-per-channel: 22 of 24 layers, "
        "the rest fp32; 2 embedding tables int4'.",
    )
    quality: QualityResult | None = Field(default=None, description="The quality gate's outcome.")
    quality_verified: bool | None = Field(
        default=None,
        description="False when the quality figures were measured on synthetic inputs (the job "
        "gave no data of its own): the bake succeeded but its quality is unverified.",
    )
    quality_note: str | None = Field(
        default=None,
        max_length=256,
        description="What the quality figures were measured on, e.g. 'evaluated on synthetic "
        "inputs: quality unverified'.",
    )
    evaluation_data: Literal["synthetic", "builtin", "dataset"] | None = Field(
        default=None, description="The data quality was measured on."
    )
    calibration_samples: int | None = Field(
        default=None, ge=0, description="Samples the stages calibrated on."
    )
    evaluation_samples: int | None = Field(
        default=None, ge=0, description="Held-out samples quality was measured on."
    )


DeliveryPhase = Literal["Pending", "Delivering", "Delivered", "Retrying", "Refused"]


class OutputStatus(StatusModel):
    """The delivery of the job's package to spec.output."""

    uri: str = Field(max_length=1024, description="Where it goes (spec.output.uri).")
    phase: DeliveryPhase = Field(
        default="Pending",
        description="Pending, Delivering (a delivery pod runs), Delivered, Retrying (a "
        "transient failure; again at retryAt) or Refused (credentials, no such bucket: again "
        "at retryAt, rarely, or when spec.output changes).",
    )
    digest: str | None = Field(
        default=None, max_length=128, description="sha256 of what was delivered."
    )
    delivered_at: str | None = Field(
        default=None, max_length=32, description="When it was delivered (RFC 3339)."
    )
    checkpoint: str | None = Field(
        default=None, max_length=253, description="The result checkpoint delivered."
    )
    generation: int | None = Field(
        default=None, description="The job's generation whose spec.output this is."
    )
    attempts: int = Field(default=0, ge=0, description="Delivery pods started.")
    failures: int = Field(default=0, ge=0, description="Failed attempts in a row.")
    retry_at: str | None = Field(
        default=None, max_length=32, description="When the next attempt starts (RFC 3339)."
    )
    message: str | None = Field(default=None, max_length=4096, description="In words.")


class BakingJobStatus(StatusModel):
    """Where the job is and what it produced."""

    observed_generation: int | None = observed_generation_field()
    phase: JobPhase = Field(
        default="Pending",
        description="Pending (not yet in a lane), Queued, Running, RollingBack, Succeeded, "
        "Failed or Suspended.",
    )
    lane: str | None = Field(
        default=None, max_length=63, description="The lane that admitted the job."
    )
    workflow: str | None = Field(
        default=None, max_length=63, description="The workflow the job runs (default: built-in)."
    )
    queue_position: int | None = Field(
        default=None,
        ge=0,
        description="Jobs ahead in the lane's queue while Queued (0: next); refreshed at "
        "least every 15 s.",
    )
    progress: str | None = Field(
        default=None,
        max_length=16,
        pattern=r"^[0-9]+/[0-9]+$",
        description="Finished stages over all stages, e.g. 4/9.",
    )
    stages: list[StageStatus] = Field(
        default_factory=list,
        max_length=MAX_STAGES,
        description="Each stage's phase, attempt, pod, timing, checkpoint and metrics.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    current_checkpoint: str | None = Field(
        default=None, max_length=253, description="The last good checkpoint."
    )
    rollback_count: int = Field(default=0, ge=0, description="Rollbacks so far.")
    last_rollback_reason: str | None = Field(
        default=None, max_length=1024, description="Why the last rollback happened."
    )
    queued_at: AwareDatetime | None = Field(
        default=None, description="When the job entered a lane."
    )
    admitted_at: AwareDatetime | None = Field(
        default=None, description="When the lane admitted the job to run."
    )
    started_at: AwareDatetime | None = Field(
        default=None, description="When its first stage started."
    )
    finished_at: AwareDatetime | None = Field(
        default=None, description="When the job succeeded or failed."
    )
    estimated_completion: AwareDatetime | None = Field(
        default=None, description="Predicted end, from the duration predictor."
    )
    result: BakeResult | None = Field(default=None, description="The artifact, once Succeeded.")
    output: OutputStatus | None = Field(
        default=None, description="The package's delivery to spec.output, once Succeeded."
    )
    stage_pods_retry_at: AwareDatetime | None = Field(
        default=None,
        description="While stage pods are refused or cannot start (condition "
        "StagePodsBlocked): when the operator tries again.",
    )
    rerun_request: str | None = Field(
        default=None,
        max_length=128,
        description="The last bakeline.io/rerun-from annotation acted on (STAGE@TIME, as "
        "`bakeline rerun` writes it): that stage and every stage after it ran again.",
    )
    rerun_at: AwareDatetime | None = Field(
        default=None,
        description="When the operator acted on rerunRequest: the rerun's deadlineSeconds "
        "count from then.",
    )
    conditions: list[Condition] = conditions_field(
        "Admitted, Progressing, Succeeded, Failed, StagePodsBlocked"
    )


class BakingJob(Resource):
    """One model to bake through a workflow in a lane."""

    info = ResourceInfo(
        plural="bakingjobs",
        singular="bakingjob",
        short_names=("bj",),
        printer_columns=(
            PrinterColumn("Phase", "string", ".status.phase", "Where the job is."),
            PrinterColumn("Lane", "string", ".status.lane", "The lane that admitted it."),
            PrinterColumn("Progress", "string", ".status.progress", "Finished stages / stages."),
            PrinterColumn(
                "Speedup", "number", ".status.result.speedup", "Speedup at the first batch size."
            ),
            PrinterColumn(
                "Verified",
                "boolean",
                ".status.result.qualityVerified",
                "False: quality measured on synthetic inputs only.",
            ),
            PrinterColumn(
                "Output",
                "string",
                ".status.output.phase",
                "Delivery to spec.output: Pending, Delivering, Delivered, Retrying, Refused.",
            ),
            AGE_COLUMN,
        ),
    )

    kind: Literal["BakingJob"] = Field(default="BakingJob", description="Always BakingJob.")
    spec: BakingJobSpec = Field(description="What to bake and how.")
    status: BakingJobStatus | None = Field(
        default=None, description="Progress and result; operator-owned."
    )
