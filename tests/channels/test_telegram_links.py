import re
from datetime import datetime, timedelta, timezone

import pytest

from channels.base import InboundReply
from channels.errors import LinkTokenError
from channels.telegram import (
    deep_link,
    link_token_digest,
    link_token_usable,
    mint_link_token,
    parse_link_request,
)

NOW = datetime(2025, 3, 1, 9, 0, tzinfo=timezone.utc)


def reply(text: str) -> InboundReply:
    return InboundReply("telegram", "424242", text, "424242:7", NOW, chat_id="424242")


def test_a_minted_token_is_at_most_64_url_safe_characters_and_expires_after_the_ttl() -> None:
    link = mint_link_token(NOW, timedelta(minutes=15))
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,64}", link.token)
    assert link.expires_at == NOW + timedelta(minutes=15)
    assert link.digest == link_token_digest(link.token) and link.token not in link.digest


def test_minted_tokens_do_not_repeat() -> None:
    assert len({mint_link_token(NOW).token for _ in range(1000)}) == 1000


def test_the_deep_link_opens_the_bot_with_the_token_as_start_payload() -> None:
    token = mint_link_token(NOW).token
    assert deep_link("@SanLucaBot", token) == f"https://t.me/SanLucaBot?start={token}"
    with pytest.raises(LinkTokenError):
        deep_link("SanLucaBot", "not a token!")


def test_a_start_command_with_a_token_becomes_a_link_request_for_that_chat() -> None:
    token = mint_link_token(NOW).token
    request = parse_link_request(reply(f"/start {token}"))
    assert request is not None
    assert (request.token, request.digest, request.chat_id) == (
        token, link_token_digest(token), "424242")
    assert token not in repr(request)


def test_other_messages_and_a_bare_start_are_not_link_requests() -> None:
    assert parse_link_request(reply("1")) is None
    assert parse_link_request(reply("/start")) is None


def test_a_start_payload_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(LinkTokenError):
        parse_link_request(reply("/start " + "a" * 65))


def test_a_token_links_once_and_only_before_it_expires() -> None:
    expires = NOW + timedelta(minutes=30)
    assert link_token_usable(expires, None, NOW)
    assert not link_token_usable(expires, NOW, NOW + timedelta(minutes=1))
    assert not link_token_usable(expires, None, expires)
