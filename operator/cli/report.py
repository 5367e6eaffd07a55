"""The outcome of `bakeline run`: report.json, a summary table and a self-contained HTML chart."""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bakeline.api import BakingJob
from bakeline.checkpoints.manifest import Manifest
from bakeline.cli.progress import format_seconds
from bakeline.contract import per_batch
from bakeline.engine.pipeline import Plan, RunState
from bakeline.engine.result import UNVERIFIED_NOTE, FinalArtifact, result_document


def build_report(
    *,
    job: BakingJob,
    workflow: str,
    plan: Plan,
    state: RunState,
    attempts: Sequence[Mapping[str, Any]],
    events: Sequence[Mapping[str, Any]],
    started_at: float,
    finished_at: float,
    reason: str,
    result_dir: Path | None,
    final_manifest: Manifest | None,
    stage_checkpoints: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    stages = []
    for spec in plan.stages:
        stage = state.stages[spec.name]
        mine = [a for a in attempts if a["stage"] == spec.name]
        ran = [a for a in mine if not a.get("cached")]
        stages.append(
            {
                "name": spec.name,
                "agent": spec.agent,
                "phase": str(stage.phase),
                "attempts": stage.attempts_total,
                "fallback": stage.fallback,
                "durationSeconds": round(sum(a.get("seconds") or 0.0 for a in ran), 3),
                "cached": str(stage.phase) == "Cached",
                "cacheKey": next((a["cache_key"] for a in reversed(mine) if a["cache_key"]), None),
                "checkpoint": dict(stage_checkpoints.get(spec.name, {})) or None,
                "metrics": dict(stage.metrics),
                "message": stage.message,
                "rollbacks": [
                    e for e in events if e["stage"] == spec.name and e["kind"] == "RolledBack"
                ],
                "events": [e for e in events if e["stage"] == spec.name],
                "attemptLog": [
                    {
                        "attempt": a["attempt"],
                        "fallback": a["fallback"],
                        "params": a["params"],
                        "outcome": a["outcome"],
                        "exitCode": a["exit_code"],
                        "timedOut": a["timed_out"],
                        "seconds": a["seconds"],
                        "message": a["message"],
                        "log": a["log"] or None,
                    }
                    for a in mine
                ],
            }
        )
    good = state.current_checkpoint(plan)
    report: dict[str, Any] = {
        "job": job.metadata.name,
        "workflow": workflow,
        "phase": str(state.phase),
        "reason": reason,
        "progress": state.progress,
        "startedAt": _iso(started_at),
        "finishedAt": _iso(finished_at),
        "durationSeconds": round(finished_at - started_at, 3),
        # Of the stages as they stand (a stage run again counts from then on).
        "rollbacks": sum(e["kind"] == "RolledBack" for e in events),
        "fallbacks": sum(e["kind"] == "Fallback" for e in events),
        "lastRollbackReason": _last_rollback_reason(events),
        "stages": stages,
        "events": list(events),
        "result": None,
        "lastGoodCheckpoint": dict(_facts_of(stage_checkpoints, good.id))
        if good is not None
        else None,
    }
    if result_dir is not None and final_manifest is not None and str(state.phase) == "Succeeded":
        report["result"] = _result(job, plan, state, final_manifest, result_dir)
    return report


def _last_rollback_reason(events: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the latest of these rollbacks happened: the state's own reason may be a rollback of
    an earlier run whose stages have since run again."""
    causes = [e.get("cause") or e["message"] for e in events if e["kind"] == "RolledBack"]
    return causes[-1] if causes else None


def _facts_of(
    stage_checkpoints: Mapping[str, Mapping[str, Any]], checkpoint_id: str
) -> Mapping[str, Any]:
    """What is known about a checkpoint, found by id among the stages' checkpoints."""
    for facts in stage_checkpoints.values():
        if facts.get("id") == checkpoint_id:
            return facts
    return {"id": checkpoint_id}


def _result(
    job: BakingJob, plan: Plan, state: RunState, manifest: Manifest, result_dir: Path
) -> dict[str, Any]:
    """The result, decided by the engine as the operator decides status.result."""
    attributes = manifest.attributes
    artifact = FinalArtifact(
        location=str(result_dir / manifest.artifact),
        format=manifest.format,
        sha256=manifest.artifact_sha256,
        size_bytes=manifest.file(manifest.artifact).size_bytes,
        runtime=_attribute(attributes, ("runtime", "backend"), ("runtime",), ("backend",)),
        precision=_attribute(
            attributes,
            ("precision",),
            ("quantization", "scheme"),
            ("dtype",),
            ("runtime", "dtype"),
        ),
    )
    document = result_document(
        plan, state, job.spec.target, job.spec.quality, artifact, manifest.metrics
    )
    return {**document, "manifest": str(result_dir / "manifest.json")}


def _attribute(attributes: Mapping[str, Any], *paths: tuple[str, ...]) -> str | None:
    """The first of `paths` (keys into nested manifest attributes) that holds a plain value."""
    for path in paths:
        value: Any = attributes
        for key in path:
            value = value.get(key) if isinstance(value, Mapping) else None
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    return None


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---- terminal table -----------------------------------------------------------------------------


def summary_table(report: Mapping[str, Any]) -> str:
    rows = [("STAGE", "AGENT", "PHASE", "TRIES", "TIME", "SIZE", "NOTE")]
    for stage in report["stages"]:
        checkpoint = stage.get("checkpoint") or {}
        note = ""
        if stage["rollbacks"]:
            note = f"rolled back {len(stage['rollbacks'])}x"
        elif stage["phase"] not in ("Succeeded", "Cached"):
            note = stage["message"]
        if stage["fallback"]:
            note = f"fallback {stage['fallback']}" + (f"; {note}" if note else "")
        rows.append(
            (
                stage["name"],
                stage["agent"],
                stage["phase"],
                str(stage["attempts"]),
                format_seconds(stage["durationSeconds"]),
                _size(checkpoint.get("sizeBytes")),
                note[:60],
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    lines.append("")
    lines.append(
        f"{report['job']}: {report['phase']} in {format_seconds(report['durationSeconds'])}"
        f" ({report['progress']} stages, {report['rollbacks']} rollbacks,"
        f" {report['fallbacks']} fallbacks) - {report['reason']}"
    )
    result = report.get("result")
    if result:
        parts = [
            f"artifact {result['artifact']} ({result['format']}, {_size(result.get('sizeBytes'))}"
        ]
        if result.get("originalSizeBytes"):
            parts[0] += f", was {_size(result['originalSizeBytes'])}"
        parts[0] += ")"
        if result.get("speedup") is not None:
            parts.append(f"speedup {result['speedup']:.2f}x")
        quality = result.get("quality")
        if quality:
            parts.append(
                f"{quality['metric']} {quality['value']:.4f} (threshold {quality['threshold']})"
            )
        parts.append(quality_label(result))
        lines.append("; ".join(p for p in parts if p))
    return "\n".join(lines)


def quality_label(result: Mapping[str, Any]) -> str:
    """What the result's quality figures are worth, in a few words ("" when nobody said)."""
    if result.get("qualityVerified") is False:
        return "quality unverified (synthetic inputs)"
    if result.get("qualityVerified"):
        return str(result.get("qualityNote") or "quality verified")
    return ""


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / (1024 * 1024):.1f} MiB"


# ---- files --------------------------------------------------------------------------------------


def write_report(report: Mapping[str, Any], workdir: Path) -> tuple[Path, Path]:
    """Write report.json and report.html (a chart of time, size and latency per stage)."""
    json_path = workdir / "report.json"
    html_path = workdir / "report.html"
    tmp = json_path.with_name(".report.json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(json_path)
    html_path.write_text(_html(report))
    return json_path, html_path


def _html(report: Mapping[str, Any]) -> str:
    stages = report["stages"]
    names = [s["name"] for s in stages]
    charts = [
        _bar_chart(
            "Run time per stage (s)", names, [s["durationSeconds"] for s in stages], "{:.1f}"
        ),
        _bar_chart(
            "Artifact size after each stage (MiB)",
            names,
            [((s.get("checkpoint") or {}).get("sizeBytes") or 0) / 2**20 for s in stages],
            "{:.2f}",
        ),
    ]
    metrics: dict[str, float] = {}
    for stage in stages:
        metrics.update(stage["metrics"])
    baked, original = per_batch(metrics, "p50Ms"), per_batch(metrics, "originalP50Ms")
    batches = sorted(set(baked) & set(original), key=int)
    if batches:
        charts.append(
            _bar_chart(
                "Latency p50 (ms): original vs baked, per batch size",
                [f"{kind} b{b}" for b in batches for kind in ("original", "baked")],
                [v for b in batches for v in (original[b], baked[b])],
                "{:.3g}",
            )
        )
    rows = "".join(
        f"<tr><td>{html.escape(s['name'])}</td><td>{html.escape(s['agent'])}</td>"
        f"<td class='{html.escape(s['phase'])}'>{html.escape(s['phase'])}</td>"
        f"<td>{s['attempts']}</td><td>{s['durationSeconds']:.1f}</td>"
        f"<td>{html.escape(s['message'][:120])}</td></tr>"
        for s in stages
    )
    title = f"bakeline: {report['job']} {report['phase']}"
    result = report.get("result") or {}
    quality = ""
    if result.get("qualityVerified") is False:
        quality = (
            "<p style='color:#9a6700;border-left:4px solid #9a6700;padding-left:8px'>"
            "<strong>Quality unverified (synthetic inputs)</strong>: "
            f"{html.escape(str(result.get('qualityNote') or UNVERIFIED_NOTE))}. The job gave no "
            "data of its own, so the quality figures compare outputs on made-up inputs.</p>"
        )
    elif label := quality_label(result):
        quality = f"<p>{html.escape(label)}</p>"
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:left}"
        ".Succeeded{color:#1a7f37}.Cached{color:#0969da}.Failed{color:#cf222e}"
        ".RolledBack{color:#9a6700}.Skipped{color:#6e7781}"
        "</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>{html.escape(str(report['reason']))} &middot; "
        f"{report['progress']} stages &middot; {report['rollbacks']} rollbacks &middot; "
        f"{report['fallbacks']} fallbacks &middot; "
        f"{report['durationSeconds']:.1f} s</p>"
        + quality
        + "".join(charts)
        + f"<table><tr><th>stage</th><th>agent</th><th>phase</th><th>tries</th><th>s</th>"
        f"<th>message</th></tr>{rows}</table></body></html>\n"
    )


def _bar_chart(title: str, labels: Sequence[str], values: Sequence[float], fmt: str) -> str:
    bar, gap, label_width, width = 22, 6, 110, 520
    top = max(values, default=0.0) or 1.0
    height = len(labels) * (bar + gap) + 30
    parts = [
        f"<h2>{html.escape(title)}</h2>",
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{label_width + width + 80}' "
        f"height='{height}' role='img' aria-label='{html.escape(title)}'>",
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = i * (bar + gap) + 10
        length = width * value / top
        parts.append(
            f"<text x='{label_width - 6}' y='{y + bar * 0.7}' text-anchor='end' "
            f"font-size='13'>{html.escape(label)}</text>"
            f"<rect x='{label_width}' y='{y}' width='{length:.1f}' height='{bar}' fill='#4c8bf5'/>"
            f"<text x='{label_width + length + 4:.1f}' y='{y + bar * 0.7}' font-size='12'>"
            f"{fmt.format(value)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)
