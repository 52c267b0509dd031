r"""A character-level tokenizer for the nano model, saved as an ordinary Hugging Face tokenizer.

One token per character of :data:`CHARSET` (printable ASCII, newline, tab), plus the special
tokens of Qwen's chat format. It is a ``tokenizers`` word-level model behind a pre-tokenizer
that isolates every character, wrapped in :class:`~transformers.PreTrainedTokenizerFast`:
``save_pretrained`` writes it and ``AutoTokenizer.from_pretrained`` loads it, so the nano model
goes through the same transcript and policy code as any model.

Round trip. For text in the charset, ``decode(encode(text)) == text`` and ``encode(decode(ids))
== ids`` for any ids: a character is always one token and a special token is an added token,
matched whole before characters are split. So re-tokenizing an episode between turns never
drifts.

Out-of-charset characters (``é``, ``→``, a private-use code point) each become one
:data:`UNK_TOKEN`, which is itself a special token: the text loses the character but the ids
stay stable — ``<|unk|>`` decodes to its own name and encodes back to the same id.
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
    "UNK_TOKEN",
    "build_tokenizer",
    "save_tokenizer",
]

CHARSET = "\t\n" + "".join(chr(c) for c in range(32, 127))
"""The characters that are tokens: tab, newline and printable ASCII (space to ``~``)."""

IM_START = "<|im_start|>"
EOS_TOKEN = "<|im_end|>"
"""Ends a chat message: the end-of-sequence token of generation."""
PAD_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<|unk|>"
"""Stands for any character outside :data:`CHARSET`."""
SPECIAL_TOKENS = (PAD_TOKEN, IM_START, EOS_TOKEN, UNK_TOKEN)
"""Special tokens, with ids 0-3 in this order; characters follow in :data:`CHARSET` order."""

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
    """The nano tokenizer (the same vocabulary every time: special tokens, then :data:`CHARSET`)."""
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    for char in CHARSET:
        vocab[char] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token=UNK_TOKEN))
    # Every character (newlines included) is its own piece; unknown ones become <|unk|>.
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
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
