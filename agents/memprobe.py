"""Peak memory of loading and running an ONNX model, measured in a fresh process.

`python -m bakeline.agents.memprobe MODEL DATA [THREADS]` prints {"baselineMB", "peakMB",
"modelMB"}: RSS after imports, peak RSS after creating the session and running four batches of 8,
and their difference (what the model costs). A fresh process, because peak RSS never goes down.
"""

from __future__ import annotations

import contextlib
import json
import resource
import subprocess
import sys
from pathlib import Path


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024.0  # kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main(argv: list[str]) -> int:
    # Only onnxruntime and the data helpers: importing torch would dwarf a small model.
    import onnxruntime as ort

    from bakeline.agents.data import Dataset

    model, data = Path(argv[0]), Dataset.load(Path(argv[1]))
    threads = int(argv[2]) if len(argv) > 2 else 1
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    baseline = _status_mb("VmRSS")
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to now
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    names = {i.name for i in session.get_inputs()}
    for feeds in data.batches(8, limit=32):
        session.run(None, {k: v for k, v in feeds.items() if k in names})
    peak = _status_mb("VmHWM")
    print(json.dumps({"baselineMB": baseline, "peakMB": peak, "modelMB": peak - baseline}))
    return 0


def measure(model: Path, data: Path, threads: int = 1) -> dict[str, float]:
    """Run the probe in a child process and return its numbers."""
    done = subprocess.run(
        [sys.executable, "-m", "bakeline.agents.memprobe", str(model), str(data), str(threads)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    )
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
