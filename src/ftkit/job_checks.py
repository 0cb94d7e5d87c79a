"""Offline checks of a job file that read files: data files, a local model directory, LoRA modules, lengths.

These are the invariants that the typed loader cannot know from the YAML alone but that this machine can
answer in a second, without any service: that ``data.train_file`` exists, that ``model.path`` is a model
directory with weights, a tokenizer and a chat template, that ``local.lora_target_modules`` names modules
the model has (read from the safetensors headers, no torch), and that ``max_seq_length`` leaves room for at
least one assistant token after the chat template's own tokens (the tokenizer is loaded for that one check).
``ftkit validate`` and the job runner report them with the loader's problems, before any stage starts.

Two more are about the run rather than its files: that the job says where its data comes from (``data.source``
to build from, or both built files), and that ``local.device: cuda`` has a CUDA device here (torch is imported
for that one check, and only when the job asks for CUDA).
"""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import struct
from collections.abc import Callable, Mapping
from pathlib import Path

from .backends.traits import backend_traits
from .evaluation.spec import EvaluateSection
from .exceptions import Problem, ValidationError
from .finetune import FinetunePipelineSpec
from .jobfile import DataSection, JobFile, LocalSection, ModelSection

__all__ = ["file_problems", "job_file_problems"]

_WEIGHTS = ("*.safetensors", "pytorch_model*.bin", "adapter_model.safetensors")
_TOKENIZER = ("tokenizer.json", "tokenizer.model")


def job_file_problems(job: JobFile) -> list[Problem]:
    """Return the file problems of a loaded job (see :func:`file_problems`)."""
    return file_problems(
        backend=job.backend,
        model=job.model,
        data=job.data,
        finetune=job.finetune,
        local=job.local,
        evaluate=job.evaluate,
        base_dir=job.base_dir,
        source=str(job.source) if job.source is not None else None,
        lines=job.lines,
    )


def file_problems(
    *,
    backend: str,
    model: ModelSection | None,
    data: DataSection | None,
    finetune: FinetunePipelineSpec | None,
    local: LocalSection | None,
    base_dir: Path,
    evaluate: EvaluateSection | None = None,
    source: str | None = None,
    lines: Mapping[str, int] | None = None,
) -> list[Problem]:
    """Check what the job's sections point at on this machine (any section may be ``None``: it did not load).

    Args:
        backend: The job's backend (a model directory and the ``local:`` section matter only where it runs here).
        model: The ``model`` section.
        data: The ``data`` section.
        finetune: The ``finetune`` parameters.
        local: The ``local`` section.
        evaluate: The ``evaluate`` section (its judge's key and its held-out file, where the file is given).
        base_dir: What relative paths are resolved against (the job file's directory).
        source: The job file, for messages.
        lines: Line numbers of keys.

    Returns:
        Every problem found, each with its key and line.
    """
    lines = lines or {}
    problems: list[Problem] = []

    def problem(where: str, message: str, suggestion: str | None = None) -> None:
        line = lines.get(where) or lines.get(where.rsplit(".", 1)[0])
        problems.append(Problem(where, message, suggestion, source, line))

    def resolve(path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else base_dir / p

    if data is not None and data.source is None and not data.train_file and not data.test_file:
        # (One file without the other is the loader's problem: they go together.)
        problem(
            "data",
            "says nowhere to get the chat data from (no data.source, no data.train_file and data.test_file)",
            "set data.source (a local JSONL/parquet file or folder, or a cached dataset id) to build the files, "
            "or data.train_file and data.test_file to use built ones",
        )
    runs_here = backend_traits(backend).runs_here  # the `local:` section and a model directory matter only there
    if runs_here and local is not None and local.device == "cuda":
        missing_cuda = _no_cuda()
        if missing_cuda:
            problem("local.device", f"is cuda, but {missing_cuda}", "use auto (the GPU when there is one) or cpu")
    if data is not None:
        if data.source and "://" not in data.source and _special(resolve(data.source)):
            problem(
                "data.source",
                f"{resolve(data.source)} is a device, FIFO or socket, not a data file or directory",
                "give a parquet/JSONL file, a directory of them, or a dataset id",
            )
        for key in ("train_file", "test_file"):
            value = getattr(data, key)
            if value and "://" not in value and not value.startswith("azureml:") and not resolve(value).is_file():
                what = "is not a regular file" if _special(resolve(value)) else "does not exist"
                problem(f"data.{key}", f"{resolve(value)} {what}", "build it first (ftkit data build JOB)")
    if evaluate is not None:
        _evaluate_problems(evaluate, data, resolve, problem)
    if runs_here and local is not None:
        _quantize_problems(local, finetune, problem)
    if not runs_here or model is None or not model.path:
        return problems
    model_dir = resolve(model.path)
    if not model_dir.is_dir():
        problem("model.path", f"{model_dir} is not a directory", "give a Hugging Face model directory")
        return problems
    missing = _model_dir_gaps(model_dir)
    for what, hint in missing:
        problem("model.path", f"{model_dir} has no {what}", hint)
    if missing:
        return problems
    targets = local.target_modules() if local is not None else None
    if targets:
        names = _module_names(model_dir)
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names})
        unknown = [t for t in targets if t not in leaves and not any(n.endswith(f".{t}") or n == t for n in names)]
        if names and unknown:
            problem(
                "local.lora_target_modules",
                f"{', '.join(map(repr, unknown))} {'is not a module' if len(unknown) == 1 else 'are not modules'} "
                f"of {model_dir.name}",
                f"modules in this model: {', '.join(leaves)}",
            )
    length = finetune.max_seq_length if finetune is not None else None
    if length is not None and length > 0:
        # Measured on the job's own rows where a data file is already here (train, else test).
        given = [resolve(f) for f in (data.train_file, data.test_file) if f] if data is not None else []
        sample = next((f for f in given if f.is_file()), None)
        overhead = _prompt_overhead(model_dir, sample)
        if overhead is not None and length <= overhead:
            problem(
                "finetune.max_seq_length",
                f"{length} leaves no assistant token: the chat template and prompt take at least {overhead} tokens "
                "before the first answer, so every row would be dropped",
                f"use at least {overhead + 1}, e.g. 2048 (-1: the model's maximum)",
            )
    return problems


def _special(path: Path) -> bool:
    """Strictly private: whether ``path`` exists and is neither a regular file nor a directory (``/dev/zero``)."""
    try:
        mode = path.stat().st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def _no_cuda() -> str | None:
    """Why this machine cannot train on CUDA (``None``: it can)."""
    try:
        import torch
    except ImportError:
        return "torch is not installed (pip install 'ftkit[local]' with a CUDA build of torch)"
    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"this torch ({torch.__version__}) is a CPU build"
    return f"torch {torch.__version__} sees no CUDA device on this machine"


def _quantize_problems(
    local: LocalSection, finetune: FinetunePipelineSpec | None, problem: Callable[[str, str, str | None], None]
) -> None:
    """Strictly private: what this machine can tell about ``local.quantize`` without importing torch.

    4-bit weights need bitsandbytes' CUDA kernels and LoRA (a 4-bit base cannot itself be trained). Whether
    torch sees a GPU is left to the run (importing torch here would make ``ftkit validate`` slow).
    """
    if local.quantize in (None, "none"):
        return
    if local.device == "cpu":
        problem("local.quantize", f"{local.quantize} weights need a CUDA GPU; device is cpu", "remove local.quantize")
    if finetune is not None and finetune.parameters().get("apply_lora") is False:
        problem(
            "local.quantize",
            f"{local.quantize} weights are frozen: they train only with LoRA (apply_lora is false)",
            "set apply_lora: true or remove local.quantize",
        )
    if importlib.util.find_spec("bitsandbytes") is None:
        problem("local.quantize", "bitsandbytes is not installed", "pip install 'ftkit[qlora]'")
    if (local.processes or 1) > 1:
        problem("local.quantize", "4-bit weights train on one process only", "set local.processes: 1")


def _model_dir_gaps(model_dir: Path) -> list[tuple[str, str]]:
    """Strictly private: what a model directory lacks for training (config, weights, tokenizer, chat template)."""
    gaps: list[tuple[str, str]] = []
    if not (model_dir / "config.json").is_file():
        gaps.append(("config.json", "give a Hugging Face model directory"))
    if not any(any(model_dir.glob(pattern)) for pattern in _WEIGHTS):
        gaps.append(("weights (*.safetensors or pytorch_model*.bin)", "save the model with save_pretrained"))
    if not any((model_dir / name).is_file() for name in _TOKENIZER):
        gaps.append(("tokenizer (tokenizer.json or tokenizer.model)", "save the tokenizer next to the model"))
    elif not _has_chat_template(model_dir):
        gaps.append(("chat template", "save a tokenizer with a chat_template (tokenizer_config.json)"))
    return gaps


def _has_chat_template(model_dir: Path) -> bool:
    if (model_dir / "chat_template.jinja").is_file() or (model_dir / "chat_template.json").is_file():
        return True
    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(config, dict) and bool(config.get("chat_template"))


def _module_names(model_dir: Path) -> set[str]:
    """Strictly private: module names from the safetensors headers (``model.layers.0.self_attn.q_proj``)."""
    names: set[str] = set()
    for path in sorted(model_dir.glob("*.safetensors")):
        try:
            with path.open("rb") as fh:
                (size,) = struct.unpack("<Q", fh.read(8))
                if size > 100_000_000:  # not a safetensors header
                    continue
                header = json.loads(fh.read(size))
        except (OSError, ValueError, struct.error):
            continue
        for key in header:
            if key != "__metadata__" and "." in key:
                module = key.rsplit(".", 1)[0]  # drop .weight / .bias
                names.add(module.removeprefix("base_model.model."))
    return names


def _prompt_overhead(model_dir: Path, sample: Path | None, rows: int = 64) -> int | None:
    """Strictly private: the fewest tokens before a first assistant token, over a one-turn chat and sample rows.

    With a data file, its first ``rows`` conversations are measured (the prompt up to the first answer);
    without one, a one-word question. ``None`` when the tokenizer cannot be loaded (training reports that).
    """
    prompts: list[list[dict[str, str]]] = []
    if sample is not None:
        try:
            with sample.open(encoding="utf-8-sig") as fh:
                for line in fh:
                    if len(prompts) >= rows:
                        break
                    prompt = _prompt_of(line)
                    if prompt is not None:
                        prompts.append(prompt)
        except OSError:
            prompts = []
    if not prompts:
        prompts = [[{"role": "user", "content": "x"}]]
    lengths = _fast_prompt_lengths(model_dir, prompts)
    if lengths is None:
        lengths = _transformers_prompt_lengths(model_dir, prompts)
    return min(lengths) if lengths else None


def _fast_prompt_lengths(model_dir: Path, prompts: list[list[dict[str, str]]]) -> list[int] | None:
    """Strictly private: prompt lengths with ``tokenizers`` and jinja2 alone (transformers takes seconds to load).

    Renders the chat template as transformers does (sandboxed, ``trim_blocks``/``lstrip_blocks``, the special
    tokens as variables, ``{% generation %}`` blocks kept); ``None`` when anything here is not at hand.
    """
    try:
        import jinja2
        import jinja2.ext
        import jinja2.sandbox
        from tokenizers import Tokenizer
    except ImportError:
        return None

    class _Generation(jinja2.ext.Extension):
        # transformers' {% generation %} marks assistant text for masks; for lengths it is plain text.
        tags = frozenset({"generation"})  # type: ignore[assignment]  # jinja2 declares a set; it is only read

        def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    try:
        config = json.loads((model_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
        template_file = model_dir / "chat_template.jinja"
        template = template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
        if not isinstance(template, str):
            return None
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, jinja2.ext.loopcontrols]
        )
        env.filters["tojson"] = lambda x, **kw: json.dumps(x, ensure_ascii=False, **kw)
        env.globals["raise_exception"] = raise_exception
        compiled = env.from_string(template)
        special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        return [
            len(
                tokenizer.encode(
                    compiled.render(messages=p, add_generation_prompt=True, **special), add_special_tokens=False
                ).ids
            )
            for p in prompts
        ]
    except Exception:  # any template or tokenizer this path cannot render: transformers decides
        return None


def _transformers_prompt_lengths(model_dir: Path, prompts: list[list[dict[str, str]]]) -> list[int] | None:
    """Strictly private: prompt lengths through transformers' own tokenizer and template (the slow, sure path)."""
    try:
        from transformers import AutoTokenizer
    except ImportError:
        return None  # without transformers the worker cannot train either; it says so itself
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        lengths = []
        for prompt in prompts:
            text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            lengths.append(len(tokenizer(text, add_special_tokens=False)["input_ids"]))
    except Exception:  # any tokenizer failure is the training's to report, with its own message
        return None
    return lengths


def _prompt_of(line: str) -> list[dict[str, str]] | None:
    """Strictly private: the messages before a JSONL row's first assistant turn (``None``: not a chat row)."""
    try:
        row = json.loads(line)
    except ValueError:
        return None
    messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list):
        return None
    prompt: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict):
            return None
        if message.get("role") == "assistant":
            return prompt or None
        prompt.append({"role": str(message.get("role")), "content": str(message.get("content"))})
    return None


def _evaluate_problems(
    evaluate: EvaluateSection,
    data: DataSection | None,
    resolve: Callable[[str], Path],
    problem: Callable[..., None],
) -> None:
    """The evaluation's inputs that this machine can check before anything is deployed."""
    from .evaluation.prompts import load_prompts

    if evaluate.judge is not None and not os.environ.get(evaluate.judge.api_key_env):
        name = evaluate.judge.api_key_env
        problem(
            "evaluate.judge.api_key_env", f"${name} is not set: the judge endpoint needs a key", f"export {name}=..."
        )
    source: Path | None = None
    if evaluate.split == "test":
        source = resolve(data.test_file) if data is not None and data.test_file else None  # else built at run time
    elif evaluate.split != "score":
        source = resolve(evaluate.split)
        if not source.is_file():
            problem("evaluate.split", f"{source} does not exist", "use test, score, or the path of a JSONL file")
            source = None
    if source is not None and source.is_file():
        try:
            load_prompts(source, evaluate.prompts, seed=evaluate.seed)
        except ValidationError as exc:
            for p in exc.problems:
                problem(p.where, p.message, p.suggestion)
