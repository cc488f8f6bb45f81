"""Personal-data masking: e-mail, phone, card and My Number are masked; ordinary numbers are not."""

import pytest

from so8t_lib.serve.masking import mask_personal_data


@pytest.mark.parametrize("text, expected", [
    ("mail tanaka.k@example.co.jp now", "mail [EMAIL] now"),
    ("card 4111 1111 1111 1111 ok", "card [CARD] ok"),
    ("card 4111-1111-1111-1112", "card [CARD]"),
    ("マイナンバーは123456789012です", "マイナンバーは[MY_NUMBER]です"),
    ("番号 1234 5678 9012", "番号 [MY_NUMBER]"),
    ("電話 03-1234-5678 または 090-1234-5678", "電話 [PHONE] または [PHONE]"),
    ("call +81 90 1234 5678", "call [PHONE]"),
    ("order 12345 costs 3000 yen", "order 12345 costs 3000 yen"),
    ("2024年の売上は1200万円", "2024年の売上は1200万円"),
    ("python 3.10.12", "python 3.10.12"),
])
def test_masking(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("連絡先はｔａｎａｋａ＠ｅｘａｍｐｌｅ．ｃｏｍです", "連絡先は[EMAIL]です"),  # full width, as the fail-closed path stores it
    ("電話は０９０－１２３４－５６７８", "電話は[PHONE]"),
    ("連絡先はtanaka@example.comです", "連絡先は[EMAIL]です"),  # Japanese around it is not part of the address
    ("営業部の田中部長と長谷川太郎さんに確認", "営業部の[NAME]部長と[NAME]さんに確認"),
    ("お客様と皆さん、ご苦労様です", "お客様と皆さん、ご苦労様です"),  # set phrases, not names
    ("Please ask Mr. Smith and Tanaka-san", "Please ask Mr. [NAME] and [NAME]-san"),
])
def test_full_width_data_and_names_are_masked(text, expected):
    assert mask_personal_data(text) == expected


@pytest.mark.timeout(60)  # a hang guard: the old patterns took hours on these inputs
@pytest.mark.parametrize("shape", ["x", "a@", "1", "0-", "田", "Mr ", "+1 ", "a.", "x" * 63 + "@"])
def test_masking_runs_in_linear_time_on_a_megabyte(shape):
    text = shape * (1_000_000 // len(shape))
    masked = mask_personal_data(text)
    assert isinstance(masked, str) and len(masked) < 2 * len(text)

