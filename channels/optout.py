"""Carrier keywords: words the SMS provider acts on by itself, before we ever see them.

Twilio's default Advanced Opt-Out keywords (https://help.twilio.com/articles/223134027):
opt-out STOP, STOPALL, UNSUBSCRIBE, CANCEL, END, QUIT, REVOKE, OPTOUT (the number is
unsubscribed, further sends fail with error 21610); opt-in START, UNSTOP, YES (re-subscribes
and sends an automatic confirmation); help HELP, INFO (an automatic help reply).

So a template that says "reply CANCEL to cancel" opts the patient out instead of cancelling
the appointment. :func:`check_reply_instructions` finds such instructions at start-up. Ask
for digits ("1"/"2") and localised words (ANNULLA, DISDICO) instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class KeywordKind(StrEnum):
    OPT_OUT = "opt_out"
    OPT_IN = "opt_in"
    HELP = "help"


CARRIER_KEYWORDS: dict[str, KeywordKind] = {
    **{w: KeywordKind.OPT_OUT for w in (
        "STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT")},
    **{w: KeywordKind.OPT_IN for w in ("START", "UNSTOP", "YES")},
    **{w: KeywordKind.HELP for w in ("HELP", "INFO")},
}

# Verbs that introduce a reply instruction, in English and Italian (all persons and moods).
_TRIGGER = re.compile(
    r"\b(reply|respond|answer|text|txt|send|type|rispond\w*|invi\w*|scriv\w*|digit\w*|mand\w*)\b",
    re.IGNORECASE,
)
_WORD = re.compile(r"[A-Za-zÀ-ÿ]+|\d+")
_SENTENCE_END = re.compile(r"[.;!?\n]")
_WINDOW_WORDS = 12
# A purpose that really is opting out of messages, after "to"/"per".
_OPT_OUT_PURPOSE = re.compile(
    r"^(to|per)\s+stop$|unsubscrib|opt[\s-]?out|stop (receiving|getting)|no (more|longer)|messages|texts|sms|"
    r"notific|disiscriv|cancellar\w* (dal|da)|non ricevere|interromp|messaggi|promemoria",
    re.IGNORECASE,
)
_OPT_IN_PURPOSE = re.compile(r"subscri|opt[\s-]?in|receive|ricever|iscriv|riattiv", re.IGNORECASE)
_HELP_PURPOSE = re.compile(r"help|info|aiuto|assistenza|informazioni", re.IGNORECASE)


@dataclass(frozen=True)
class ReplyInstructionProblem:
    """A template asks for a carrier keyword to mean something else. ``severity`` is
    ``error`` for opt-out words (the patient would be unsubscribed) and ``warning`` for
    opt-in and help words (the carrier answers on its own)."""

    keyword: str
    kind: KeywordKind
    severity: str
    excerpt: str

    def __str__(self) -> str:
        effect = {
            KeywordKind.OPT_OUT: "the carrier unsubscribes the patient on it",
            KeywordKind.OPT_IN: "the carrier re-subscribes and answers on its own",
            KeywordKind.HELP: "the carrier sends its own help reply",
        }[self.kind]
        return (
            f"{self.severity}: template asks the patient to reply {self.keyword} "
            f"(in {self.excerpt!r}), but {effect}; ask for digits or a localised word"
        )


def check_reply_instructions(template_text: str) -> list[ReplyInstructionProblem]:
    """Every reply instruction in ``template_text`` whose keyword the carrier acts on, unless
    the instruction means exactly what the carrier will do ("reply STOP to stop receiving
    messages" is fine; "reply CANCEL to cancel your appointment" is not).

    >>> [p.keyword for p in check_reply_instructions("Reply 1 to confirm or CANCEL to cancel.")]
    ['CANCEL']
    >>> check_reply_instructions("Risponda 1 per confermare, 2 per annullare, STOP per non ricevere altri messaggi.")
    []
    """
    problems: list[ReplyInstructionProblem] = []
    for trigger in _TRIGGER.finditer(template_text):
        end = _SENTENCE_END.search(template_text, trigger.end())
        sentence = template_text[trigger.end(): end.start() if end else len(template_text)]
        words = list(_WORD.finditer(sentence))[:_WINDOW_WORDS]
        for word in words:
            keyword = word.group().upper()
            kind = CARRIER_KEYWORDS.get(keyword)
            if kind is None or not _looks_like_instruction(sentence, word):
                continue
            purpose = _purpose(sentence[word.end():])
            if _means_what_carrier_does(kind, purpose):
                continue
            start = trigger.start()
            excerpt = template_text[start: trigger.end() + word.end() + len(purpose) + 1].strip()
            problem = ReplyInstructionProblem(
                keyword, kind, "error" if kind is KeywordKind.OPT_OUT else "warning", excerpt[:80]
            )
            if problem not in problems:
                problems.append(problem)
    return problems


def _looks_like_instruction(sentence: str, word: re.Match[str]) -> bool:
    """The keyword is what to send: quoted, upper-case, or followed by to/per."""
    text = word.group()
    before = sentence[max(0, word.start() - 1): word.start()]
    after = sentence[word.end(): word.end() + 6].lower()
    return (
        text.isupper()
        or before in ("\"", "'", "«", "“", "‘")
        or after.lstrip(" \"'»”’").startswith(("to ", "per ", "for "))
    )


def _purpose(rest: str) -> str:
    """What follows the keyword up to the next alternative ("or", "o", a comma)."""
    return re.split(r",|\bor\b|\boppure\b|\bo\b", rest, maxsplit=1)[0].strip()


def _means_what_carrier_does(kind: KeywordKind, purpose: str) -> bool:
    pattern = {
        KeywordKind.OPT_OUT: _OPT_OUT_PURPOSE,
        KeywordKind.OPT_IN: _OPT_IN_PURPOSE,
        KeywordKind.HELP: _HELP_PURPOSE,
    }[kind]
    return bool(pattern.search(purpose))
