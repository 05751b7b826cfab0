"""Run by test_compile_cuda.py in a process of its own (the test process never initialises
CUDA): load the tiny models on cuda:0 in bf16, compile their layers as a worker does, then
score every unit of a generated input, in units of varied sizes, under
torch.compiler.set_stance("fail_on_recompile"): any graph the warm-up did not build fails
the run. Prints the compile report, the units scored and the batch lengths met, as JSON.

    python tests/gpu/recompile_child.py DNABERT_DIR ESM_DIR CLASSIFIER FASTA_TO_WRITE
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def run(dnabert_dir: str, esm_dir: str, classifier: str, fasta: str) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
    import torch
    from conftest import orf_rich_fasta

    from virnucpro.frames import iter_record_frames
    from virnucpro.reader import read_records
    from virnucpro.runtime.batching import iter_units
    from virnucpro.runtime.compile import compile_models
    from virnucpro.runtime.worker import (
        Settings,
        WorkerSpec,
        claim_device,
        load_models,
        score_unit,
    )

    claim_device("cuda:0")
    spec = WorkerSpec(dnabert_dir, esm_dir, classifier, device="cuda:0", threads=1)
    models = load_models(spec, Settings("bf16", 16384, 16384, True))
    with torch.inference_mode():
        report = compile_models(models)
    orf_rich_fasta(Path(fasta), 60, seed=11)
    scored, lengths = 0, set()
    with torch.inference_mode(), torch.compiler.set_stance("fail_on_recompile"):
        for unit_frames in (7, 40, 500):
            frames = iter_record_frames(read_records([fasta]), 500)
            for unit, _ in iter_units(frames, unit_frames):
                if unit.n_frames:
                    score_unit(models, unit)
                    scored += 1
                    lengths |= {len(p) + 2 for p in unit.proteins}
    torch.cuda.synchronize()
    return {"report": report, "units": scored, "lengths": sorted(lengths)}


if __name__ == "__main__":
    print(json.dumps(run(*sys.argv[1:5])))
