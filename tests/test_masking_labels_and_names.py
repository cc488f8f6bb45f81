"""Masking where a label is glued to a phone number (TEL090-...) and where a titled name has letters outside ASCII
or no space after the title's dot: each leaked a number or part of a name into audit records and cases."""

import pytest

from so8t_lib.serve.masking import mask_personal_data


@pytest.mark.parametrize("text, expected", [
    ("連絡先はTEL090-1234-5678です", "連絡先はTEL[PHONE]です"),
    ("TEL03-1234-5678 / FAX03-1234-5679", "TEL[PHONE] / FAX[PHONE]"),
    ("Tel.03-1234-5678", "Tel.[PHONE]"),
    ("Phone090 1234 5678", "Phone[PHONE]"),
    ("mobile09012345678", "mobile[PHONE]"),
    ("ＴＥＬ０９０－１２３４－５６７８", "TEL[PHONE]"),  # full width, NFKC first
])
def test_a_phone_number_right_after_its_label_is_masked(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", [
    "INV0012-3456-789", "order ORD03-1234-5678 shipped", "SKU090-1234-5678", "v0.12.3456.7890", "TEL 1234",
    "TEL0312",  # too short to be a number
])
def test_ids_and_short_numbers_after_other_letters_stay(text):
    assert mask_personal_data(text) == text


@pytest.mark.parametrize("text, expected", [
    ("Please forward this to Dr. José García", "Please forward this to Dr. [NAME]"),
    ("Mr. Schröder asked for the form", "Mr. [NAME] asked for the form"),
    ("Prof. Müller's office", "Prof. [NAME] office"),
    ("Mr.Smith asked", "Mr.[NAME] asked"),
    ("Dr.Élodie Dupont called", "Dr.[NAME] called"),
    ("Ms. Ångström and Mr. Øster", "Ms. [NAME] and Mr. [NAME]"),
    ("Mrs. Łukasiewicz-Nowak", "Mrs. [NAME]"),
    ("Please ask Mr. Smith and Tanaka-san", "Please ask Mr. [NAME] and [NAME]-san"),
])
def test_a_titled_name_is_masked_whole_whatever_its_letters(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text", ["Dr. who knows", "Mr. é", "Mrs.", "Mr.smith", "the Dr.'s note", "MrSmith"])
def test_a_title_before_no_capitalised_word_masks_nothing(text):
    assert mask_personal_data(text) == text


@pytest.mark.timeout(60)  # a hang guard, as test_sanitize's megabyte shapes
@pytest.mark.parametrize("shape", ["Mr.", "Mr.A", "Dr. Éé ", "TEL0", "tel.0-", "fax0-1", "Prof.\n", "É"])
def test_the_new_shapes_run_in_linear_time_on_a_megabyte(shape):
    text = shape * (1_000_000 // len(shape))
    masked = mask_personal_data(text)
    assert isinstance(masked, str) and len(masked) < 2 * len(text)


@pytest.mark.parametrize("text, masked", [
    ("Mr.Smithに請求書の件で至急連絡してください", "Mr.[NAME]に請求書の件で至急連絡してください"),
    ("Dr. Tanaka田中さんの口座番号を教えて", "Dr. [NAME][NAME]さんの口座番号を教えて"),
    ("Prof. Müllerのゼミは何時からですか", "Prof. [NAME]のゼミは何時からですか"),
])
def test_a_titled_name_stops_where_japanese_text_begins(text, masked):
    """A name of any script's letters took the Japanese sentence after it too (no spaces to stop it), so the
    audit record and the reviewer's case lost the whole request."""
    assert mask_personal_data(text) == masked
