"""Forms of personal data that leaked past masking: an address or number cut at logging.max_field_chars before
it was masked (the audit log kept 'tanaka.taro@exa'), addresses with letters outside ASCII, numbers with
space-padded hyphens or a trunk prefix '(0)', international numbers read as cards, and a space before an
honorific. Ordinary numbers and the Japanese text around an address must stay as written."""

import json

import pytest

from so8t_lib.serve.config import RuntimeConfig
from so8t_lib.serve.masking import mask_personal_data
from so8t_lib.serve.runtime import Agent
from tests.test_runtime import FakeDecider

REQUEST = "x" * 240 + " tanaka.taro@example.co.jp and 090-1234-5678 please"  # the address crosses char 256
CONTEXT = "y" * 245 + " call 090-1234-5678"


def _decide(tmp_path, probs, mask):
    cfg = RuntimeConfig.model_validate({
        "model": {"checkpoint_path": "unused"},
        "inference": {"safety_threshold": 0.8, "decision_timeout_s": 5, "generate_responses": False},
        "logging": {"audit_log": str(tmp_path / "audit.jsonl"), "max_field_chars": 256, "mask_personal_data": mask},
        "escalation": {"queue_db": str(tmp_path / "q.sqlite"), "enable_notifications": False}})
    agent = Agent(cfg, decider=FakeDecider(probs))
    try:
        result = agent.run_batch([{"user_request": REQUEST, "context": CONTEXT, "user_id": "u1"}])[0]
    finally:
        agent.close()
    lines = (tmp_path / "audit.jsonl").read_text(encoding="utf-8").splitlines()
    return result, json.loads(lines[-1])


@pytest.mark.parametrize("probs, decision", [((0.95, 0.03, 0.02), "ALLOW"), ((0.4, 0.3, 0.3), "ESCALATE")])
def test_an_address_cut_at_the_field_limit_is_masked_in_the_audit_log(tmp_path, probs, decision):
    result, record = _decide(tmp_path, probs, mask=True)
    assert result["decision"] == decision
    for stored in (record["input"], record["context"]):
        assert "tanaka" not in stored and "@" not in stored and "090" not in stored, stored
    assert record["input"].startswith("x" * 240 + " [EMAIL] and ") and "[291 chars, sha256 " in record["input"]
    assert record["context"].startswith("y" * 245 + " call [PH") and "[264 chars, sha256 " in record["context"]


def test_with_masking_off_the_audit_log_keeps_the_bounded_raw_text(tmp_path):
    _, record = _decide(tmp_path, (0.95, 0.03, 0.02), mask=False)
    assert record["input"].startswith(REQUEST[:256] + "…[291 chars, sha256 ")
    assert record["context"].startswith(CONTEXT[:256] + "…[264 chars, sha256 ")


@pytest.mark.parametrize("text, expected", [
    ("mail 田中@example.co.jp please", "mail [EMAIL] please"),
    ("mail taro@例え.jp please", "mail [EMAIL] please"),
    ("mail tanaka.taro@exämple.com please", "mail [EMAIL] please"),
    ("mail józef.müller@example.pl", "mail [EMAIL]"),
    ("почта иван@пример.рф сегодня", "почта [EMAIL] сегодня"),
    ("mail 田中.taro@example.jp", "mail [EMAIL]"),
    ("mail taro@例え.日本 please", "mail [EMAIL] please"),
    ("...taro@example.com", "[EMAIL]"),
    # Japanese written straight before or after the address is not part of it
    ("連絡先は田中@example.co.jpです", "連絡先は[EMAIL]です"),
    ("連絡先は山田太郎@example.co.jpまでお願いします", "連絡先は[EMAIL]までお願いします"),
    ("担当はタナカ@example.jpです", "担当は[EMAIL]です"),
    ("連絡先はたなか@example.jpです", "連絡先[EMAIL]です"),  # one script: the particle goes with it, never the name
    ("宛先tanaka@example.comに送付", "宛先[EMAIL]に送付"),
    ("taro@例え.jpにメール", "[EMAIL]にメール"),
    ("taro@例え.日本です", "[EMAIL]です"),
    ("taro@example.jpです.次に", "[EMAIL]です.次に"),
    ("連絡先はtanaka@example.comです", "連絡先は[EMAIL]です"),
])
def test_addresses_with_letters_outside_ascii_are_masked_alone(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [
    "田中@営業部", "単価@100円.税別", "@example.com", "会議室@3F", "price: 3 items @ 100.5 yen",
])
def test_at_signs_that_are_no_address_stay(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text, expected", [
    ("call 03 - 1234 - 5678", "call [PHONE]"),
    ("call 090 - 1234 - 5678 now", "call [PHONE] now"),
    ("My Number 1234 - 5678 - 9018", "My Number [MY_NUMBER]"),  # with spaced hyphens: its check digit holds
    ("card 4111 - 1111 - 1111 - 1111", "card [CARD]"),
    ("card 3782 - 822463 - 10005", "card [CARD]"),
    ("call +81 (0)3-1234-5678", "call [PHONE]"),
    ("call +81 (0)90-1234-5678", "call [PHONE]"),
    ("call +86 138 0013 8000", "call [PHONE]"),
    ("call +33 1 23 45 67 89", "call [PHONE]"),
    ("call +49 30 123 456 789", "call [PHONE]"),
    ("call +7 495 123 45 67", "call [PHONE]"),
    ("call +81 90 1234 5678", "call [PHONE]"),
    ("call +1 (415) 555-0100", "call [PHONE]"),
    ("TEL+81-3-1234-5678", "TEL[PHONE]"),
    ("+8613800138000", "[PHONE]"),
    # a number after a complete one is not taken with it
    ("call +81 3 1234 5678 2 times", "call [PHONE] 2 times"),
    ("+1 415 555 0100 10:00-12:00", "[PHONE] 10:00-12:00"),
    ("+86 138 0013 8000 2026年", "[PHONE] 2026年"),
])
def test_numbers_with_padded_hyphens_and_international_forms_are_masked_whole(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [
    "2026 - 12 - 01", "期間: 2026-12-01 - 2027-01-31", "1,234,567 円", "1,234,567円の請求", "INC-2026-1234",
    "INC-2026-1234 - done", "version 10.0.19045.3803", "python 3.10.12 - 3.12.4", "05 - 12 - 2026",
    "score +3 - 1", "+100 points", "10:00 - 12:00", "第3 - 4 四半期", "pages 120 - 135",
])
def test_dates_amounts_versions_and_ticket_ids_stay(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text, expected", [
    ("山田 太郎 様へ送付", "[NAME] 様へ送付"),
    ("山田太郎 様", "[NAME] 様"),
    ("山田\u3000太郎\u3000様", "[NAME] 様"),
    ("鈴木 一郎 氏", "[NAME] 氏"),
    ("佐藤さくら さんへ", "[NAME] さんへ"),
    ("ミナト商事 田中 様", "ミナト商事 [NAME] 様"),
])
def test_a_space_before_the_honorific_hides_no_name(text, expected):
    assert mask_personal_data(text) == expected


# a word set off before a title is mostly no name (承認者 部長, 大学 先生), so a name there stays as well
@pytest.mark.parametrize("text", ["お客 様", "皆 様", "営業 部長に確認", "ご担当者 様", "サクラ商事 様", "その 様子",
                                  "田中 部長の承認"])
def test_roles_and_set_phrases_before_a_spaced_honorific_stay(text):
    assert mask_personal_data(text) == text


@pytest.mark.timeout(60)  # a hang guard, as test_sanitize's megabyte shapes
@pytest.mark.parametrize("shape", ["田@", "田.", "は田", "a田", "田a.", "é", "é@é.", "@例.", "+1 ", "+1 (0)", "1 - ",
                                   "0 - ", "田 ", "田 様 ", "a.田.", "a@例.", "@a.例", "x" * 63 + "@例え",
                                   "a@1.", "@1.1.", "a@1.1.1.1.", "単@1.5", "田部長 様",
                                   "田 部長", "田課長", "+1.", "+1.1 ", "GMT +1 ", "1 - 1 - ", "0 - 0 - 0 ",
                                   "0900 - 1200 - 1500 ", "+12345.67 "])
def test_the_new_forms_run_in_linear_time_on_a_megabyte(shape):
    text = shape * (1_000_000 // len(shape))
    masked = mask_personal_data(text)
    assert isinstance(masked, str) and len(masked) < 2 * len(text)


@pytest.mark.parametrize("text", [
    "単価@12.50ドルで10個", "10個@1.5万円", "ボルト@0.35円×1000個", "会議@本社.10F", "懇親会@新宿.19時から",
    "3 items @1.50 each",
])
def test_an_at_sign_for_a_unit_price_or_a_place_stays(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text, expected", [
    ("mail taro@example.co.jp please", "mail [EMAIL] please"),
    ("mail taro@mail2.example.com", "mail [EMAIL]"),
    ("mail taro@example.com.10F", "mail [EMAIL].10F"),
    ("mail taro@10.0.0.1 please", "mail [EMAIL] please"),
    ("mail 田中@例え.日本", "mail [EMAIL]"),
])
def test_addresses_whose_domain_holds_digits_are_still_masked(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("山田課長 殿", "[NAME]課長 殿"),
    ("田中部長 様、資料を送ります", "[NAME]部長 様、資料を送ります"),
    ("高橋課長 さんへ", "[NAME]課長 さんへ"),
    ("総務部 山田課長 殿", "総務部 [NAME]課長 殿"),
    ("田中部長様", "[NAME]部長様"),
    ("営業部田中部長様", "営業部[NAME]部長様"),
    ("田中本部長様", "[NAME]本部長様"),
    ("長谷部部長様", "[NAME]部長様"),
    ("山田社長さん", "[NAME]社長さん"),
    ("山田 太郎部長 様", "[NAME]部長 様"),
])
def test_a_name_before_a_title_and_an_honorific_is_masked_and_the_title_kept(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", ["営業部長様", "営業本部長様", "副社長 様", "社長様", "部長 殿"])
def test_a_title_alone_before_an_honorific_stays(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text", ["本日の会議 部長も参加します", "4月 部長面談", "承認者 部長", "大学 先生"])
def test_a_word_before_a_spaced_title_stays(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text", [
    "差額 +12345.67 円", "balance +15000.00 USD", "GMT +9 2026-12-01", "UTC +9 2026-12-01 10:00",
    "2024 - 2025 - 2026", "0900 - 1200 - 1500", "会議 0900 - 1200 - 1500 の枠",
])
def test_signed_amounts_time_zones_and_spaced_lists_stay(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text, expected", [
    ("call +1.415.555.0100", "call [PHONE]"),
    ("call +81.3.1234.5678", "call [PHONE]"),
    ("whois +1.4155550100", "whois [PHONE]"),
    ("UTC +81 3 1234 5678", "UTC [PHONE]"),
    ("番号 1234 - 5678 - 9018 です", "番号 [MY_NUMBER] です"),
    ("番号 2024-2025-2026", "番号 [MY_NUMBER]"),  # without spaced hyphens, as before
    ("call 0120 - 123 - 456", "call [PHONE]"),
])
def test_phones_and_my_numbers_near_those_forms_are_still_masked(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text, masked", [
    ("090-1234-5678 090-1234-5678", "[PHONE] [PHONE]"),
    ("03-1234-5678 03-1234-5678", "[PHONE] [PHONE]"),
    ("4111 1111 1111 1111", "[CARD]"), ("4111-1111-1111-1111", "[CARD]"), ("4111111111111111", "[CARD]"),
    ("4111-1111 1111-1111", "[CARD]"), ("3782 822463 10005", "[CARD]"),
])
def test_two_phone_numbers_a_space_apart_are_two_phones_not_a_card(text, masked):
    """A card's run of single-character gaps took a space and hyphens mixed: two phone numbers a space apart were
    read as one 18-digit card, and the second number's last group stayed in clear ('[CARD]-5678')."""
    assert mask_personal_data(text) == masked
