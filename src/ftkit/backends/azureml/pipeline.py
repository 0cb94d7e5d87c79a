"""Build the ``chat_completion_pipeline`` job with azure-ai-ml, offline.

The same code builds the job that is submitted and the one ``ftkit render`` prints, so what you see is
what is sent. At submit time the component comes from the registry (by its pinned version); offline, a
stand-in component with the same inputs, outputs and registry id is built from the schema, which produces
the same REST body because a registry component is sent by id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...component import ComponentSchema
from ...plan import RunPlan
from .connection import quiet_azure_logging
from .tags import CREATED_BY_TAG

__all__ = ["build_pipeline_job", "component_from_schema", "data_input", "rest_body"]

# ftkit wires these inputs; the rest of the parameters come from the plan.
COMPUTE_INPUTS = (
    "compute_model_import",
    "compute_preprocess",
    "compute_finetune",
    "compute_model_evaluation",
)


def component_from_schema(schema: ComponentSchema) -> Any:
    """Return an azure-ai-ml pipeline component with ``schema``'s inputs and its registry asset id.

    Args:
        schema: The component's declared inputs and outputs.

    Returns:
        A ``PipelineComponent`` usable inside ``@pipeline``.
    """
    quiet_azure_logging()
    from azure.ai.ml import Input, Output
    from azure.ai.ml.entities import PipelineComponent

    inputs = {}
    for name, spec in schema.inputs.items():
        kwargs: dict[str, Any] = {"type": spec.type, "optional": spec.optional}
        if spec.default is not None and not spec.is_port:
            kwargs["default"] = spec.default
        if spec.enum is not None:
            kwargs["enum"] = list(spec.enum)
        if spec.min is not None:
            kwargs["min"] = spec.min
        if spec.max is not None:
            kwargs["max"] = spec.max
        inputs[name] = Input(**kwargs)
    outputs = {name: Output(type=kind) for name, kind in schema.outputs.items()}
    component = PipelineComponent(name=schema.name, version=schema.version, inputs=inputs, outputs=outputs, jobs={})
    # A registry component is referenced by id in the job body; give the stand-in the same id.
    component._id = schema.registry_asset_id
    return component


def data_input(path: str) -> Any:
    """Return a ``uri_file`` input for a local path, an ``azureml://`` URI or an ``azureml:name:version`` asset."""
    from azure.ai.ml import Input

    return Input(type="uri_file", path=path)


def build_pipeline_job(plan: RunPlan, *, component: Any, cluster: str) -> Any:
    """Build the pipeline job the notebook builds, from a checked plan.

    Args:
        plan: The checked run plan (parameters in the component's encoding).
        component: The pipeline component (from the registry, or :func:`component_from_schema`).
        cluster: The compute cluster every step runs on.

    Returns:
        An azure-ai-ml ``PipelineJob`` with ``force_rerun=True`` and ``continue_on_step_failure=False``.
    """
    quiet_azure_logging()
    from azure.ai.ml import Input
    from azure.ai.ml.dsl import pipeline

    parameters: dict[str, Any] = {}
    for name, value in plan.parameters.items():
        declared = plan.schema.inputs[name]
        parameters[name] = Input(type=declared.type, path=str(value)) if declared.is_port else value

    @pipeline(None, name=plan.display_name, display_name=plan.display_name)
    def chat_completion() -> dict[str, Any]:
        node = component(
            mlflow_model_path=Input(type="mlflow_model", path=plan.model.asset_id),
            **dict.fromkeys(COMPUTE_INPUTS, cluster),
            train_file_path=data_input(plan.train_data),
            test_file_path=data_input(plan.test_data),
            number_of_gpu_to_use_finetuning=plan.gpus_per_node,
            **parameters,
        )
        return {"trained_model": node.outputs.mlflow_model_folder}

    job = chat_completion()
    settings = job.settings
    assert settings is not None  # a dsl pipeline always has settings
    settings.force_rerun = True
    settings.continue_on_step_failure = False
    job.experiment_name = plan.experiment_name
    job.tags = {
        CREATED_BY_TAG: "ftkit",
        "ftkit.job": plan.job.name,
        "ftkit.component": f"{plan.schema.name}:{plan.schema.version}",
        "ftkit.base_model": plan.model.asset_id,
    }
    return job


def rest_body(job: Any) -> Mapping[str, Any]:
    """Return the REST body azure-ai-ml sends for ``job`` (``PUT .../jobs/{name}``), in the wire's camelCase keys."""
    return wire_body(job._to_rest_object())


def wire_body(rest: Any) -> dict[str, Any]:
    """Return an azure-ai-ml REST model as the JSON it sends (camelCase keys), on every supported version."""
    # Older azure-ai-ml (msrest models, before ~1.27) name attributes in snake_case in as_dict(); serialize()
    # is what they put on the wire. Newer ones (model_base) have no serialize() and as_dict() is the wire body.
    serialize = getattr(rest, "serialize", None)
    body: dict[str, Any] = serialize() if callable(serialize) else rest.as_dict()
    return body


def offline_body(plan: RunPlan) -> dict[str, Any]:
    """Return the azure-ai-ml REST body of ``plan``'s pipeline job, built offline (no credentials, no network).

    What ``ftkit render`` and ``ftkit run --dry-run`` show (the job's name is the service's to give).
    """
    component = component_from_schema(plan.schema)
    job = build_pipeline_job(plan, component=component, cluster=plan.job.compute.cluster)
    return {
        "name": None,
        "experiment_name": plan.experiment_name,
        "component": plan.schema.registry_asset_id,
        **dict(rest_body(job)),
    }
