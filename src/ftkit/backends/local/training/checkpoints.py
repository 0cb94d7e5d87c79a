"""Checkpoints of a run: written atomically, found again, loaded to resume.

A checkpoint holds the trainable weights, the optimizer, the scheduler and the RNG states under
``OUTPUT_DIR/checkpoints/checkpoint-STEP``; ``state.json`` is written last, so a checkpoint without it is
incomplete and ignored. A full disk leaves no half checkpoint and is reported as the ``OSError`` it is.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ....storage import storage_cause
from . import stopping

__all__ = ["latest_checkpoint", "load_checkpoint", "raise_storage", "save_checkpoint"]

_CHECKPOINTS = "checkpoints"


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """Return the newest complete checkpoint under ``output_dir``, or ``None``."""
    root = Path(output_dir) / _CHECKPOINTS
    if not root.is_dir():
        return None
    done = [p for p in root.iterdir() if p.name.startswith("checkpoint-") and (p / "state.json").is_file()]
    done = [p for p in done if p.name.removeprefix("checkpoint-").isdigit()]
    return max(done, key=lambda p: int(p.name.removeprefix("checkpoint-")), default=None)


def raise_storage(exc: BaseException, path: Path) -> None:
    """A full disk reported as torch's or safetensors' own error becomes the ``OSError`` it is."""
    if isinstance(exc, Exception) and not isinstance(exc, OSError):
        cause = storage_cause(exc, path)
        if cause is not None:
            raise cause from exc


def save_checkpoint(
    torch: Any, out: Path, step: int, named: Mapping[str, Any], opt: Any, sched: Any, limit: int
) -> None:
    """Write the checkpoint of ``step`` under ``out`` atomically, keeping the newest ``limit`` (``-1``: all)."""
    root = out / _CHECKPOINTS
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in named.items()}, tmp / "trainable.pt")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        torch.save(sched.state_dict(), tmp / "scheduler.pt")
        rng: dict[str, Any] = {"torch": torch.random.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        stopping.pause_for_tests("checkpoint")
        # state.json last: a checkpoint without it is incomplete and ignored.
        (tmp / "state.json").write_text(json.dumps({"global_step": step}), encoding="utf-8")
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk leaves no half checkpoint behind
        raise_storage(exc, tmp)
        raise
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)  # atomic on one filesystem: a kill leaves either the old set or the new one
    if limit > 0:
        done = sorted(
            (p for p in root.iterdir() if p.name.startswith("checkpoint-")),
            key=lambda p: int(p.name.removeprefix("checkpoint-")),
        )
        for old in done[:-limit]:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(torch: Any, ckpt: Path, named: Mapping[str, Any], opt: Any, sched: Any) -> int:
    """Copy checkpoint ``ckpt`` into the weights, optimizer, scheduler and RNG; return its step."""
    weights = torch.load(ckpt / "trainable.pt", map_location="cpu", weights_only=True)
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(weights[k].to(p.device, p.dtype))
    opt.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    sched.load_state_dict(torch.load(ckpt / "scheduler.pt", weights_only=True))
    rng = torch.load(ckpt / "rng.pt", weights_only=False)  # our own file: RNG states are not plain tensors
    torch.random.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((ckpt / "state.json").read_text(encoding="utf-8"))
    return int(state["global_step"])
