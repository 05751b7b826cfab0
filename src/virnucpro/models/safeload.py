"""Read untrusted PyTorch pickles (`torch.save` files) without running code from them.

Why torch's weights-only unpickler rather than a `pickle.Unpickler` subclass: it is a separate,
small pickle machine that resolves every GLOBAL against an allowlist *before* anything is called,
knows only the opcodes `torch.save` emits, and already handles the zip container, storages,
persistent ids and `map_location`. A `find_class` allowlist on `pickle.Unpickler` would give the
same guarantee only after we re-implemented torch's private `persistent_load`/storage handling.

Classes a model file needs but that we will not run (a script's `__main__.MLPClassifier`, the
`torch.nn` modules inside it) are mapped to `PickledObject` records: creating one calls no
constructor, and "building" it only stores the pickled attribute dict. Nothing from the file runs.
"""

from __future__ import annotations

import pickle
import re
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from virnucpro.errors import ModelError


class PickledObject:
    """Inert record of a pickled object: its global name and its attribute dict."""

    pickled_name = "?"

    def __init__(self) -> None:  # pragma: no cover - the unpickler never calls __init__
        self.state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<pickled {self.pickled_name}>"


def record_type(name: str) -> type[PickledObject]:
    """A distinct inert `PickledObject` subclass standing in for the global `name`."""
    return type(f"Pickled[{name}]", (PickledObject,), {"pickled_name": name})


def load_pickle(path: Path, allowed: Iterable[tuple[Any, str]] = ()) -> Any:
    """Unpickle a `torch.save` file on CPU, allowing only torch's tensor globals plus `allowed`.

    `allowed` holds `(object, "module.Name")` pairs: the name found in the file and what it
    becomes. Anything else is refused with a `ModelError` naming the file and the global.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    allowed = list(allowed)
    with torch.serialization.safe_globals(allowed), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's protocol notes; we report below
        try:
            # weights_only=True is explicit, so no environment variable can turn it off.
            return torch.load(path, map_location="cpu", weights_only=True,
                              mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as exc:
            raise ModelError(_refusal(path, str(exc))) from None
        except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path}: not a readable PyTorch file ({first})") from None


def unsafe_globals(path: Path) -> list[str]:
    """Globals in a zip-format `torch.save` file that the current allowlist would refuse."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # a static scan that fails just gives no names; the load already failed
        return []


def _refusal(path: Path, message: str) -> str:
    # Called inside the safe_globals context, so the static scan sees the same allowlist.
    names = unsafe_globals(path)
    if not names:
        found = re.search(r"GLOBAL (\S+)", message)
        names = [found.group(1)] if found else []
    if names:
        listed = ", ".join(names)
        return (f"{path}: refusing to load: it needs the disallowed global(s) {listed}; "
                "a model file should hold only weights, and nothing from it was run")
    detail = next((ln.strip() for ln in reversed(message.splitlines()) if ln.strip()
                   and "documentation" not in ln), "unsupported content")
    return (f"{path}: refusing to load: not a weights-only torch.save file ({detail}); "
            "nothing from it was run")
