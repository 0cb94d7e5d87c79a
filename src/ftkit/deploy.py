"""`EndpointDeployer`: deploy a registered model behind an online endpoint, score it, and always clean up.

Backend-agnostic (layer 4): it drives any :class:`~ftkit.backends.base.Backend` (Azure ML or local) and
imports no SDK. As a context manager it deletes the endpoint on the way out, even when the code inside
fails, so nobody pays for a forgotten endpoint::

    with EndpointDeployer(backend, "ultrachat-1700000000", settings=job.deploy) as deployer:
        deployer.deploy(registered, base_model=model)          # endpoint, deployment, 100% traffic
        print(deployer.invoke(conversation))                    # always names the deployment
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import attrs

from .backends.base import Backend, DeploymentInfo, DeploymentSpec, EndpointInfo, EndpointSpec, RegisteredModel
from .exceptions import FtkitError, Problem, ValidationError
from .jobfile import DeploySection, JobFile, ScoreSection
from .model import FoundationModelRef

__all__ = ["EndpointDeployer", "answer_text", "request_body"]

Conversation = Sequence[Mapping[str, Any]]


def request_body(conversation: Conversation, parameters: ScoreSection | None = None) -> dict[str, Any]:
    """Return the notebook's scoring body for one conversation.

    Args:
        conversation: The messages (``{"role": ..., "content": ...}``), as in the dataset's ``messages``.
        parameters: Sampling parameters (the notebook's by default).

    Returns:
        ``{"input_data": {"input_string": [conversation], "parameters": {...}}, "params": {}}``: a list holding
        one conversation, as the notebook sends since its "bugfix in inference after deployment".
    """
    p = parameters or ScoreSection()
    return {
        "input_data": {
            "input_string": [[dict(m) for m in conversation]],
            "parameters": {
                "temperature": p.temperature,
                "top_p": p.top_p,
                "do_sample": p.do_sample,
                "max_new_tokens": p.max_new_tokens,
            },
        },
        "params": {},
    }


def answer_text(response: Any) -> str:
    """Return the text of an endpoint's answer.

    Understands ``{"output": "..."}`` (local and Azure ML chat models) and the list forms some scoring scripts
    return (``["..."]``, ``[{"0": "..."}]``); anything else comes back as JSON.

    Args:
        response: The endpoint's parsed answer.

    Returns:
        The answer's text.
    """
    value = response
    if isinstance(value, Mapping) and "output" in value:
        value = value["output"]
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
        if isinstance(value, Mapping) and len(value) == 1:  # [{"0": "..."}]: a one-column frame's row
            value = next(iter(value.values()))
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


class EndpointDeployer:
    """Creates an endpoint, deploys models behind it, routes traffic, scores, and deletes it.

    Args:
        backend: Where the endpoint lives.
        name: The endpoint's name.
        settings: The job's ``deploy`` section: the :class:`~ftkit.deployment_settings.DeploymentSettings`
            every deployment gets, the deployment's name, the local server's settings and ``keep``.
        score: Default sampling parameters for :meth:`invoke`.
        description: The endpoint's description.
        tags: Extra endpoint tags.
        base_model: The foundation model, whose ``inference_compute_allow_list`` is checked on deploy.
        allow_any_instance_type: Deploy even when the instance type is not in that allow-list.
        on_event: Told a line of progress at each step.
    """

    def __init__(
        self,
        backend: Backend,
        name: str,
        *,
        settings: DeploySection | None = None,
        score: ScoreSection | None = None,
        description: str = "",
        tags: Mapping[str, str] | None = None,
        base_model: FoundationModelRef | None = None,
        allow_any_instance_type: bool = False,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.name = name
        self.settings = settings or DeploySection()
        self.score_parameters = score or ScoreSection()
        self.description = description
        self.tags = dict(tags or {})
        self.base_model = base_model
        self.allow_any_instance_type = allow_any_instance_type
        self._on_event = on_event
        self._info: EndpointInfo | None = None
        self._keep = self.settings.keep
        self.deployments: list[str] = []

    @classmethod
    def from_job(
        cls,
        backend: Backend,
        job: JobFile,
        *,
        name: str,
        model_ref: FoundationModelRef | None = None,
        **kwargs: Any,
    ) -> EndpointDeployer:
        """Build a deployer from a job file's ``deploy`` and ``score`` sections.

        Args:
            backend: Where the endpoint lives.
            job: The job file.
            name: The endpoint's name.
            model_ref: The resolved foundation model (for the inference allow-list).
            **kwargs: Passed to the constructor.

        Returns:
            The deployer.
        """
        kwargs.setdefault("description", f"ftkit endpoint for {job.name}")
        kwargs.setdefault("tags", {"ftkit.job": job.name})
        return cls(backend, name, settings=job.deploy, score=job.score, base_model=model_ref, **kwargs)

    def _emit(self, message: str) -> None:
        if self._on_event is not None:
            self._on_event(message)

    # ------------------------------------------------------------------ lifecycle

    def create(self) -> EndpointInfo:
        """Create the endpoint (key auth) and wait until it is ready; idempotent."""
        if self._info is None:
            self._emit(f"creating endpoint {self.name}")
            spec = EndpointSpec(
                name=self.name, description=self.description, tags=self.tags, server=self.settings.server
            )
            self._info = self.backend.endpoints.create_endpoint(spec)
        return self._info

    def check_instance_type(self, instance_type: str, base_model: FoundationModelRef | None = None) -> None:
        """Check ``instance_type`` against the base model's inference allow-list (case-insensitive).

        Raises:
            ValidationError: It is not allowed (unless ``allow_any_instance_type``); lists the allowed sizes.
        """
        model = base_model or self.base_model
        if model is None or self.allow_any_instance_type:
            return
        allowed = model.inference_compute_allow_list
        if allowed is None or instance_type.lower() in {a.lower() for a in allowed}:
            return
        raise ValidationError(
            [
                Problem(
                    "deploy.instance_type",
                    f"{instance_type} is not in {model.name}'s inference_compute_allow_list",
                    f"choose one of: {', '.join(allowed)} (or pass allow_any_instance_type=True)",
                )
            ],
            "cannot deploy on this instance type",
        )

    def _spec(self, model: RegisteredModel, name: str, instance_type: str | None) -> DeploymentSpec:
        settings = self.settings.deployment_settings()
        if instance_type is not None:
            settings = attrs.evolve(settings, instance_type=instance_type)
        return DeploymentSpec(name=name, endpoint=self.name, model=model, settings=settings)

    def add_deployment(
        self,
        model: RegisteredModel,
        *,
        name: str | None = None,
        instance_type: str | None = None,
        base_model: FoundationModelRef | None = None,
    ) -> DeploymentInfo:
        """Deploy ``model`` without routing traffic to it (creating the endpoint first if needed).

        Raises:
            ValidationError: The instance type is not in the model's inference allow-list.
            DeploymentError: The deployment failed (with its logs when they could be read).
            QuotaError: Not enough quota for the instance type.
        """
        spec = self._spec(model, name or self.settings.deployment_name, instance_type)
        self.check_instance_type(spec.settings.instance_type, base_model)
        self.create()
        self._emit(
            f"deploying {model.name}:{model.version} as {self.name}/{spec.name} on {spec.settings.instance_type}"
        )
        info = self.backend.endpoints.create_deployment(spec)
        if spec.name not in self.deployments:
            self.deployments.append(spec.name)
        return info

    def deploy(
        self,
        model: RegisteredModel,
        *,
        name: str | None = None,
        instance_type: str | None = None,
        base_model: FoundationModelRef | None = None,
    ) -> EndpointInfo:
        """Deploy ``model`` and route 100% of the traffic to it (the notebook's step 7).

        Args:
            model: The registered model.
            name: The deployment's name (default: ``settings.deployment_name``).
            instance_type: Override of ``settings.instance_type``.
            base_model: The foundation model for the allow-list check (default: the deployer's).

        Returns:
            The endpoint, serving the new deployment.
        """
        info = self.add_deployment(model, name=name, instance_type=instance_type, base_model=base_model)
        return self.set_traffic({info.name: 100})

    def set_traffic(self, traffic: Mapping[str, int]) -> EndpointInfo:
        """Route traffic between deployments (percentages adding up to 100)."""
        self._emit(f"routing {self.name}: {dict(traffic)}")
        self._info = self.backend.endpoints.set_traffic(self.name, traffic)
        return self._info

    def update(
        self,
        model: RegisteredModel,
        *,
        name: str = "green",
        traffic: int = 100,
        delete_old: bool = False,
        smoke_test: Conversation | None = None,
        base_model: FoundationModelRef | None = None,
    ) -> EndpointInfo:
        """Blue/green: deploy ``model`` beside the current deployment, then shift traffic to it.

        Args:
            model: The new model.
            name: The new deployment's name.
            traffic: Percent of traffic the new deployment gets; the current one keeps the rest.
            delete_old: Delete the old deployment once the new one has all the traffic.
            smoke_test: A conversation scored on the new deployment before any traffic moves.
            base_model: The foundation model for the allow-list check.

        Returns:
            The endpoint after the shift.
        """
        current = self.primary_deployment()
        self.add_deployment(model, name=name, base_model=base_model)
        if smoke_test is not None:
            self.invoke(smoke_test, deployment=name)
        if current is None or current == name:
            return self.set_traffic({name: 100})
        info = self.set_traffic({name: traffic, current: 100 - traffic})
        if delete_old and traffic == 100:
            self._emit(f"deleting deployment {self.name}/{current}")
            self.backend.endpoints.delete_deployment(self.name, current)
            self.deployments = [d for d in self.deployments if d != current]
            info = self.backend.endpoints.get_endpoint(self.name)
            self._info = info
        return info

    def primary_deployment(self) -> str | None:
        """The deployment receiving the most traffic (``None`` when none does)."""
        if self._info is None:
            return self.deployments[-1] if self.deployments else None
        live = {k: v for k, v in self._info.traffic.items() if v > 0}
        if not live:
            return self.deployments[-1] if self.deployments else None
        return max(sorted(live), key=lambda k: live[k])

    # ------------------------------------------------------------------ scoring

    def request_body(self, conversation: Conversation, parameters: ScoreSection | None = None) -> dict[str, Any]:
        """Return the scoring body for ``conversation`` (see :func:`request_body`)."""
        return request_body(conversation, parameters or self.score_parameters)

    def invoke(
        self,
        conversation_or_body: Conversation | Mapping[str, Any],
        *,
        deployment: str | None = None,
        parameters: ScoreSection | None = None,
        timeout_s: float | None = None,
    ) -> Any:
        """Score one conversation (or send a ready body), always naming the deployment.

        Args:
            conversation_or_body: A list of messages, or a full body with ``input_data``.
            deployment: The deployment to score (default: the one with most traffic).
            parameters: Sampling parameters (default: the deployer's).
            timeout_s: Request timeout (default: the deployment's request timeout).

        Returns:
            The endpoint's parsed answer.
        """
        if isinstance(conversation_or_body, Mapping):
            body: Mapping[str, Any] = conversation_or_body
        else:
            body = self.request_body(conversation_or_body, parameters)
        target = deployment or self.primary_deployment()
        if target is None:
            raise ValidationError(
                [Problem("deployment", f"endpoint {self.name} has no deployment yet", "call deploy() first")]
            )
        timeout = timeout_s if timeout_s is not None else self.settings.request_timeout_ms / 1000
        return self.backend.endpoints.score(self.name, body, deployment=target, timeout_s=timeout)

    def logs(self, deployment: str | None = None, *, lines: int = 200) -> str:
        """Return the last lines of a deployment's logs (default: the primary deployment)."""
        target = deployment or self.primary_deployment() or self.settings.deployment_name
        return self.backend.endpoints.get_logs(self.name, target, lines=lines)

    def delete(self) -> None:
        """Delete the endpoint and its deployments (no error when already gone)."""
        self._emit(f"deleting endpoint {self.name}")
        self.backend.endpoints.delete_endpoint(self.name)
        self._info = None
        self.deployments = []

    # ------------------------------------------------------------------ context management

    @contextmanager
    def session(self, *, keep: bool | None = None) -> Iterator[EndpointDeployer]:
        """Yield the deployer; on the way out delete the endpoint unless ``keep`` (default ``settings.keep``).

        The endpoint is deleted even when the block raises; a failure to delete is added as a note to the
        block's error rather than hiding it.
        """
        keep = self.settings.keep if keep is None else keep
        try:
            yield self
        except BaseException as exc:
            if not keep:
                self._delete_quietly(exc)
            raise
        if not keep:
            self.delete()

    def _delete_quietly(self, exc: BaseException) -> None:
        try:
            self.delete()
        except FtkitError as cleanup:
            exc.add_note(f"ftkit could not delete endpoint {self.name}: {cleanup}; delete it by hand")
            print(f"warning: endpoint {self.name} may still exist: {cleanup}", file=sys.stderr)

    def __enter__(self) -> EndpointDeployer:
        try:
            self.create()
        except BaseException as exc:
            # A create that failed while polling may have left the endpoint behind: remove it.
            if not self._keep:
                self._delete_quietly(exc)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._keep:
            return
        if exc is not None:
            self._delete_quietly(exc)
        else:
            self.delete()
