"""No stored text keeps a piece of an address or number that a cut left behind.

A text longer than its bound is stored as a masked prefix. Masking only a window of it (to bound the work) left
the address cut at the window's edge half unmasked once masking had shrunk the window below the bound
('tanaka.taro@exa'), and a request that failed validation was cut at ``validation.max_request_chars`` before
anything masked it. These tests check the stored text against the whole text masked.
"""

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.fields import bounded, masked_bounded, masked_if_cut, pseudonym
from so8t_lib.serve.masking import mask_personal_data
from so8t_lib.serve.runtime import Agent
from tests.test_runtime import FakeDecider

ADDRESSES = " ".join(f"staff{i:02d}.member@example.co.jp" for i in range(16))
HEAD = ADDRESSES + " cc "
STRADDLING = HEAD + "q" * (496 - len(HEAD)) + " tanaka.taro@example.co.jp and 090-1234-5678"  # the address spans 512
TOKEN = re.compile(r"\[(?:EMAIL|PHONE|CARD|MY_NUMBER|NAME)\]")
NOTE = re.compile(r"…\[\d+ chars, sha256 [0-9a-f]{16}\]\Z")


def _head(stored: str) -> str:
    """The stored prefix without the truncation note and with the mask tokens taken out."""
    return TOKEN.sub(" ", NOTE.sub("", stored))


def test_an_address_cut_at_the_masking_window_is_not_stored_half():
    stored = masked_bounded(STRADDLING, 256)
    assert "tanaka" not in stored and "@" not in _head(stored)
    assert NOTE.sub("", stored) == mask_personal_data(STRADDLING)[:256] and f"[{len(STRADDLING)} chars, " in stored


def test_many_long_addresses_shrinking_the_window_leave_no_piece_of_one():
    text = " ".join(f"verylongname{i:02d}.person@example.co.jp" for i in range(30))
    stored = masked_bounded(text, 256)
    assert "@" not in _head(stored) and "verylongname" not in stored
    assert stored.startswith(mask_personal_data(text)[:256]) and f"[{len(text)} chars, sha256 " in stored


def test_short_texts_and_earlier_notes_are_kept_as_before():
    assert masked_bounded("mail tanaka@example.com", 256) == "mail [EMAIL]"
    cut = bounded("call 090-1234-5678 " + "x" * 5000, 100)
    assert masked_bounded(cut, 100) == cut.replace("090-1234-5678", "[PHONE]")
    assert masked_bounded(None, 10) is None


# texts of addresses, phone numbers and filler around the cut points: the stored prefix is the whole text masked,
# then cut; and as the filler has none of an address's characters (a-p, @), one left outside [EMAIL] is a piece
# of one
_LOCAL = st.text("abcdefghijklmnop", min_size=1, max_size=40)
_ADDRESS = st.builds(lambda a, b, d: f"{a}.{b}@{d}.co.jp", _LOCAL, _LOCAL, st.text("abcdefghijklmnop", min_size=1,
                                                                                   max_size=20))
_PHONE = st.sampled_from(["090-1234-5678", "03-1234-5678", "(03) 1234-5678", "+81 90 1234 5678", "0120 123 456"])
_FILLER = st.text("qrstuvwxyz", min_size=1, max_size=60)
_SEP = st.sampled_from([" ", "\n", " は ", "、", " \u200b "])
_CLUSTER = st.lists(_ADDRESS, min_size=5, max_size=20).map(" ".join)  # masking shrinks it by hundreds
_PIECES = st.lists(st.one_of(_ADDRESS, _CLUSTER, _PHONE, _FILLER), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_PIECES, _SEP, st.integers(min_value=0, max_value=300), st.sampled_from([0, 16, 100, 256, 300]))
def test_a_stored_prefix_is_the_whole_text_masked_and_cut(pieces, sep, pad, limit):
    text = "z" * pad + sep + sep.join(pieces)
    stored = masked_bounded(text, limit)
    head = NOTE.sub("", stored)
    assert not re.search(r"[a-p@]", TOKEN.sub(" ", head)), stored
    if len(text) > limit:
        assert head == mask_personal_data(text)[:limit] and NOTE.search(stored)
    else:
        assert stored == mask_personal_data(text)


@pytest.mark.timeout(60)
def test_masking_a_huge_text_stays_bounded_and_still_leaves_no_piece():
    """A window that masking empties (invisible characters) grows, but only so far: what it cannot prove whole
    is left out, never stored half."""
    hidden = "\u200b" * 3_000_000 + " tanaka.taro@example.co.jp " + "x" * 1000
    stored = masked_bounded(hidden, 256)
    assert "tanaka" not in stored and "[3001027 chars, sha256 " in stored
    huge = "tanaka.taro@example.co.jp " * 200_000  # masking shrinks it to under a third
    stored = masked_bounded(huge, 8192)
    assert stored == ("[EMAIL] " * 1100)[:8192] + f"…[{len(huge)} chars, sha256 " + stored[-17:]


def test_masked_if_cut_masks_only_what_it_has_to_cut():
    assert masked_if_cut("tanaka@example.com", 100) == "tanaka@example.com"  # not cut: the log masks it, if on
    stored = masked_if_cut("x" * 90 + " tanaka.taro@example.co.jp", 100)
    assert "tanaka" not in stored and stored.startswith("x" * 90 + " [EMAIL]") and "[116 chars, sha256 " in stored
    assert masked_if_cut(None, 5) is None


def test_a_user_id_cut_at_its_bound_keeps_no_piece_of_an_address():
    uid = "dept-" + "x" * 110 + " tanaka.taro@example.co.jp"
    stored = pseudonym(uid)
    assert "tanaka" not in stored and "@" not in stored and re.search(r"#[0-9a-f]{12}\Z", stored)
    assert pseudonym("u1") == "u1" and pseudonym("tanaka@example.com").startswith("[EMAIL]#")


def _agent(tmp_path, probs, **logging):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "decision_timeout_s": 5, "generate_responses": False},
        "logging": {"audit_log": str(tmp_path / "audit.jsonl"), **logging},
        "escalation": {"queue_db": str(tmp_path / "q.sqlite"), "enable_notifications": False}})
    return Agent(cfg, decider=FakeDecider(probs))


def _run(tmp_path, item, probs=(0.95, 0.03, 0.02), **logging):
    agent = _agent(tmp_path, probs, **logging)
    try:
        result = agent.run_batch([item])[0]
        case = agent.queue.get(result["escalation_id"]) if result.get("escalation_id") else None
    finally:
        agent.close()
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()]
    return result, records, case


@pytest.mark.parametrize("probs", [(0.95, 0.03, 0.02), (0.4, 0.3, 0.3)])
def test_the_audit_log_keeps_no_piece_of_an_address_cut_at_the_window(tmp_path, probs):
    _, records, _ = _run(tmp_path, {"user_request": STRADDLING, "user_id": "u1"}, probs,
                         max_field_chars=256, mask_personal_data=True)
    assert "tanaka" not in records[-1]["input"] and "@" not in _head(records[-1]["input"])


@pytest.mark.parametrize("mask", [True, False])
def test_a_request_over_the_limit_is_masked_before_it_is_cut(tmp_path, mask):
    request = "q" * 3985 + " tanaka.taro@example.co.jp 090-1234-5678"  # cut at 4000 inside the address
    result, records, case = _run(tmp_path, {"user_request": request, "context": "y" * 3990 + " sato@example.com x",
                                            "user_id": "x" * 120 + " suzuki.ichiro@example.co.jp"},
                                 mask_personal_data=mask)
    assert result["decision"] == "ESCALATE" and "limit is 4000" in result["error"]
    assert len(records) == 1 and records[0]["decision"] == "ESCALATE"
    for stored in (records[0]["input"], case["input"]):
        assert "tanaka" not in stored and "@" not in _head(stored), stored[-80:]
        assert stored.startswith("q" * 3985 + " [EMAIL]") and f"[{len(request)} chars, sha256 " in stored
    for stored in (records[0]["context"], case["context"], records[0]["user_id"], case["user_id"]):
        assert "sato" not in stored and "suzuki" not in stored, stored[-80:]


def test_a_request_that_fails_for_another_reason_is_stored_as_the_log_stores_any(tmp_path):
    """Nothing to cut: with masking off the log keeps the raw text, as it does for a decided request."""
    _, records, case = _run(tmp_path, {"user_request": "mail tanaka@example.com", "user_id": 5},
                            mask_personal_data=False)
    assert records[0]["input"] == "mail tanaka@example.com" and case["input"] == "mail [EMAIL]"
