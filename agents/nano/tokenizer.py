r"""A character-level tokenizer for the nano model, saved as an ordinary Hugging Face tokenizer.

One token per character of :data:`CHARSET` (printable ASCII, newline, tab), plus the special
tokens of Qwen's chat format. It is a ``tokenizers`` BPE model without merges behind a
pre-tokenizer that isolates every character, wrapped in
:class:`~transformers.PreTrainedTokenizerFast`:
``save_pretrained`` writes it and ``AutoTokenizer.from_pretrained`` loads it, so the nano model
goes through the same transcript and policy code as any model.

Out-of-charset characters (``é``, the ``…`` of a truncated observation, a private-use code
point) fall back to their UTF-8 bytes, one token per byte (``<0xE2>`` …), the way Llama's
tokenizer does: no text is ever lost or replaced by an unknown token.

Round trip. ``decode(encode(text)) == text`` for any text, and ``encode(decode(ids)) == ids``
for any ids that do not split a character's bytes: a character is always the same tokens and a
special token is an added token, matched whole before characters are split. So re-tokenizing
an episode between turns never drifts, whatever the sandbox prints.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

__all__ = [
    "CHARSET",
    "CHAT_TEMPLATE",
    "EOS_TOKEN",
    "IM_START",
    "PAD_TOKEN",
    "SPECIAL_TOKENS",
    "build_tokenizer",
    "save_tokenizer",
]

CHARSET = "\t\n" + "".join(chr(c) for c in range(32, 127))
"""The characters that are tokens: tab, newline and printable ASCII (space to ``~``)."""

IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
"""Ends a chat message: the end-of-sequence token of generation."""
PAD_TOKEN = "<|endoftext|>"
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN)
"""Special tokens, with ids 0-2 in this order; characters follow in :data:`CHARSET` order, then
the 256 byte tokens ``<0x00>`` … ``<0xFF>``."""

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role in ('system', 'user', 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
    "{%- elif message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}"
    "{{- '<|im_start|>user' }}"
    "{%- endif %}"
    "{{- '\\n<tool_response>\\n' + message.content + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- else %}"
    "{{- raise_exception('unknown chat role: ' + message.role) }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)
"""Qwen's chat format without thinking: ``<|im_start|>role\\ncontent<|im_end|>\\n`` per message;
consecutive ``tool`` messages share one user turn, each wrapped in ``<tool_response>``."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """The nano tokenizer (the same vocabulary every time: special tokens, :data:`CHARSET`,
    bytes)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARSET:
        vocab[char] = len(vocab)
    for byte in range(256):
        vocab[f"<0x{byte:02X}>"] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, [], byte_fallback=True))
    # Every character (newlines included) is its own piece; one outside the charset becomes
    # its UTF-8 byte tokens.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def save_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Builds the tokenizer and saves it into ``folder``; returns it."""
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(folder)
    return tokenizer
