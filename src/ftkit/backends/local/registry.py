"""The local model registry: MLflow's model registry on the ftkit home's store.

Every entry, whatever its origin, resolves to a :class:`~ftkit.backends.base.RegisteredModel` whose ``path`` is
a Hugging Face model directory that ``AutoModelForCausalLM.from_pretrained(path)`` and
``AutoTokenizer.from_pretrained(path)`` load directly (tokenizer and chat template included). That is the
contract the local endpoint server and the training loop rely on.

Two kinds of entries:

* :func:`register_model_dir`: an existing Hugging Face directory (a downloaded Phi-3, the tiny demo model),
  registered by reference: nothing is copied, the version's source is the directory.
* :func:`register_trained_model`: a fine-tuned model, logged into its training run as an MLflow
  ``transformers`` model (``mlflow.transformers.load_model("models:/name/1")`` loads it) and registered with
  lineage tags. Its ``path`` is the model folder inside that MLflow model, which also holds the tokenizer.

:func:`get_registered` looks an entry up by ``name`` (latest version), ``name:version`` or ``models:/name/version``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from ...exceptions import BackendError, MissingDependencyError, NotFoundError, Problem, ValidationError, closest
from ..base import RegisteredModel
from .leftovers import STAGING_PREFIX, staging_root
from .tracking import MlflowStore, client

__all__ = [
    "PATH_TAG",
    "REQUESTED_VERSION_TAG",
    "check_hf_dir",
    "get_registered",
    "list_registered",
    "parse_ref",
    "register_model_dir",
    "register_trained_model",
]

PATH_TAG = "ftkit.path"
KIND_TAG = "ftkit.kind"
REQUESTED_VERSION_TAG = "ftkit.version"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def _store(home_or_store: str | Path | MlflowStore) -> MlflowStore:
    return home_or_store if isinstance(home_or_store, MlflowStore) else MlflowStore.at(home_or_store)


def check_hf_dir(path: str | Path) -> Path:
    """Check that ``path`` looks like a Hugging Face causal-LM directory with a tokenizer.

    Args:
        path: The directory.

    Returns:
        Its absolute path.

    Raises:
        ValidationError: It is missing, or lacks ``config.json`` or tokenizer files.
    """
    p = Path(path).expanduser().absolute()
    problems = []
    if not p.is_dir():
        problems.append(Problem("model.path", f"{p} is not a directory", "give a Hugging Face model directory"))
    else:
        if not (p / "config.json").is_file() and not (p / "adapter_config.json").is_file():
            problems.append(Problem("model.path", f"{p} has no config.json", "give a Hugging Face model directory"))
        if not any((p / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            problems.append(
                Problem("model.path", f"{p} has no tokenizer files", "save the tokenizer next to the model")
            )
    if problems:
        raise ValidationError(problems, f"not a usable model directory: {p}")
    return p


def parse_ref(ref: str) -> tuple[str, str | None]:
    """Split ``name``, ``name:version`` or ``models:/name/version`` into name and version (``None``: latest)."""
    ref = ref.strip()
    if ref.startswith("models:/"):
        parts = ref.removeprefix("models:/").strip("/").split("/")
        if len(parts) == 1:
            return parts[0], None
        if len(parts) == 2:
            return parts[0], None if parts[1] == "latest" else parts[1]
        raise ValidationError([Problem("model", f"not a registry reference: {ref!r}", "use models:/NAME/VERSION")])
    name, _, version = ref.partition(":")
    if not name:
        raise ValidationError([Problem("model", f"not a registry reference: {ref!r}", "use NAME or NAME:VERSION")])
    if "'" in name:  # it would break MLflow's filter string (name='...'): an MlflowException, not a clear error
        raise ValidationError([Problem("model", f"{name!r}: a registered model name cannot hold a quote")])
    return name, (version or None) if version != "latest" else None


def _to_registered(mv: Any) -> RegisteredModel:
    tags = dict(mv.tags or {})
    raw = tags.get(PATH_TAG)
    return RegisteredModel(
        name=str(mv.name),
        version=str(mv.version),
        id=f"models:/{mv.name}/{mv.version}",
        tags=tags,
        path=Path(raw) if raw else None,
    )


def _ensure_registered_model(c: Any, name: str, description: str) -> bool:
    """Strictly private: make sure ``name`` exists; return whether this call created it."""
    from mlflow.exceptions import MlflowException

    try:
        c.get_registered_model(name)
    except MlflowException:
        try:
            c.create_registered_model(name, description=description or None)
        except MlflowException:
            c.get_registered_model(name)  # created concurrently: fine if it exists now
            return False
        return True
    return False


def _create_version(c: Any, name: str, description: str, **version: Any) -> Any:
    """Strictly private: register one version, all or nothing.

    A registered model created here is deleted again if its first version cannot be made (a full disk, a
    locked database), so no model without a version is left in the registry.
    """
    created = _ensure_registered_model(c, name, description)
    try:
        return c.create_model_version(name, description=description, **version)
    except BaseException:
        if created:
            try:
                if not c.search_model_versions(f"name='{name}'", max_results=1):
                    c.delete_registered_model(name)
            except Exception:  # the store may be what failed; the first error is the news
                logging.getLogger(__name__).warning("could not roll back registered model %s", name)
        raise


def _exists(uri: str) -> bool:
    try:
        return _local_path(uri).exists()
    except BackendError:
        return True  # not on this machine: never ours to remove


def _remove_artifacts(uri: str, existed: bool) -> None:
    """Strictly private: delete what a failed registration logged into the run (a partial model copy).

    Artifacts that were there before (an earlier registration of the same run) are left alone.
    """
    if not existed:
        shutil.rmtree(_local_path(uri), ignore_errors=True)


def register_model_dir(
    home: str | Path | MlflowStore,
    name: str,
    path: str | Path,
    tags: Mapping[str, str] | None = None,
    *,
    description: str = "",
) -> RegisteredModel:
    """Register an existing Hugging Face model directory by reference (no copy) as a new version of ``name``.

    Args:
        home: The ftkit home (or an explicit store).
        name: The registered model's name.
        path: The model directory (kept in place: do not delete it while the entry is used).
        tags: Tags for the version.
        description: The registered model's description (when it is created).

    Returns:
        The new version.

    Raises:
        ValidationError: ``path`` is not a model directory with a tokenizer.
        BackendError: The registry refused it.
    """
    p = check_hf_dir(path)
    c = client(_store(home))
    from mlflow.exceptions import MlflowException

    try:
        mv = _create_version(
            c, name, description, source=str(p), tags={**(tags or {}), PATH_TAG: str(p), KIND_TAG: "hf-dir"}
        )
    except MlflowException as exc:
        raise BackendError(f"cannot register {p} as {name!r}: {exc.message}", operation="register_model") from exc
    return _to_registered(mv)


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme not in ("", "file"):
        raise BackendError(f"artifacts at {uri} are not on this machine", operation="register_model")
    return Path(unquote(parsed.path))


def register_trained_model(
    home: str | Path | MlflowStore,
    name: str,
    *,
    run_id: str,
    model_dir: str | Path,
    tags: Mapping[str, str] | None = None,
    description: str = "",
    artifact_path: str = "model",
) -> RegisteredModel:
    """Log a trained Hugging Face model into its run as an MLflow transformers model, and register it.

    The MLflow model's ``model`` folder gets the tokenizer files too, so it is itself a loadable Hugging Face
    directory: that folder is the version's ``path``. A LoRA adapter directory (``merge_lora_weights: false``)
    is logged as plain files instead (``ftkit.kind`` ``peft-adapter``): it loads with transformers + peft but
    not with ``mlflow.transformers.load_model``.

    Args:
        home: The ftkit home (or an explicit store).
        name: The registered model's name.
        run_id: The training run (the version's lineage).
        model_dir: The trained model (merged weights, or a PEFT adapter directory with its base recorded).
        tags: Lineage tags for the version.
        description: The version's description.
        artifact_path: Where in the run's artifacts the MLflow model goes.

    Returns:
        The new version.

    Raises:
        ValidationError: ``model_dir`` is not a model directory with a tokenizer.
        BackendError: Logging or registering failed.
        MissingDependencyError: The ``local`` extra is not installed.
    """
    src = check_hf_dir(model_dir)
    store = _store(home)
    try:
        import mlflow.transformers
        from mlflow.exceptions import MlflowException
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "mlflow", "local") from None
    c = client(store)
    run = c.get_run(run_id)
    if (src / "adapter_config.json").is_file():
        return _register_adapter(c, name, run, src, tags or {}, description, artifact_path)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MLflow looks for a model card on the Hub; never go online
    # ...and warns that it found none (nor a licence) for a local directory: expected here, so not shown.
    logging.getLogger("mlflow.transformers").setLevel(logging.ERROR)
    model = AutoModelForCausalLM.from_pretrained(src)
    tokenizer = AutoTokenizer.from_pretrained(src)
    # Staged under the ftkit home (same disk as mlruns), named by this process: `ftkit cleanup` removes a copy
    # whose process was killed before it could.
    staging = staging_root(store.artifact_root.parent)
    with tempfile.TemporaryDirectory(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=staging) as tmp:
        staged = Path(tmp) / artifact_path
        try:
            mlflow.transformers.save_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                path=str(staged),
                task="llm/v1/chat",
                # Inferring requirements imports every optional package (torchvision...); state them instead.
                pip_requirements=["torch", "transformers", "accelerate", "tokenizers"],
            )
        except MlflowException as exc:
            raise BackendError(
                f"cannot save {src} as an MLflow model: {exc.message}", operation="register_model"
            ) from exc
        # Make the weights folder a complete HF directory: the endpoint server loads it as is.
        for f in _TOKENIZER_FILES:
            if (src / f).is_file():
                shutil.copy2(src / f, staged / "model" / f)
        model_uri = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        existed = _exists(model_uri)
        try:
            c.log_artifacts(run_id, str(staged), artifact_path)
        except BaseException:
            _remove_artifacts(model_uri, existed)  # a half-copied model must not stay in mlruns/
            raise
    hf_path = _local_path(model_uri) / "model"
    try:
        mv = _create_version(
            c,
            name,
            description,
            source=model_uri,
            run_id=run_id,
            tags={**(tags or {}), PATH_TAG: str(hf_path), KIND_TAG: "mlflow-transformers"},
        )
    except BaseException as exc:
        _remove_artifacts(model_uri, existed)
        if isinstance(exc, MlflowException):
            raise BackendError(
                f"cannot register run {run_id} as {name!r}: {exc.message}", operation="register_model"
            ) from exc
        raise
    return _to_registered(mv)


def _register_adapter(
    c: Any, name: str, run: Any, src: Path, tags: Mapping[str, str], description: str, artifact_path: str
) -> RegisteredModel:
    """Strictly private: register a LoRA adapter directory as plain run artifacts.

    MLflow's transformers flavour cannot save an adapter-only model with these library versions (transformers
    asks for a newer peft), so the adapter's files are logged as they are: the folder still loads with
    ``AutoModelForCausalLM.from_pretrained`` (transformers + peft, from the base recorded in the adapter).
    """
    from mlflow.exceptions import MlflowException

    uri = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
    existed = _exists(uri)
    try:
        c.log_artifacts(run.info.run_id, str(src), artifact_path)
        mv = _create_version(
            c,
            name,
            description,
            source=uri,
            run_id=run.info.run_id,
            tags={**tags, PATH_TAG: str(_local_path(uri)), KIND_TAG: "peft-adapter"},
        )
    except BaseException as exc:
        _remove_artifacts(uri, existed)
        if isinstance(exc, MlflowException):
            raise BackendError(f"cannot register the adapter of run {run.info.run_id}: {exc.message}") from exc
        raise
    return _to_registered(mv)


def list_registered(home: str | Path | MlflowStore) -> list[RegisteredModel]:
    """Return the latest version of every registered model, by name."""
    c = client(_store(home))
    out: list[RegisteredModel] = []
    for rm in c.search_registered_models(max_results=1000):
        versions = c.search_model_versions(f"name='{rm.name}'", max_results=1, order_by=["version_number DESC"])
        out.extend(_to_registered(v) for v in versions)
    return sorted(out, key=lambda m: m.name)


def get_registered(home: str | Path | MlflowStore, ref: str) -> RegisteredModel:
    """Look up a registered model.

    Args:
        home: The ftkit home (or an explicit store).
        ref: ``name`` (latest version), ``name:version`` or ``models:/name/version``; a version may also be the
            version a registration asked for (the ``ftkit.version`` tag, e.g. a timestamp).

    Returns:
        The version.

    Raises:
        NotFoundError: No such model or version (naming the close names or the versions there are).
        ValidationError: ``ref`` is not a reference.
    """
    name, version = parse_ref(ref)
    c = client(_store(home))
    versions = c.search_model_versions(f"name='{name}'", max_results=1000, order_by=["version_number DESC"])
    if not versions:
        names = [rm.name for rm in c.search_registered_models(max_results=1000)]
        hint = closest(name, names)
        more = f"; did you mean {', '.join(hint)}?" if hint else (f"; registered: {', '.join(names)}" if names else "")
        raise NotFoundError(f"no registered model {name!r} in the local registry{more}", operation="get_model")
    if version is None:
        return _to_registered(versions[0])
    for mv in versions:
        if str(mv.version) == version:
            return _to_registered(mv)
    for mv in versions:
        if (mv.tags or {}).get(REQUESTED_VERSION_TAG) == version:
            return _to_registered(mv)
    have = ", ".join(str(v.version) for v in versions[:10])
    raise NotFoundError(f"model {name!r} has no version {version!r}; versions: {have}", operation="get_model")
