"""Pairwise LLM-as-judge through any OpenAI-compatible chat completions endpoint.

Each prompt is asked twice, base answer first and tuned answer first, so that a judge's preference for the
first (or second) position cancels out. Requests go through ftkit's one retry policy: a rate limit (429, with
``Retry-After`` honoured), a timeout or a 5xx is retried within its bounds; anything else fails at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .. import retry
from ..exceptions import (
    AuthError,
    BackendError,
    MissingDependencyError,
    Problem,
    TransientBackendError,
    ValidationError,
)
from .spec import JudgeSettings

__all__ = ["Judge", "Verdict"]

Verdict = str  # "A", "B" or "tie"

_SYSTEM = (
    "You are an impartial judge comparing two assistant answers to the same conversation. {rubric} "
    "Do not let the order of the answers or their length sway you. Reply with exactly one word: "
    "A, B, or TIE."
)
_VERDICT = re.compile(r"\b(A|B|TIE)\b", re.IGNORECASE)


class Judge:
    """Asks the judge endpoint which of two answers is better.

    Args:
        settings: The job file's ``evaluate.judge``.
        environ: Where to read the key (default ``os.environ``).
        client: An ``httpx.Client`` to send with (default: a new one; injectable for tests).

    Raises:
        ValidationError: The key's environment variable is not set.
        MissingDependencyError: httpx is not installed.
    """

    def __init__(
        self, settings: JudgeSettings, *, environ: Mapping[str, str] | None = None, client: Any = None
    ) -> None:
        env = os.environ if environ is None else environ
        key = env.get(settings.api_key_env, "")
        if not key:
            raise ValidationError(
                [
                    Problem(
                        "evaluate.judge.api_key_env",
                        f"${settings.api_key_env} is not set: the judge endpoint needs a key",
                        f"export {settings.api_key_env}=... before the run",
                    )
                ],
                "no key for the judge",
            )
        if client is None:
            try:
                import httpx
            except ImportError:
                raise MissingDependencyError("httpx", "eval") from None
            client = httpx.Client(timeout=settings.timeout_s)
        self.settings = settings
        self._client = client
        self._headers = ({"Authorization": f"Bearer {key}"} if settings.auth == "bearer" else {"api-key": key}) | {
            "Content-Type": "application/json"
        }
        self.unparsed = 0

    def compare(self, conversation: Sequence[Mapping[str, Any]], first: str, second: str) -> Verdict:
        """Return ``A`` (``first`` is better), ``B`` or ``tie``.

        Raises:
            BackendError: The judge failed for good (after the retry policy's attempts).
            AuthError: The judge refused the key.
        """
        shown = "\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in conversation)
        body = {
            "model": self.settings.model,
            "messages": [
                {"role": "system", "content": _SYSTEM.format(rubric=self.settings.rubric)},
                {
                    "role": "user",
                    "content": f"Conversation:\n{shown}\n\nAnswer A:\n{first}\n\nAnswer B:\n{second}\n\n"
                    "Which answer is better? Reply A, B, or TIE.",
                },
            ],
            "max_tokens": self.settings.max_tokens,
            "temperature": 0,
        }
        text = retry.call(lambda: self._send(body))
        match = _VERDICT.search(text)
        if match is None:
            self.unparsed += 1
            return "tie"
        word = match.group(1).upper()
        return "tie" if word == "TIE" else word

    def score(self, conversation: Sequence[Mapping[str, Any]], base: str, tuned: str) -> float:
        """The tuned answer's score over both orders: 1 (won both), 0.5 (a draw), 0 (lost both)."""
        first = self.compare(conversation, base, tuned)  # tuned is B
        second = self.compare(conversation, tuned, base)  # tuned is A
        points = {"B": 1.0, "tie": 0.5, "A": 0.0}[first] + {"A": 1.0, "tie": 0.5, "B": 0.0}[second]
        return points / 2

    def _send(self, body: Mapping[str, Any]) -> str:
        import httpx

        try:
            response = self._client.post(self.settings.chat_url, json=body, headers=self._headers)
        except httpx.TimeoutException as exc:
            raise TransientBackendError(f"the judge timed out: {exc}", operation="judge") from exc
        except httpx.TransportError as exc:
            raise TransientBackendError(f"the judge could not be reached: {exc}", operation="judge") from exc
        status = response.status_code
        if status in (408, 429) or status >= 500:
            after = response.headers.get("retry-after")
            wait = float(after) if after and after.replace(".", "", 1).isdigit() else None
            raise TransientBackendError(
                f"the judge answered {status}", retry_after=wait, operation="judge", status_code=status
            )
        if status in (401, 403):
            raise AuthError(
                f"the judge refused the key in ${self.settings.api_key_env} ({status})",
                operation="judge",
                status_code=status,
            )
        if status >= 400:
            raise BackendError(
                f"the judge answered {status}: {response.text[:200]}", operation="judge", status_code=status
            )
        try:
            return str(response.json()["choices"][0]["message"]["content"] or "")
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise BackendError(
                f"the judge's answer is not a chat completion: {response.text[:200]}", operation="judge"
            ) from exc

    def close(self) -> None:
        """Close the HTTP client."""
        self._client.close()
