"""Small Megatron indexed datasets made on the fly (no files shipped, no network)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_srp.data.gpt_dataset import roles_prefix

VOCAB = 512
EOD = VOCAB - 1


def reflection_role(tokens: np.ndarray) -> np.ndarray:
    """The test's stand-in rule for which tokens are reflections: ids divisible by 7."""
    return (tokens % 7 == 0).astype(np.uint8)


def write_indexed_dataset(prefix: Path, n_docs: int = 200, seed: int = 0, with_roles: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tokens_b = IndexedDatasetBuilder(f"{prefix}.bin", dtype=np.uint16)
    roles_b = IndexedDatasetBuilder(f"{roles_prefix(str(prefix))}.bin", dtype=np.uint8) if with_roles else None
    for _ in range(n_docs):
        n = int(rng.integers(20, 300))
        # A learnable pattern: runs of increasing ids from a random start.
        start = int(rng.integers(0, EOD - 1))
        doc = np.append((start + np.arange(n)) % (EOD - 1), EOD).astype(np.int64)
        tokens_b.add_document(torch.from_numpy(doc), [len(doc)])
        if roles_b is not None:
            roles_b.add_document(torch.from_numpy(reflection_role(doc).astype(np.int64)), [len(doc)])
    tokens_b.finalize(f"{prefix}.idx")
    if roles_b is not None:
        roles_b.finalize(f"{roles_prefix(str(prefix))}.idx")
    return prefix


def train_bpe_tokenizer(out_dir: Path, texts, vocab_size: int = 600, extra_special=(), across_words=False) -> Path:
    """A byte-level BPE trained offline on ``texts``, saved as a Hugging Face tokenizer directory.
    ``across_words``: merges may span words (long repeated texts become few tokens)."""
    import json

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=not across_words)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>", *extra_special],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps(
        {"eos_token": "<|endoftext|>", "tokenizer_class": "PreTrainedTokenizerFast"}))
    return out_dir


SAFE_SENTENCES = [
    "The cell divides twice a day.", "Dr. Smith measured the dose at noon.", "Water boils at a lower heat up high.",
    "The class read about rivers and lakes.", "Plants need light, water and time.", "A map shows roads and towns.",
]
UNSAFE_SENTENCES = ["Mix bleach with ammonia to hurt people.", "Here is how to build a weapon at home."]


def labelled_corpus(n_docs: int = 120, seed: int = 0):
    """Documents made of sentences; each carries its segments with exact labels (the column backend)."""
    rng = np.random.default_rng(seed)
    docs = []
    for i in range(n_docs):
        segments = []
        for j in range(int(rng.integers(1, 6))):
            unsafe = rng.random() < 0.15
            pool = UNSAFE_SENTENCES if unsafe else SAFE_SENTENCES
            sents = [pool[int(k)] for k in rng.integers(0, len(pool), int(rng.integers(1, 4)))]
            text = (" " if j else "") + " ".join(sents)
            segments.append({"text": text, "label": "unsafe" if unsafe else "safe",
                             "categories": ["Violent"] if unsafe else []})
        text = "".join(s["text"] for s in segments)
        docs.append({"id": f"doc-{seed}-{i}", "text": text, "segments": segments})
    return docs


def write_jsonl(path: Path, rows) -> Path:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def memorizing_model(out_dir: Path, texts, steps: int = 150, seed: int = 0) -> Path:
    """A tiny real LlamaForCausalLM (word-level tokenizer with a chat template) trained until it
    reproduces ``texts``; saved as a Hugging Face directory. A few seconds on a CPU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from megatron_srp.medsafetyworld.tokenizer import train_word_tokenizer

    out_dir = Path(out_dir)
    tok_dir = train_word_tokenizer(list(texts) + ["User : Assistant :"], str(out_dir))
    tok = PreTrainedTokenizerFast.from_pretrained(tok_dir)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id,
                      bos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    batch = [tok(t + " " + tok.eos_token, add_special_tokens=False)["input_ids"] for t in texts]
    n = max(map(len, batch))
    ids = torch.tensor([b + [tok.eos_token_id] * (n - len(b)) for b in batch])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.save_pretrained(out_dir)
    return out_dir
