"""Run by test_failures_cuda.py in a process of its own, since a CUDA memory cap is
process-wide: score one unit on cuda:0 in fp32, then again under
torch.cuda.set_per_process_memory_fraction with room for 3.5 rows of the allocating double of
tests/test_worker.py (on top of what is already reserved); print the result as JSON.

    python tests/gpu/oom_child.py DNABERT_DIR ESM_DIR CLASSIFIER FASTA_TO_WRITE
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

ROW_BYTES = 256 << 20  # per row: far above the tiny models' own activations


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def run(dnabert_dir: str, esm_dir: str, classifier: str, fasta: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
    import torch
    from test_worker import MemoryMeter, allocating, one_unit

    import virnucpro.models.dnabert as dnabert
    import virnucpro.models.esm as esm
    from virnucpro.runtime.worker import Settings, WorkerSpec, load_models, score_unit

    unit = one_unit(Path(fasta))
    spec = WorkerSpec(dnabert_dir, esm_dir, classifier, device="cuda:0", threads=1)
    models = load_models(spec, Settings("fp32", 4096, 4096))  # every frame in one batch
    with torch.inference_mode():
        uncapped = score_unit(models, unit).scores
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    cap = torch.cuda.memory_reserved(0) + ROW_BYTES * 7 // 2
    torch.cuda.set_per_process_memory_fraction(
        cap / torch.cuda.get_device_properties(0).total_memory, 0)
    torch.cuda.reset_peak_memory_stats(0)

    meter = MemoryMeter(cap=None)  # the CUDA allocator enforces the cap
    calls: dict[str, list[int]] = {"dnabert": [], "esm": []}
    dnabert.embed_dnabert = allocating(dnabert.embed_dnabert, meter, ROW_BYTES, "cuda:0",
                                       calls["dnabert"])
    esm.embed_esm = allocating(esm.embed_esm, meter, ROW_BYTES, "cuda:0", calls["esm"])
    log = _Messages()
    logging.getLogger("virnucpro").addHandler(log)
    with torch.inference_mode():
        capped = score_unit(models, unit).scores
    torch.cuda.synchronize()
    return {"uncapped": uncapped.tolist(), "capped": capped.tolist(), "calls": calls,
            "oom_logs": sum("out of memory" in m for m in log.messages), "cap": cap,
            "peak_reserved": torch.cuda.max_memory_reserved(0), "row_bytes": ROW_BYTES,
            "meter_peak": meter.peak, "meter_live": meter.live}


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:5])))
