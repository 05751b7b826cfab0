"""One runtime configuration and one planner for every command that runs the workers.

`RuntimeConfig` holds how the embedding workers run (models, devices, precision, budgets,
threads, engine). `predict` and `train` each hold one, and plan with the same functions:
`resolve_models` finds the model files, `worker_specs` decides which processes run where,
`identity` says what a run *is*, for its fingerprint: the inputs and models by sha256, and the
settings as the user asked for them ("auto" stays "auto"). How "auto" came out on this
hardware (dtype, budgets, threads) is settled by the workers and recorded beside the
fingerprint, so a resumed run reuses it instead of refusing on a slightly different GPU.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from virnucpro.errors import InputError, VirnucproError
from virnucpro.files import sha256_file
from virnucpro.models.store import DEFAULT_DNABERT, DEFAULT_ESM, ResolvedModel
from virnucpro.runtime.protocol import Plan, Render, Request, WorkerSpec

log = logging.getLogger(__name__)
ENGINES = ("local", "ray")


@dataclass(frozen=True)
class RuntimeConfig:
    """How the embedding workers run: the settings predict and train share."""

    dnabert: str = DEFAULT_DNABERT
    esm: str = DEFAULT_ESM
    models_dir: Path | None = None
    device: str = "auto"
    gpus: str | None = None
    workers: int | None = None
    dnabert_budget: int | None = None  # None: settled by the workers
    esm_budget: int | None = None
    precision: str = "auto"
    threads: int | None = None  # None: the CPUs this process may use, split among workers
    unit_frames: int = 2048
    offline: bool = False
    progress: bool = True
    engine: str = "local"  # "local" | "ray"; both write the same bytes
    ray_address: str | None = None  # None: start a local Ray instance
    compile: bool | None = None  # torch.compile the encoder layers; None: on GPUs only

    def request(self) -> Request:
        return Request(self.precision, self.dnabert_budget, self.esm_budget, self.device,
                       self.workers, self.threads, self.compile)


def check_runtime(rt: RuntimeConfig) -> None:
    if rt.engine not in ENGINES:
        raise VirnucproError(f"engine {rt.engine!r} is not one of {', '.join(ENGINES)}")
    if rt.workers is not None and rt.workers < 1:
        raise VirnucproError(f"--workers must be at least 1, got {rt.workers}")


def resolve_models(rt: RuntimeConfig, classifier: str | None = None,
                   model_type: int | None = None) -> dict[str, ResolvedModel]:
    """The models a run loads; without `model_type` no classifier (embedding only)."""
    from virnucpro.models.store import resolve_classifier, resolve_model

    kw = {"offline": rt.offline, "progress": rt.progress}
    models = {
        "dnabert": resolve_model(rt.dnabert, "dnabert", cache_dir=rt.models_dir, verify=True,
                                 **kw),
        "esm": resolve_model(rt.esm, "esm", cache_dir=rt.models_dir, verify=True, **kw),
    }
    if model_type is not None:
        models["classifier"] = resolve_classifier(classifier, model_type,
                                                  models_dir=rt.models_dir, **kw)
    return models


def model_record(m: ResolvedModel) -> dict[str, Any]:
    """A model as run.json records it."""
    return {"spec": m.spec, "path": str(Path(m.path).resolve()), "repo_id": m.repo_id,
            "revision": m.revision, "sha256": dict(sorted(m.sha256.items()))}


def input_record(path: str, sha256: str | None = None) -> dict[str, Any]:
    """Identity of one input: size and sha256 (stdin cannot be identified); `sha256`: the
    hash the pre-pass computed as it read the file, else the file is hashed here."""
    if path == "-":
        return {"path": "-", "size": None, "sha256": None}
    p = Path(path)
    try:
        return {"path": str(p.resolve()), "size": p.stat().st_size,
                "sha256": sha256 or sha256_file(p)}
    except OSError as exc:
        raise InputError(f"{path}: cannot read input ({exc.strerror or exc})") from None


def identity(params: dict[str, Any], inputs: Any, models: dict[str, dict[str, Any]]
             ) -> dict[str, Any]:
    """What a run is, for its fingerprint: settings as asked, input and model contents."""
    return {"params": params, "inputs": inputs,
            "models": {k: m["sha256"] for k, m in models.items()}}


def requested(rt: RuntimeConfig) -> dict[str, Any]:
    """The runtime settings that can change the numbers, as the user asked for them."""
    return {"precision": rt.precision, "dnabert_budget": rt.dnabert_budget or "auto",
            "esm_budget": rt.esm_budget or "auto", "unit_frames": rt.unit_frames}


def model_paths(models: dict[str, ResolvedModel]) -> dict[str, str]:
    """The files the workers load, by model kind."""
    return {k: str(m.path) for k, m in models.items()}


def worker_specs(rt: RuntimeConfig, paths: dict[str, str], *,
                 save_embeddings: bool = False, recorded: Plan | None = None,
                 render: Render | None = None) -> tuple[WorkerSpec, ...]:
    """One spec per worker process: its device, and its share of the CPUs or of the GPU.
    Threads follow the CPUs this process may use, unless given, or recorded by an earlier
    run of the same output (the thread count can change the last bits on a CPU)."""
    from virnucpro.runtime.devices import parse_devices, visible_gpus
    from virnucpro.runtime.host import available_cpus

    check_runtime(rt)
    devices = parse_devices(rt.device, rt.gpus, visible_gpus())
    n_workers = rt.workers or len(devices)
    placed = [devices[i % len(devices)] for i in range(n_workers)]
    on_cpu = placed[0] == "cpu"
    if rt.threads:
        threads = rt.threads
    elif recorded is not None:
        threads = recorded.threads
    else:
        threads = max(1, available_cpus() // n_workers) if on_cpu else 2
    return tuple(WorkerSpec(
        dnabert_dir=paths["dnabert"], esm_dir=paths["esm"],
        classifier_path=paths.get("classifier"), device=d, threads=threads,
        save_embeddings=save_embeddings, share=placed.count(d), render=render,
        log_level=_worker_log_level()) for d in placed)


def _worker_log_level() -> int:
    """Workers say warnings and errors (the parent logs the plan), and everything with -v."""
    level = logging.getLogger().getEffectiveLevel()
    return level if level <= logging.DEBUG else max(level, logging.WARNING)
