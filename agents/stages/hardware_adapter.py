"""HardwareAdapter: read the target's capabilities and pick dtype, threads and execution provider.

Reads /proc/cpuinfo flags (avx512_vnni / avx_vnni / amx_int8 for int8, avx512_bf16 / amx_bf16,
avx512_fp16 / amx_fp16), the usable cores (affinity and cgroup quota), CUDA and ONNX Runtime's
providers, and measures a transformer-sized matmul in fp32, bf16 and fp16. A dtype the hardware
has no native arithmetic for, or that measures slower than fp32, is refused (exit 3, so that a
fallback can ask for another). The artifact is unchanged; the choice goes into the manifest's
`runtime` attribute, which later stages run under.

Params: dtype ("auto" | "int8" | "bf16" | "fp16" | "fp32"), threads ("auto" | n),
executionProvider ("auto" | "cpu" | "cuda").
"""

from __future__ import annotations

from typing import Literal

import onnxruntime as ort
import torch
from pydantic import Field

from bakeline.agents.contract import GateFailed, InvalidInput, Outcome, StageParams
from bakeline.agents.hardware import (
    AMX_FLAGS,
    BF16_FLAGS,
    FP16_FLAGS,
    INT8_FLAGS,
    cpu_flags,
    matmul_gflops,
    supports,
    usable_cpus,
)
from bakeline.agents.stages.base import Agent, StageContext, StageResult, register
from bakeline.agents.stages.common import runtime_config

Dtype = Literal["auto", "int8", "bf16", "fp16", "fp32"]


class HardwareParams(StageParams):
    dtype: Dtype = "auto"
    threads: Literal["auto"] | int = Field(default="auto")
    execution_provider: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", alias="executionProvider"
    )


@register
class HardwareAdapter(Agent[HardwareParams]):
    name = "HardwareAdapter"
    params_model = HardwareParams

    def run(self, ctx: StageContext, params: HardwareParams) -> StageResult:
        source = ctx.open_input()
        flags = cpu_flags()
        cpus = usable_cpus()
        cuda = torch.cuda.is_available()
        providers = ort.get_available_providers()
        threads = cpus if params.threads == "auto" else min(params.threads, cpus)
        if isinstance(params.threads, int) and params.threads < 1:
            raise InvalidInput("threads must be >= 1")
        torch.set_num_threads(threads)
        gflops = {dtype: matmul_gflops(dtype, repeats=10) for dtype in ("fp32", "bf16", "fp16")}
        metrics = {
            "cpus": float(cpus),
            "threads": float(threads),
            "int8Native": float(supports("int8", flags)),
            "bf16Native": float(supports("bf16", flags)),
            "fp16Native": float(supports("fp16", flags)),
            "amx": float(bool(flags.intersection(AMX_FLAGS))),
            "cudaAvailable": float(cuda),
            "gflopsFp32": gflops["fp32"],
            "gflopsBf16": gflops["bf16"],
            "gflopsFp16": gflops["fp16"],
        }

        device = ctx.job.target.device
        wants_cuda = params.execution_provider == "cuda" or (
            params.execution_provider == "auto" and device == "cuda"
        )
        if wants_cuda and not (cuda and "CUDAExecutionProvider" in providers):
            raise GateFailed(
                "the target asks for CUDA but this node has no usable CUDA device or "
                "ONNX Runtime CUDA provider",
                metrics,
            )
        provider = "CUDAExecutionProvider" if wants_cuda else "CPUExecutionProvider"

        model_dtype = str(source.manifest.attributes.get("dtype", "fp32"))
        dtype = model_dtype if params.dtype == "auto" else params.dtype
        notes = []
        if dtype in ("bf16", "fp16") and not wants_cuda:
            native = supports(dtype, flags)
            faster = gflops[dtype] > gflops["fp32"]
            needed = ", ".join(BF16_FLAGS if dtype == "bf16" else FP16_FLAGS)
            if not native or not faster:
                reason = (
                    f"no native {dtype} arithmetic (needs one of {needed})" if not native else ""
                )
                measured = (
                    f"measured {gflops[dtype]:.1f} GFLOP/s in {dtype} vs "
                    f"{gflops['fp32']:.1f} in fp32"
                )
                raise GateFailed(
                    f"refused {dtype} on this CPU: {reason + '; ' if reason else ''}{measured}",
                    metrics,
                )
            if source.format == "onnx" and model_dtype == "int8":
                notes.append(f"{dtype} applies to float torch backends; the int8 graph stays int8")
        if dtype == "int8" and not supports("int8", flags) and not wants_cuda:
            notes.append(f"no {'/'.join(INT8_FLAGS)}: int8 runs on the slower AVX2 path")

        config = runtime_config(
            source,
            execution_provider=provider,
            intra_op_threads=threads,
            inter_op_threads=1,
            dtype=dtype,
        )
        out = ctx.output(source)
        out.carry_forward(keep_model=True)  # the artifact is unchanged: same bytes, same sha256
        out.add(source.manifest.artifact, "model")
        manifest = self.finish(
            ctx,
            out,
            params,
            artifact=source.manifest.artifact,
            format=source.format,
            metrics=metrics,
            attributes={
                "runtime": config.dump(),
                "hardware": {
                    "flags": sorted(
                        flags.intersection(
                            {"avx2", "avx512f", *INT8_FLAGS, *BF16_FLAGS, *FP16_FLAGS}
                        )
                    ),
                    "cpus": cpus,
                    "providers": providers,
                    "notes": notes,
                },
            },
        )
        message = (
            f"{provider} with {threads} threads, dtype {dtype}; int8 native "
            f"{bool(metrics['int8Native'])}, bf16 native {bool(metrics['bf16Native'])}, fp16 "
            f"native {bool(metrics['fp16Native'])}" + (f"; {'; '.join(notes)}" if notes else "")
        )
        return StageResult(Outcome(message, metrics), manifest)
