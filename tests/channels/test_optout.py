import pytest

from channels.optout import KeywordKind, check_reply_instructions


@pytest.mark.parametrize("template", [
    "Reply CANCEL to cancel your appointment.",
    "Risponda CANCEL per annullare.",
    "Text END to end your booking",
    "Reply \"quit\" to cancel the visit",
    "Rispondi STOP per annullare l'appuntamento",
    "Reply 1 to confirm or CANCEL to cancel.",
])
def test_a_template_asking_for_a_carrier_opt_out_word_to_mean_something_else_is_an_error(template):
    [problem] = check_reply_instructions(template)
    assert (problem.kind, problem.severity) == (KeywordKind.OPT_OUT, "error")


@pytest.mark.parametrize("template", [
    "Risponda 1 per confermare, 2 per annullare.",
    "Risponda 1 per confermare, 2 per annullare, STOP per non ricevere altri messaggi.",
    "Reply STOP to stop receiving messages.",
    "Reply STOP to unsubscribe.",
    "Reply HELP for help.",
    "We will send you a reminder. To cancel, call us.",
    "Per annullare risponda ANNULLA o DISDICO.",
])
def test_digits_localised_words_and_honest_opt_out_instructions_pass(template) -> None:
    assert check_reply_instructions(template) == []


def test_asking_for_an_opt_in_or_help_word_to_mean_something_else_is_a_warning() -> None:
    [problem] = check_reply_instructions("Reply YES to confirm")
    assert (problem.keyword, problem.kind, problem.severity) == ("YES", KeywordKind.OPT_IN, "warning")
    [problem] = check_reply_instructions("Send INFO for directions")
    assert problem.kind is KeywordKind.HELP
