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
