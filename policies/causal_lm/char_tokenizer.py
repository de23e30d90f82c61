"""A character-level tokenizer in Hugging Face layout: one token per printable ASCII character.

Built with the `tokenizers` library and wrapped as a fast tokenizer, so `save_pretrained` writes a
tokenizer.json that `AutoTokenizer.from_pretrained` loads with no custom code (the env decodes responses with
it). Characters outside printable ASCII become <unk>. No chat template: prompts are used as they are.
"""

from __future__ import annotations

import string

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
CHARACTERS = tuple(c for c in string.printable if c.isprintable() or c == "\n")


def build_char_tokenizer():
    """A `PreTrainedTokenizerFast` with ids 0..3 = <pad>, <s>, </s>, <unk>, then one id per character."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
