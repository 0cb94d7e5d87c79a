"""What the local training loop is given for a plan, as ``ftkit run --dry-run`` shows it (built offline)."""

from __future__ import annotations

from typing import Any

from ...plan import RunPlan

__all__ = ["training_request"]


def training_request(plan: RunPlan) -> dict[str, Any]:
    """Return the spec in Python form plus the job's ``local:`` settings: what the local training loop is given.

    Args:
        plan: The checked plan.

    Returns:
        A JSON-ready mapping.
    """
    job = plan.job
    model_dir = str(job.resolve_path(job.model.path)) if job.model.path else None
    return {
        "model_dir": model_dir,
        "model": None if job.model.path else plan.model.asset_id,
        "train_file": plan.train_data,
        "eval_file": plan.test_data,
        "device": job.local.device,
        "parameters": plan.spec.parameters(),
        "local": {
            k: v
            for k, v in (
                ("save_steps", job.local.save_steps),
                ("lora_target_modules", job.local.lora_target_modules),
                ("max_eval_examples", job.local.max_eval_examples),
            )
            if v is not None
        },
    }
