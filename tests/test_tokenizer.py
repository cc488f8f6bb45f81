"""The project's own byte-level BPE: lossless on Japanese and English, ChatML-shaped."""

import json
import unicodedata

import pytest

from so8t_lib.model.tokenizer import (
    CHAT_TEMPLATE,
    IM_END,
    IM_START,
    SPECIAL_TOKENS,
    corpus_texts,
    load_tokenizer,
    train_tokenizer,
)

SAMPLES = [
    "プロセスをkillしてください。",
    "お疲れ様です！ＰＣのﾊﾟｽﾜｰﾄﾞを忘れてしまいました…",
    "How do I kill a hung Python process? It's using 100% CPU.",
    "経費精算の締め日は毎月25日ですか？　確認お願いします。\n\tタブと改行も。",
    "emoji 🙂 and symbols ©®™ and 12,345.67 yen",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip_is_lossless(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == unicodedata.normalize("NFC", text)


def test_special_tokens_are_single_ids(tokenizer):
    for token in SPECIAL_TOKENS:
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert tokenizer.eos_token == IM_END and tokenizer.pad_token_id is not None


def test_chat_template_is_chatml(tokenizer):
    text = tokenizer.apply_chat_template([{"role": "user", "content": "こんにちは"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text == f"{IM_START}user\nこんにちは{IM_END}\n{IM_START}assistant\n"
    assert tokenizer.chat_template == CHAT_TEMPLATE


def test_it_learned_japanese_merges(tokenizer):
    # a trained BPE needs far fewer tokens than the 3 bytes per character of raw UTF-8
    text = "お疲れ様です。経費精算についてお伺いします。"
    assert len(tokenizer(text)["input_ids"]) < len(text.encode("utf-8")) / 2


def test_training_is_deterministic_and_save_load_round_trips(tmp_path):
    texts = SAMPLES * 20
    a, b = train_tokenizer(texts, vocab_size=400), train_tokenizer(texts, vocab_size=400)
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    a.save_pretrained(str(tmp_path))
    loaded = load_tokenizer(tmp_path)
    assert loaded(SAMPLES[1])["input_ids"] == a(SAMPLES[1])["input_ids"]


def test_corpus_texts_reads_all_fields_and_reports_bad_lines(tmp_path):
    good = tmp_path / "train.jsonl"
    good.write_text(json.dumps({"context": "c", "user_request": "r", "label": "ALLOW", "task_output": "t",
                                "rationale": None}) + "\n",
                    encoding="utf-8")
    assert corpus_texts(good) == ["c", "r", "t"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"user_request": "ok", "label": "ALLOW"}\n{broken\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.jsonl:2"):
        corpus_texts(bad)
    with pytest.raises(FileNotFoundError, match="so8t corpus build"):
        corpus_texts(tmp_path / "missing.jsonl")


def test_a_cache_folder_without_its_tokenizer_is_rebuilt_not_a_failure_every_run(tmp_path, monkeypatch):
    """A cache folder left without tokenizer.json (emptied, cut short by a full disk) made every run train a
    tokenizer, fail to move it in, and stop with "no tokenizer.json" until someone found and deleted it."""
    from so8t_lib.model import tokenizer as tokenizer_module

    train = tmp_path / "train.jsonl"
    train.write_text("".join(f'{{"id": "r{i}", "user_request": "expense form {i} 経費 {i}", "label": "ALLOW"}}\n'
                             for i in range(40)), encoding="utf-8")
    monkeypatch.setenv("SO8T_CACHE", str(tmp_path / "cache"))
    first = tokenizer_module.tiny_tokenizer(vocab_size=300, train_file=train)
    folder = next((tmp_path / "cache" / "tokenizers").iterdir())
    (folder / "tokenizer.json").unlink()
    again = tokenizer_module.tiny_tokenizer(vocab_size=300, train_file=train)
    assert (folder / "tokenizer.json").is_file() and again.get_vocab() == first.get_vocab()
