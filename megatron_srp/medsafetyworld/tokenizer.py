"""The MedSafetyWorld tokenizer: one token per word, trained once on the world's text.

The world's text is space-separated words and punctuation (``Rx : Velorin 200 mg daily .``), so a
word-level vocabulary gives every drug, condition, enzyme and patient name one token, as in the
feasibility prototype (a byte-level BPE splits the generated names into shared suffix pieces).
Saved as a standard Hugging Face tokenizer directory (``tokenizer.json``, ``tokenizer_config.json``
with a chat template), so preprocessing, export, post-training and evaluation use it like any
other tokenizer.
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from megatron_srp.io import atomic_dir

EOS = "<|endoftext|>"
UNK = "<|unk|>"
# "User : ... Assistant : ..." in the world's own spaced style; the generation prompt ends with
# "Assistant :" so the answer starts a new word.
CHAT_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %} {% endif %}"
    "{{ 'User' if m['role'] == 'user' else 'Assistant' }} : {{ m['content'] }}{% endfor %}"
    "{% if add_generation_prompt %} Assistant :{% endif %}"
)


def train_word_tokenizer(texts: Iterable[str], out_dir: str) -> str:
    """Every whitespace-separated word of ``texts`` becomes a token (plus end-of-text and unknown)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.WordLevel(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[EOS, UNK], min_frequency=1))
    with atomic_dir(out_dir) as tmp:
        tok.save(os.path.join(tmp, "tokenizer.json"))
        with open(os.path.join(tmp, "tokenizer_config.json"), "w") as f:
            json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS,
                       "unk_token": UNK, "chat_template": CHAT_TEMPLATE, "model_max_length": 4096}, f, indent=1)
    return out_dir
