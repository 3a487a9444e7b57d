"""What a patient's reply means: confirm, cancel, stop, start, wrong number, a contact
preference, or something for an operator. Pure: keywords come from ``config/replies.yaml``.

Matching normalises case, accents, punctuation and white space, drops filler words
("grazie", "thanks"), then requires the whole reply to be one keyword; wrong-number phrases
count anywhere in the reply, because missing one is a personal-data breach left open
(GDPR art. 33). stop, start and wrong-number keywords of every language apply to every
patient; confirm, cancel and preference answers only in the patient's language.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

REPLIES_FILE = Path(__file__).resolve().parent.parent / "config" / "replies.yaml"
PREFERENCE_CHANNELS = ("sms", "whatsapp", "telegram", "email")


class IntentKind(StrEnum):
    CONFIRM = "confirm"
    CANCEL = "cancel"
    STOP = "stop"
    START = "start"
    WRONG_NUMBER = "wrong_number"
    CONTACT_PREFERENCE = "contact_preference"
    OTHER = "other"  # the operator queue


class Question(StrEnum):
    """The open question the reply answers (the core knows it from the last message sent)."""

    APPOINTMENT = "appointment"  # "1 to confirm, 2 to cancel"
    CONTACT_PREFERENCE = "contact_preference"  # "how do you want to be reached?"


@dataclass(frozen=True)
class ReplyIntent:
    """``channel`` is set for a contact preference; ``matched`` is the normalised keyword."""

    kind: IntentKind
    channel: str | None = None
    matched: str | None = None


class ReplyConfigError(ValueError):
    """``config/replies.yaml`` is missing or invalid; the message names the file and field."""


def normalise(text: str) -> str:
    """Case-folded, accents stripped, punctuation turned to spaces, spaces collapsed.

    >>> normalise("  Sì!!  Confermo. ")
    'si confermo'
    """
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    return " ".join(re.sub(r"[^\w]+|_", " ", bare).split())


class _Language(BaseModel):
    model_config = ConfigDict(extra="forbid")

    filler: list[str] = Field(default_factory=list)
    confirm: list[str] = Field(min_length=1)
    cancel: list[str] = Field(min_length=1)
    stop: list[str] = Field(min_length=1)
    start: list[str] = Field(min_length=1)
    wrong_number: list[str] = Field(min_length=1)
    contact_preference: dict[str, list[str]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _keywords_are_usable(self) -> _Language:
        for channel in self.contact_preference:
            if channel not in PREFERENCE_CHANNELS:
                raise ValueError(
                    f"contact_preference.{channel}: unknown channel, use one of "
                    + ", ".join(PREFERENCE_CHANNELS)
                )
        groups = {name: getattr(self, name) for name in ("confirm", "cancel", "stop", "start",
                                                          "wrong_number", "filler")}
        groups |= {f"contact_preference.{c}": words for c, words in self.contact_preference.items()}
        for name, words in groups.items():
            for word in words:
                if not normalise(str(word)):
                    raise ValueError(f"{name}: keyword {word!r} is empty once normalised")
        _no_overlap(groups, ["confirm", "cancel", "stop", "start", "wrong_number"])
        _no_overlap(groups, ["stop", "start", "wrong_number",
                             *(f"contact_preference.{c}" for c in self.contact_preference)])
        return self


def _no_overlap(groups: dict[str, list[str]], names: list[str]) -> None:
    seen: dict[str, str] = {}
    for name in names:
        for word in groups[name]:
            key = normalise(str(word))
            if key in seen and seen[key] != name:
                raise ValueError(f"{name}: keyword {word!r} is also in {seen[key]}")
            seen[key] = name


class _ReplyFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    default_language: str
    languages: dict[str, _Language] = Field(min_length=1)

    @model_validator(mode="after")
    def _default_exists(self) -> _ReplyFile:
        if self.default_language not in self.languages:
            raise ValueError(f"default_language: {self.default_language!r} has no keywords")
        return self


@dataclass(frozen=True)
class _Keywords:
    filler: tuple[str, ...]
    by_intent: dict[IntentKind, frozenset[str]]
    preference: dict[str, str]  # normalised answer → channel


@dataclass(frozen=True)
class ReplyKeywords:
    """Validated, normalised keyword sets; build with :func:`load_reply_keywords`."""

    default_language: str
    languages: dict[str, _Keywords]
    stop: frozenset[str]
    start: frozenset[str]
    wrong_number: tuple[str, ...]

    def for_language(self, language: str | None) -> _Keywords:
        code = (language or "").split("-")[0].lower()
        return self.languages.get(code) or self.languages[self.default_language]


def load_reply_keywords(path: Path = REPLIES_FILE) -> ReplyKeywords:
    """Read and validate the keyword file; :class:`ReplyConfigError` names file and field."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReplyConfigError(f"{path}: cannot be read ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ReplyConfigError(f"{path}: not valid YAML ({exc})") from exc
    try:
        parsed = _ReplyFile.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(top level)"
        message = first["msg"].removeprefix("Value error, ")
        raise ReplyConfigError(f"{path}: {field}: {message}") from exc
    languages = {}
    for code, lang in parsed.languages.items():
        languages[code] = _Keywords(
            filler=tuple(sorted({normalise(w) for w in lang.filler}, key=len, reverse=True)),
            by_intent={
                IntentKind.CONFIRM: frozenset(normalise(str(w)) for w in lang.confirm),
                IntentKind.CANCEL: frozenset(normalise(str(w)) for w in lang.cancel),
            },
            preference={
                normalise(str(w)): channel
                for channel, words in lang.contact_preference.items()
                for w in words
            },
        )
    every = parsed.languages.values()
    return ReplyKeywords(
        default_language=parsed.default_language,
        languages=languages,
        stop=frozenset(normalise(str(w)) for lang in every for w in lang.stop),
        start=frozenset(normalise(str(w)) for lang in every for w in lang.start),
        wrong_number=tuple(sorted({normalise(str(w)) for lang in every for w in lang.wrong_number})),
    )


@lru_cache(maxsize=1)
def default_keywords() -> ReplyKeywords:
    return load_reply_keywords(REPLIES_FILE)


def classify_reply(
    text: str,
    language: str | None,
    *,
    expecting: Question = Question.APPOINTMENT,
    keywords: ReplyKeywords | None = None,
) -> ReplyIntent:
    """The meaning of one reply, for a patient whose language is ``language``.

    >>> classify_reply("Sì, grazie!", "it").kind
    <IntentKind.CONFIRM: 'confirm'>
    >>> classify_reply("Scusi, numero sbagliato", "it").kind
    <IntentKind.WRONG_NUMBER: 'wrong_number'>
    >>> classify_reply("2", "it", expecting=Question.CONTACT_PREFERENCE).channel
    'whatsapp'
    >>> classify_reply("Posso spostarlo a giovedì?", "it").kind
    <IntentKind.OTHER: 'other'>
    """
    keywords = keywords or default_keywords()
    lang = keywords.for_language(language)
    words = normalise(text)
    padded = f" {words} "
    for phrase in keywords.wrong_number:
        if f" {phrase} " in padded:
            return ReplyIntent(IntentKind.WRONG_NUMBER, matched=phrase)
    core = _without_filler(words, lang.filler)
    if core in keywords.stop:
        return ReplyIntent(IntentKind.STOP, matched=core)
    if core in keywords.start:
        return ReplyIntent(IntentKind.START, matched=core)
    if Question(expecting) is Question.CONTACT_PREFERENCE:
        channel = lang.preference.get(core)
        if channel is not None:
            return ReplyIntent(IntentKind.CONTACT_PREFERENCE, channel=channel, matched=core)
        return ReplyIntent(IntentKind.OTHER)
    for kind, answers in lang.by_intent.items():
        if core in answers:
            return ReplyIntent(kind, matched=core)
    return ReplyIntent(IntentKind.OTHER)


def _without_filler(words: str, filler: tuple[str, ...]) -> str:
    padded = f" {words} "
    for phrase in filler:  # longest first, so "grazie mille" goes before "grazie"
        padded = padded.replace(f" {phrase} ", " ")
    return " ".join(padded.split())
