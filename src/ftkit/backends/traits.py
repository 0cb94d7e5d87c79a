"""What ftkit knows about a backend from its name alone: its :class:`BackendTraits`.

Some questions come before any backend exists: ``ftkit validate`` and ``ftkit run --dry-run`` read no credential
and start nothing, yet must know whether a job's ``local:`` section and model directory matter, whether the
component schema is the service's to decide, and what the job would be submitted as. Each backend answers them
once, in one frozen value registered here beside its name; a live backend hands back the same value as its
:attr:`~ftkit.backends.base.Backend.traits`. Callers ask ``backend_traits(job.backend).runs_here``; none compares
names.

This module imports nothing of ftkit's but its errors, so the values layer (the job file, the plan, the checks)
may read it without pulling in a backend.
"""

from __future__ import annotations

import attrs

from ..exceptions import Problem, ValidationError

__all__ = ["TRAITS", "BackendTraits", "backend_traits"]


@attrs.frozen(kw_only=True)
class BackendTraits:
    """How one backend behaves, known without creating it (no credentials, no I/O).

    Attributes:
        name: The backend's name (``backend:`` in the job file, ``--backend`` on the command line).
        runs_here: It trains and serves on this machine: the job's ``local:`` section, ``model.path`` and a CUDA
            device are checked here, its jobs' folders, logs and processes and its endpoints' keys are under the
            ftkit home, and a second deployment costs memory rather than money.
        trains_on_cluster: Training runs on a named compute cluster (``compute.cluster``), whose VM size says how
            many GPUs a node has; a plan made offline needs ``compute.gpus_per_node``. Otherwise one device.
        live_schema: The fine-tuning component's schema is the service's: a version ftkit has no snapshot of is
            checked when the run plans against the live one. Otherwise ftkit's bundled snapshot is all there is.
        resumes_jobs: A stopped training job keeps a checkpoint and the next run of the same job resumes it, so an
            interrupted run stops its job (a job that cannot resume is left running, and the report says how to
            cancel it).
        cli_default: ``ftkit job`` and ``ftkit cleanup`` use this backend when ``--backend`` is not given.
        request_label: What a dry run calls the job's body (``ftkit run --dry-run``).
        request_body: ``module:function`` that builds that body from a :class:`~ftkit.plan.RunPlan`, offline
            (called by :func:`ftkit.cli.dry_run.submission_body`; named, not imported, so no backend loads here).
    """

    name: str
    runs_here: bool
    trains_on_cluster: bool
    live_schema: bool
    resumes_jobs: bool
    cli_default: bool
    request_label: str
    request_body: str

    def command(self, command: str) -> str:
        """Return an ``ftkit`` command line as it reaches this backend (``--backend NAME`` unless the default).

        Args:
            command: The command, e.g. ``ftkit cleanup`` or ``ftkit job cancel JOB``.

        Returns:
            The command to show the user.
        """
        return command if self.cli_default else f"{command} --backend {self.name}"


# Backend name -> its traits. A new backend adds its entry here and its factory to ``BACKENDS`` (``__init__``).
TRAITS: dict[str, BackendTraits] = {
    "azureml": BackendTraits(
        name="azureml",
        runs_here=False,
        trains_on_cluster=True,
        live_schema=True,
        resumes_jobs=False,  # a cancelled pipeline job cannot be resumed
        cli_default=False,
        request_label="pipeline job body (PUT .../jobs/{name})",
        request_body="ftkit.backends.azureml.pipeline:offline_body",
    ),
    "local": BackendTraits(
        name="local",
        runs_here=True,
        trains_on_cluster=False,
        live_schema=False,
        resumes_jobs=True,
        cli_default=True,
        request_label="local training request",
        request_body="ftkit.backends.local.request:training_request",
    ),
}


def backend_traits(name: str) -> BackendTraits:
    """Return the traits of the backend called ``name``.

    Args:
        name: ``azureml`` or ``local``.

    Returns:
        Its traits.

    Raises:
        ValidationError: No backend has that name.
    """
    traits = TRAITS.get(name)
    if traits is None:
        raise ValidationError([Problem("backend", f"unknown backend {name!r}", f"choose one of: {', '.join(TRAITS)}")])
    return traits
