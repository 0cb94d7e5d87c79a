"""Why a chat row is rejected: one named reason per rejected row.

A row can break several rules at once; it is counted once, under the first reason of :data:`REASON_ORDER` that
applies, so that the counts of a report always add up to the rows rejected.
"""

from __future__ import annotations

import enum

__all__ = ["REASON_ORDER", "Reason"]


class Reason(enum.StrEnum):
    """A named reason for rejecting a chat row (the value is what reports and ``report.json`` show)."""

    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    ROW_TOO_DEEP = "row_too_deep"
    ROW_NOT_OBJECT = "row_not_object"
    MESSAGES_MISSING = "messages_missing"
    MESSAGES_JSON_STRING = "messages_json_string"
    MESSAGES_NOT_LIST = "messages_not_list"
    MESSAGES_EMPTY = "messages_empty"
    MESSAGE_NOT_OBJECT = "message_not_object"
    ROLE_MISSING = "role_missing"
    ROLE_NOT_STRING = "role_not_string"
    ROLE_UNKNOWN = "role_unknown"
    CONTENT_MISSING = "content_missing"
    CONTENT_NOT_STRING = "content_not_string"
    CONTENT_EMPTY = "content_empty"
    SYSTEM_NOT_FIRST = "system_not_first"
    SYSTEM_DUPLICATE = "system_duplicate"
    FIRST_TURN_NOT_USER = "first_turn_not_user"
    TURNS_NOT_ALTERNATING = "turns_not_alternating"
    NO_USER_TURN = "no_user_turn"
    LAST_TURN_NOT_ASSISTANT = "last_turn_not_assistant"
    ROW_TOO_LARGE = "row_too_large"
    PROMPT_NOT_STRING = "prompt_not_string"
    PROMPT_ID_NOT_STRING = "prompt_id_not_string"

    @property
    def description(self) -> str:
        """One sentence saying what the reason means."""
        return _DESCRIPTIONS[self]


_DESCRIPTIONS: dict[Reason, str] = {
    Reason.INVALID_UTF8: "the JSONL line is not valid UTF-8",
    Reason.INVALID_JSON: "the JSONL line is not valid JSON",
    Reason.ROW_TOO_DEEP: "the JSONL line nests arrays/objects more than 64 levels deep",
    Reason.ROW_NOT_OBJECT: "the row is not a JSON object / mapping",
    Reason.MESSAGES_MISSING: "the row has no 'messages' (absent or null)",
    Reason.MESSAGES_JSON_STRING: "'messages' is a JSON string holding a list, not the list itself",
    Reason.MESSAGES_NOT_LIST: "'messages' is not a list",
    Reason.MESSAGES_EMPTY: "'messages' is an empty list",
    Reason.MESSAGE_NOT_OBJECT: "a message is not a {role, content} object",
    Reason.ROLE_MISSING: "a message has no role (absent or null)",
    Reason.ROLE_NOT_STRING: "a message's role is not a string",
    Reason.ROLE_UNKNOWN: "a message's role is not system, user or assistant",
    Reason.CONTENT_MISSING: "a message has no content (absent or null)",
    Reason.CONTENT_NOT_STRING: "a message's content is not a string (a list of parts, a number, NaN...)",
    Reason.CONTENT_EMPTY: "a message's content is empty or only whitespace",
    Reason.SYSTEM_NOT_FIRST: "a system message comes after the first message",
    Reason.SYSTEM_DUPLICATE: "more than one system message",
    Reason.FIRST_TURN_NOT_USER: "the first turn (after an optional system message) is not from the user",
    Reason.TURNS_NOT_ALTERNATING: "user and assistant turns do not alternate",
    Reason.NO_USER_TURN: "the conversation has no user turn (only a system message)",
    Reason.LAST_TURN_NOT_ASSISTANT: "the conversation does not end with an assistant turn (required for SFT)",
    Reason.ROW_TOO_LARGE: "the conversation has more characters than max_row_chars",
    Reason.PROMPT_NOT_STRING: "'prompt' is present but not a string",
    Reason.PROMPT_ID_NOT_STRING: "'prompt_id' is present but not a string",
}

#: Reasons in priority order; a row is counted under the first that applies.
REASON_ORDER: tuple[Reason, ...] = tuple(Reason)
