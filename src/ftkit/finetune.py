"""`FinetunePipelineSpec`: the fine-tuning parameters of one run, checked against the component.

The notebook's values are the defaults (3 epochs, batch 1/1, lr 5e-6, cosine, LoRA on, DeepSpeed stage 2).
Any other input the component declares goes in :attr:`FinetunePipelineSpec.extra`.

Precedence with the model's ``model_specific_defaults`` tag (see :meth:`FinetunePipelineSpec.with_model_defaults`):

* ``model_defaults: model`` (the default, as in the notebook): the registry's tuned values replace the job's
  for the keys the tag names. Unlike the notebook, every replaced value is reported.
* ``model_defaults: job``: the job's values win; the tag only fills parameters the job leaves unset.
* ``model_defaults: ignore``: the tag is not used at all (each of its keys is reported as ignored).
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Literal

import attrs

from .component import DEFAULT_COMPONENT, DEFAULT_COMPONENT_VERSION, ComponentSchema, encode_parameters
from .convert import BAD, SEED_MAX, bounds, convert_value
from .exceptions import ParameterError, Problem

__all__ = ["FinetunePipelineSpec", "ModelDefaultsPolicy", "ParameterOverride"]

ModelDefaultsPolicy = Literal["model", "job", "ignore"]

# Component inputs that ftkit wires itself from other job-file sections; setting them under `finetune`
# would silently fight that wiring, so they are rejected with a pointer to the right place.
RESERVED_INPUTS: Mapping[str, str] = {
    "mlflow_model_path": "model",
    "pytorch_model_path": "model",
    "huggingface_id": "model",
    "compute_model_import": "compute.cluster",
    "compute_preprocess": "compute.cluster",
    "compute_finetune": "compute.cluster",
    "compute_model_evaluation": "compute.cluster",
    "number_of_gpu_to_use_finetuning": "compute.gpus_per_node (read from the SKU list)",
    "train_file_path": "data",
    "validation_file_path": "data",
    "test_file_path": "data",
    "train_mltable_path": "data",
    "validation_mltable_path": "data",
    "test_mltable_path": "data",
}


@attrs.frozen
class ParameterOverride:
    """A parameter on which the job and the model's ``model_specific_defaults`` tag disagree.

    Attributes:
        name: The parameter.
        job_value: The value from the job (or ftkit's default), ``None`` when unset.
        model_value: The value from the model's tag.
        winner: ``"model"`` or ``"job"``: whose value the run uses.
    """

    name: str
    job_value: object
    model_value: object
    winner: Literal["model", "job"]

    def __str__(self) -> str:
        if self.winner == "model":
            return f"{self.name}: {self.job_value!r} -> {self.model_value!r} (model_specific_defaults)"
        return f"{self.name}: kept {self.job_value!r}, model suggests {self.model_value!r}"


@attrs.frozen(kw_only=True)
class FinetunePipelineSpec:
    """Training and optimisation parameters for the ``chat_completion_pipeline`` component.

    Values may be given in Python form (``apply_lora=True``, ``deepspeed_stage=2``); :meth:`encoded` checks
    them against the component's declared inputs and returns its encoding (``"true"``, ``"2"``). ``None``
    means "the component's default".

    Attributes:
        component_name: The registry component.
        component_version: Its pinned version (never silently "latest").
        model_defaults: Precedence of the model's ``model_specific_defaults`` tag (module docs).
        num_train_epochs: Epochs.
        per_device_train_batch_size: Per-GPU training batch.
        per_device_eval_batch_size: Per-GPU evaluation batch.
        learning_rate: Starting learning rate.
        lr_scheduler_type: Learning-rate schedule.
        apply_lora: Train LoRA adapters instead of all weights.
        apply_deepspeed: Use DeepSpeed.
        deepspeed_stage: DeepSpeed ZeRO stage (2 or 3).
        gradient_accumulation_steps: Gradient accumulation.
        max_seq_length: Truncation length (-1: the model's maximum).
        save_total_limit: Checkpoints kept (-1: all).
        num_nodes_finetune: Nodes for distributed training.
        max_steps: Total steps, overriding epochs when > 0.
        warmup_steps: Learning-rate warmup steps.
        weight_decay: AdamW weight decay.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha.
        lora_dropout: LoRA dropout.
        merge_lora_weights: Merge adapters into the base weights when saving.
        precision: ``32`` or ``16``.
        seed: Random seed.
        logging_steps: Steps between metric logs.
        evaluation_strategy: ``epoch``, ``steps`` or ``disable``.
        eval_steps: Steps between evaluations when the strategy is ``steps``.
        extra: Any other input the component declares.
    """

    NOTEBOOK_DEFAULTS: ClassVar[Mapping[str, object]] = {
        "num_train_epochs": 3,
        "per_device_train_batch_size": 1,
        "per_device_eval_batch_size": 1,
        "learning_rate": 5e-6,
        "lr_scheduler_type": "cosine",
        "apply_lora": True,
        "apply_deepspeed": True,
        "deepspeed_stage": 2,
    }

    component_name: str = DEFAULT_COMPONENT
    component_version: str = DEFAULT_COMPONENT_VERSION
    model_defaults: ModelDefaultsPolicy = "model"
    num_train_epochs: int | None = attrs.field(default=3, metadata=bounds(1, 10_000))
    per_device_train_batch_size: int | None = attrs.field(default=1, metadata=bounds(1, 65_536))
    per_device_eval_batch_size: int | None = attrs.field(default=1, metadata=bounds(1, 65_536))
    learning_rate: float | None = attrs.field(default=5e-6, metadata=bounds(maximum=1, exclusive_minimum=0))
    lr_scheduler_type: str | None = "cosine"
    apply_lora: bool | None = True
    apply_deepspeed: bool | None = True
    deepspeed_stage: int | None = 2
    gradient_accumulation_steps: int | None = attrs.field(default=None, metadata=bounds(1, 65_536))
    max_seq_length: int | None = attrs.field(default=None, metadata=bounds(-1, 1_048_576))
    save_total_limit: int | None = attrs.field(default=None, metadata=bounds(-1, 100_000))
    num_nodes_finetune: int | None = attrs.field(default=None, metadata=bounds(1, 1_000))
    max_steps: int | None = attrs.field(default=None, metadata=bounds(-1, 100_000_000))
    warmup_steps: int | None = attrs.field(default=None, metadata=bounds(0, 100_000_000))
    weight_decay: float | None = attrs.field(default=None, metadata=bounds(0, 1))
    lora_r: int | None = attrs.field(default=None, metadata=bounds(1, 4_096))
    lora_alpha: int | None = attrs.field(default=None, metadata=bounds(1, 65_536))
    lora_dropout: float | None = attrs.field(default=None, metadata=bounds(0, 1))
    merge_lora_weights: bool | None = None
    precision: int | None = None
    seed: int | None = attrs.field(default=None, metadata=bounds(0, SEED_MAX))
    logging_steps: int | None = attrs.field(default=None, metadata=bounds(1, 100_000_000))
    evaluation_strategy: str | None = None
    eval_steps: int | None = attrs.field(default=None, metadata=bounds(1, 100_000_000))
    extra: Mapping[str, object] = attrs.field(factory=dict, eq=False, hash=False)

    _SETTINGS: ClassVar[frozenset[str]] = frozenset({"component_name", "component_version", "model_defaults"})

    @classmethod
    def typed_parameter_names(cls) -> tuple[str, ...]:
        """Return the parameters that have their own typed field (the rest go in ``extra``)."""
        return tuple(a.name for a in attrs.fields(cls) if a.name not in cls._SETTINGS and a.name != "extra")

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], *, on_problem: Callable[[str, str], None] | None = None
    ) -> FinetunePipelineSpec:
        """Build a spec from a job file's ``finetune`` section, each typed field converted to its type.

        Exponent forms (``5e-6``, a string in YAML 1.1) and the component's encodings (``"true"``, ``"2"``)
        are accepted. Every other key goes to :attr:`extra` as given; the component schema decodes and checks
        those when the run is planned (:meth:`decoded`, :meth:`encoded`).

        Args:
            values: The section's keys and values.
            on_problem: Told ``(key, reason)`` for each value that cannot be converted; without it they are
                raised together.

        Returns:
            The spec (with ``on_problem``: of the values that converted, the others at their defaults).

        Raises:
            ParameterError: A value cannot be converted to its field's type (only without ``on_problem``).
        """
        typed = set(cls.typed_parameter_names()) | cls._SETTINGS
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in attrs.fields(cls)}
        kwargs: dict[str, Any] = {}
        problems: list[Problem] = []
        for key, value in values.items():
            if key not in typed:
                continue
            converted, reason = convert_value(value, hints[key], fields[key].metadata)
            if converted is BAD:
                problems.append(Problem(f"finetune.{key}", reason or "bad value"))
                if on_problem is not None:
                    on_problem(key, reason or "bad value")
            else:
                kwargs[key] = converted
        extra = {k: v for k, v in values.items() if k not in typed}
        if problems and on_problem is None:
            raise ParameterError(problems, f"{len(problems)} invalid finetune parameter(s)")
        # With on_problem, the values that converted still make a spec, for checks of the rest of the file.
        return cls(**kwargs, extra=extra)

    def decoded(self, schema: ComponentSchema) -> FinetunePipelineSpec:
        """Return the spec with :attr:`extra` decoded to Python values by the component's declared types.

        Values the schema does not declare, or cannot decode, are left as given for :meth:`encoded` to report.
        """
        extra: dict[str, object] = {}
        for key, value in self.extra.items():
            declared = schema.inputs.get(key)
            decoded, reason = schema.decode(key, value) if declared is not None else (value, None)
            extra[key] = value if reason is not None else decoded
        return attrs.evolve(self, extra=extra)

    def parameters(self) -> dict[str, object]:
        """Return every set parameter (typed fields and extras) in Python form, ``None`` values left out."""
        out: dict[str, object] = {}
        for name in self.typed_parameter_names():
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        out.update({k: v for k, v in self.extra.items() if v is not None})
        return out

    def schema(self) -> ComponentSchema:
        """Return the bundled schema of the pinned component version.

        Raises:
            ParameterError: ftkit ships no snapshot of that version.
        """
        return ComponentSchema.bundled(self.component_name, self.component_version)

    def encoded(
        self,
        schema: ComponentSchema | None = None,
        *,
        source: str | None = None,
        lines: Mapping[str, int] | None = None,
    ) -> dict[str, object]:
        """Check every parameter against the component and return them in its encoding.

        Args:
            schema: The component's declared inputs; the bundled snapshot of the pinned version by default.
            source: The job file, for messages.
            lines: Line numbers of the parameters in ``source``.

        Returns:
            Parameter name to value as the component expects it.

        Raises:
            ParameterError: Every problem at once: unknown names (with the closest ones), types, enums, bounds.
        """
        schema = schema if schema is not None else self.schema()
        problems: list[Problem] = []
        if (schema.name, schema.version) != (self.component_name, self.component_version):
            problems.append(
                Problem(
                    "finetune.component_version",
                    f"the job pins {self.component_name} {self.component_version} "
                    f"but the schema is {schema.name} {schema.version} ({schema.source})",
                    "pin the version the schema describes, or pass the matching spec",
                    source,
                    (lines or {}).get("component_version"),
                )
            )
        try:
            encoded = encode_parameters(self.parameters(), schema, reserved=RESERVED_INPUTS, source=source, lines=lines)
        except ParameterError as exc:
            problems.extend(exc.problems)
            encoded = {}
        if problems:
            raise ParameterError(problems, f"{len(problems)} invalid finetune parameter(s)")
        return encoded

    def with_model_defaults(
        self, defaults: Mapping[str, object], schema: ComponentSchema | None = None
    ) -> tuple[FinetunePipelineSpec, tuple[ParameterOverride, ...]]:
        """Merge the model's ``model_specific_defaults`` under this spec's :attr:`model_defaults` policy.

        The tag's values (strings such as ``"true"``, ``"16"``, ``"2e-5"``) are decoded first: typed fields by
        their type, other parameters by the component's declared type.

        Args:
            defaults: The model's tag, parsed (see :attr:`FoundationModelRef.model_specific_defaults`).
            schema: The component's declared inputs, to decode parameters without a typed field.

        Returns:
            The merged spec, and every parameter where job and model disagreed (or that the model adds),
            with who won.

        Raises:
            ParameterError: A tag value cannot be decoded to the parameter's type (each named).
        """
        hints = typing.get_type_hints(type(self))
        fields = {f.name: f for f in attrs.fields(type(self))}
        typed = set(self.typed_parameter_names())
        problems: list[Problem] = []
        decoded: dict[str, object] = {}
        for key, raw in defaults.items():
            if key in typed:
                value, reason = convert_value(raw, hints[key], fields[key].metadata)
            elif schema is not None and key in schema.inputs:
                value, reason = schema.decode(key, raw)
            else:
                value, reason = raw, None  # not a declared input: encoded() names it
            if value is BAD or reason is not None:
                problems.append(Problem(f"tags.model_specific_defaults.{key}", reason or "bad value"))
            else:
                decoded[key] = value
        if problems:
            raise ParameterError(problems, "the model's model_specific_defaults tag has values of the wrong type")
        current = self.parameters()
        merged = dict(current)
        overrides: list[ParameterOverride] = []
        for key, model_value in decoded.items():
            job_value = current.get(key)
            if job_value is not None and job_value == model_value:
                continue
            if self.model_defaults == "model" or (self.model_defaults == "job" and job_value is None):
                merged[key] = model_value
                overrides.append(ParameterOverride(key, job_value, model_value, "model"))
            else:
                overrides.append(ParameterOverride(key, job_value, model_value, "job"))
        # Fields the merge did not touch keep their value; explicit None keeps "component default".
        changes: dict[str, Any] = {k: v for k, v in merged.items() if k in typed}
        extra = {k: v for k, v in merged.items() if k not in typed}
        spec = attrs.evolve(self, **changes, extra=extra)
        return spec, tuple(overrides)

    def display_name(self, model_name: str, gpus_per_node: int, dataset: str = "ultrachat") -> str:
        """Return the notebook's pipeline display name.

        ``{model}-{dataset}-bs{total}-{scheduler}-{ds<stage>|nods}-{lora|nolora}-save_limit{n}-seqlen{n}``
        where total = per-device batch x gradient accumulation x GPUs per node x nodes.

        Args:
            model_name: The base model's name.
            gpus_per_node: GPUs per node of the training cluster.
            dataset: The dataset's short name.

        Returns:
            The display name.
        """
        total = (
            (self.per_device_train_batch_size or 1)
            * (self.gradient_accumulation_steps or 1)
            * gpus_per_node
            * (self.num_nodes_finetune or 1)
        )
        scheduler = self.lr_scheduler_type or "linear"
        ds = f"ds{self.deepspeed_stage or 2}" if self.apply_deepspeed else "nods"
        lora = "lora" if self.apply_lora else "nolora"
        save_limit = -1 if self.save_total_limit is None else self.save_total_limit
        seqlen = -1 if self.max_seq_length is None else self.max_seq_length
        return f"{model_name}-{dataset}-bs{total}-{scheduler}-{ds}-{lora}-save_limit{save_limit}-seqlen{seqlen}"
