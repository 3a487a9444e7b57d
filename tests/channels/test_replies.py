from pathlib import Path

import pytest

from adapter.replies import (
    IntentKind,
    Question,
    ReplyConfigError,
    classify_reply,
    load_reply_keywords,
)


@pytest.mark.parametrize(("text", "language", "kind"), [
    ("1", "it", IntentKind.CONFIRM),
    ("SI", "it", IntentKind.CONFIRM),
    ("Sì!", "it", IntentKind.CONFIRM),
    ("  confermo.  ", "it", IntentKind.CONFIRM),
    ("Si, grazie mille", "it", IntentKind.CONFIRM),
    ("2", "it", IntentKind.CANCEL),
    ("No", "it", IntentKind.CANCEL),
    ("ANNULLA", "it", IntentKind.CANCEL),
    ("disdico", "it", IntentKind.CANCEL),
    ("yes", "en", IntentKind.CONFIRM),
    ("STOP", "it", IntentKind.STOP),
    ("stop", "en", IntentKind.STOP),
    ("Cancel", "en", IntentKind.STOP),
    ("START", "it", IntentKind.START),
    ("Numero sbagliato", "it", IntentKind.WRONG_NUMBER),
    ("Scusi, credo sia un numero sbagliato.", "it", IntentKind.WRONG_NUMBER),
    ("wrong number", "it", IntentKind.WRONG_NUMBER),
    ("Non sono io", "it", IntentKind.WRONG_NUMBER),
    ("Posso spostare a giovedì?", "it", IntentKind.OTHER),
    ("ok", "it", IntentKind.OTHER),
    ("si ma vorrei spostarlo", "it", IntentKind.OTHER),
    ("", "it", IntentKind.OTHER),
])
def test_replies_are_classified_ignoring_case_accents_punctuation_and_spaces(text, language, kind):
    assert classify_reply(text, language).kind is kind


def test_an_unknown_language_falls_back_to_the_default_language() -> None:
    assert classify_reply("SI", "fr").kind is IntentKind.CONFIRM


def test_contact_preference_answers_name_a_channel_only_when_that_question_is_open() -> None:
    answer = classify_reply("WhatsApp", "it", expecting=Question.CONTACT_PREFERENCE)
    assert (answer.kind, answer.channel) == (IntentKind.CONTACT_PREFERENCE, "whatsapp")
    assert classify_reply("E-mail", "en", expecting="contact_preference").channel == "email"
    assert classify_reply("WhatsApp", "it").kind is IntentKind.OTHER
    assert classify_reply("STOP", "it", expecting=Question.CONTACT_PREFERENCE).kind is IntentKind.STOP


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "replies.yaml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
default_language: it
languages:
  it:
    confirm: ["1"]
    cancel: ["2"]
    stop: [STOP]
    start: [START]
    wrong_number: [numero sbagliato]
"""




def test_a_valid_custom_file_is_used(tmp_path: Path) -> None:
    keywords = load_reply_keywords(write(tmp_path, GOOD))
    assert classify_reply("1", "it", keywords=keywords).kind is IntentKind.CONFIRM
    assert classify_reply("SI", "it", keywords=keywords).kind is IntentKind.OTHER


@pytest.mark.parametrize(("mutation", "field"), [
    (lambda t: t.replace('confirm: ["1"]', 'confirm: ["2"]'), "languages.it"),
    (lambda t: t.replace('cancel: ["2"]', "cancel: []"), "languages.it.cancel"),
    (lambda t: t.replace("default_language: it", "default_language: de"), "default_language"),
    (lambda t: t.replace("    stop: [STOP]", "    stop: [STOP]\n    stpo: [X]"), "languages.it.stpo"),
    (lambda t: t + "    contact_preference: {fax: ['5']}\n", "contact_preference.fax"),
])
def test_an_invalid_file_is_refused_with_an_error_naming_file_and_field(tmp_path, mutation, field):
    path = write(tmp_path, mutation(GOOD))
    with pytest.raises(ReplyConfigError) as error:
        load_reply_keywords(path)
    assert str(path) in str(error.value) and field in str(error.value)


def test_a_missing_or_malformed_file_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(ReplyConfigError, match="replies.yaml"):
        load_reply_keywords(tmp_path / "replies.yaml")
    with pytest.raises(ReplyConfigError, match="not valid YAML"):
        load_reply_keywords(write(tmp_path, "languages: [unclosed"))
