"""Model-backed classifier backends on tiny real models built in the test (no downloads).

The Qwen3Guard test trains a tiny Qwen3 for a few seconds to answer in Qwen3Guard-Gen's format
(``Safety: Unsafe`` / ``Categories: Violent`` when the moderated turn mentions a weapon, plus
``Refusal: No`` when it moderates a response). Its fixture tokenizer carries Qwen3Guard-Gen's own
chat template as the model ships it (``megatron_srp/data/classifiers/qwen3guard_template.py``), so
prompt building, left-padded batching, generation and parsing run for real on the real prompt.
"""

from __future__ import annotations

import json
import random
import re

import pyarrow.parquet as pq
import pytest
import torch

from megatron_srp.data.classify import ClassifierError, SegmentInput, build_classifier, classify_cached
from megatron_srp.data.classifiers.qwen3guard import (GuardAnswer, GuardOutputError, guard_messages,
                                                      parse_guard_answer, parse_guard_output,
                                                      qwen3guard_longest_answers)
from megatron_srp.data.classifiers.qwen3guard_template import (LEVELS, PROMPT_CATEGORIES, QWEN3GUARD_GEN_CHAT_TEMPLATE,
                                                               REFUSALS, RESPONSE_CATEGORIES)
from megatron_srp.reflection import Verdict
from tests.fixtures import train_bpe_tokenizer, write_jsonl

NOUNS = "garden river teacher recipe lesson planet music bridge market school forest window letter".split()
VERBS = "describes visits paints explains opens finds follows builds reads writes".split()
HARM = "weapon bomb knife".split()
UNSAFE_ANSWER = "Safety: Unsafe\nCategories: Violent"
SAFE_ANSWER = "Safety: Safe\nCategories: None"
GUARD_SPECIAL = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def _answer(harmful: bool, response: bool) -> str:
    """What the tiny guard is trained to say: the template asks for a refusal line on responses only."""
    return (UNSAFE_ANSWER if harmful else SAFE_ANSWER) + ("\nRefusal: No" if response else "")


def _sentence(rng, harmful: bool) -> str:
    words = [rng.choice(NOUNS), rng.choice(VERBS), "the", rng.choice(NOUNS)]
    if harmful:
        words.insert(rng.randrange(len(words) + 1), rng.choice(HARM))
    return " ".join(words) + "."


def _guard_tokenizer(tok_dir):
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), eos_token="<|im_end|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = QWEN3GUARD_GEN_CHAT_TEMPLATE
    return tok


def _item(rng, harmful: bool, with_context: bool) -> SegmentInput:
    return SegmentInput(" " + _sentence(rng, harmful), _sentence(rng, False) if with_context else "")


@pytest.fixture(scope="module")
def tiny_guard(tmp_path_factory):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    d = tmp_path_factory.mktemp("guard")
    rng = random.Random(0)
    import jinja2

    policy = [jinja2.Template(QWEN3GUARD_GEN_CHAT_TEMPLATE).render(messages=m) for m in
              ([{"role": "user", "content": "x"}], [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])]
    texts = ([_sentence(rng, h) for h in [True, False] * 100] + policy * 20
             + [_answer(h, r) for h in (True, False) for r in (True, False)] * 20)
    # merges across words: the guard's ~2.6 KB policy preamble becomes ~50 tokens, so training takes seconds
    tok_dir = train_bpe_tokenizer(d / "guard", texts, vocab_size=1500, extra_special=GUARD_SPECIAL, across_words=True)
    tok = _guard_tokenizer(tok_dir)
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=1024,
                      tie_word_embeddings=True, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen3ForCausalLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for step in range(220):
        batch = []
        for _ in range(16):
            harmful, ctx = rng.random() < 0.5, rng.random() < 0.5
            prompt = tok.apply_chat_template(guard_messages(_item(rng, harmful, ctx)), tokenize=False,
                                             add_generation_prompt=True)
            p = tok(prompt, add_special_tokens=False)["input_ids"]
            a = tok(_answer(harmful, ctx) + "<|im_end|>", add_special_tokens=False)["input_ids"]
            batch.append((p + a, [-100] * len(p) + a))
        n = max(len(x) for x, _ in batch)
        ids = torch.tensor([x + [tok.pad_token_id] * (n - len(x)) for x, _ in batch])
        labels = torch.tensor([y + [-100] * (n - len(y)) for _, y in batch])
        loss = model(input_ids=ids, attention_mask=(labels != -100) | (ids != tok.pad_token_id), labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05, loss.item()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(d / "guard")
    tok.save_pretrained(d / "guard")
    return d / "guard"


def _template_block(prompt: str, name: str) -> list[str]:
    m = re.search(f"<BEGIN {name}>\n(.*?)\n<END {name}>", prompt, re.S)
    return m.group(1).split("\n") if m else []


def test_the_shipped_template_renders_both_tasks(tiny_guard):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_guard)
    prompt = tok.apply_chat_template(guard_messages(SegmentInput(" b.")), tokenize=False, add_generation_prompt=True)
    response = tok.apply_chat_template(guard_messages(SegmentInput(" b.", "a.")), tokenize=False,
                                       add_generation_prompt=True)
    assert "USER: " + " b." + "\n\n<END CONVERSATION>" in prompt and "ASSISTANT" not in prompt.split("<BEGIN CONV")[1]
    assert "USER: a.\n\nASSISTANT:  b.\n\n<END CONVERSATION>" in response
    assert "THE LAST **USER's query**" in prompt and "THE LAST **ASSISTANT's response**" in response
    for p in (prompt, response):
        assert p.startswith("<|im_start|>user\n# Task:\n") and p.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # the taxonomy the parser knows is the one the template offers, per task
    assert tuple(c.rstrip(".") for c in _template_block(prompt, "UNSAFE CONTENT CATEGORIES")) == PROMPT_CATEGORIES
    assert tuple(c.rstrip(".") for c in _template_block(response, "UNSAFE CONTENT CATEGORIES")) == RESPONSE_CATEGORIES
    assert _template_block(prompt, "REFUSAL POLICY") == [] and len(_template_block(response, "REFUSAL POLICY")) == 2
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 2 and tok.convert_tokens_to_ids("<think>") in ids


ANSWERS = [(level, cats, refusal) for level in LEVELS
           for cats in [(), *((c,) for c in PROMPT_CATEGORIES), PROMPT_CATEGORIES, ("Jailbreak", "PII")]
           for refusal in (None, *REFUSALS) if not (level == "Safe" and cats)]


@pytest.mark.parametrize("level,cats,refusal", ANSWERS)
def test_parser_reads_every_answer_the_template_allows(level, cats, refusal):
    text = f"Safety: {level}\nCategories: {', '.join(cats) or 'None'}" + (f"\nRefusal: {refusal}" if refusal else "")
    want = GuardAnswer(Verdict(level.lower(), tuple(cats)), None if refusal is None else refusal == "Yes")
    assert parse_guard_answer(text) == want


def test_max_new_tokens_fits_the_longest_answer(tmp_path):
    """An untrained guard whose tokenizer splits at words (as Qwen's does): the budget is measured with it."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _guard_tokenizer(train_bpe_tokenizer(tmp_path / "g", [_sentence(random.Random(i), False) for i in range(50)],
                                               vocab_size=300, extra_special=GUARD_SPECIAL))
    Qwen3ForCausalLM(Qwen3Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=8)).save_pretrained(tmp_path / "g")
    tok.save_pretrained(tmp_path / "g")
    guard = build_classifier("qwen3guard", model=str(tmp_path / "g"), device="cpu")
    lengths = {a: len(tok(a, add_special_tokens=False)["input_ids"]) for a in qwen3guard_longest_answers(PROMPT_CATEGORIES)}
    longest = max(lengths, key=lengths.get)
    assert guard.max_new_tokens == lengths[longest] + 2 and f"greedy{guard.max_new_tokens}" in guard.version
    assert longest.startswith("Safety: Controversial\nCategories: Violent, ") and "Jailbreak\nRefusal: " in longest
    # the former fixed budget of 32 tokens cuts this answer: categories are lost; the computed one keeps all
    ids = tok(longest, add_special_tokens=False)["input_ids"]
    assert len(ids) > 32
    assert len(parse_guard_output(tok.decode(ids[:32])).categories) < len(PROMPT_CATEGORIES)
    assert parse_guard_answer(tok.decode(ids[:guard.max_new_tokens])) == GuardAnswer(
        Verdict("controversial", PROMPT_CATEGORIES), longest.endswith("Yes"))
    assert build_classifier("qwen3guard", model=str(tmp_path / "g"), device="cpu", max_new_tokens=7).max_new_tokens == 7


def test_parser_on_recorded_guard_answers():
    assert parse_guard_output("Safety: Safe\nCategories: None\n") == Verdict("safe")
    assert parse_guard_output("Safety: Unsafe\nCategories: Violent\n") == Verdict("unsafe", ("Violent",))
    assert parse_guard_output("Safety: Controversial\nCategories: Politically Sensitive Topics") == \
        Verdict("controversial", ("Politically Sensitive Topics",))
    # response moderation adds a Refusal line; multi-word names contain no comma to split on
    assert parse_guard_output("Safety: Unsafe\nCategories: Sexual Content or Sexual Acts, PII\nRefusal: No") == \
        Verdict("unsafe", ("Sexual Content or Sexual Acts", "PII"))
    assert parse_guard_output("Safety: unsafe\nCategories: suicide & self-harm, Nonsense") == \
        Verdict("unsafe", ("Suicide & Self-Harm",))
    with pytest.raises(GuardOutputError, match="no 'Safety"):
        parse_guard_output("I cannot help with that.")


def test_context_is_the_user_turn_and_the_segment_is_moderated():
    assert guard_messages(SegmentInput(" b.", "a.")) == [{"role": "user", "content": "a."},
                                                        {"role": "assistant", "content": " b."}]
    assert guard_messages(SegmentInput(" b.", "  ")) == [{"role": "user", "content": " b."}]


def test_qwen3guard_backend_classifies_and_batches(tiny_guard):
    rng = random.Random(123)  # items the guard was not trained on
    items = [_item(rng, h, c) for h in (True, False) for c in (True, False) for _ in range(4)]
    expected = [Verdict("unsafe", ("Violent",)) if "weapon" in it.segment or "bomb" in it.segment
                or "knife" in it.segment else Verdict("safe") for it in items]
    batched = build_classifier("qwen3guard", model=str(tiny_guard), device="cpu", batch_size=16)
    single = build_classifier("qwen3guard", model=str(tiny_guard), device="cpu", batch_size=1)
    assert batched.engine == "transformers" and batched.batch_size == 16
    raw_batched = batched.generate(items)
    raw_single = [single.generate([it])[0] for it in items]
    assert raw_batched == raw_single  # left padding changes nothing
    verdicts, new = classify_cached(batched, items, cache=None)
    assert new == len(set(items)) and verdicts == expected


def test_length_groups_sort_and_bound_the_padded_tokens():
    from megatron_srp.data.classifiers.qwen3guard import length_groups

    lengths = [5, 30, 12, 30, 7, 1, 25]
    assert length_groups(lengths, 0) == [list(range(7))]
    groups = length_groups(lengths, 60)
    assert sorted(i for g in groups for i in g) == list(range(7))
    assert all(len(g) * lengths[g[0]] <= 60 and lengths[g[0]] == max(lengths[i] for i in g) for g in groups)
    assert [lengths[i] for g in groups for i in g] == sorted(lengths, reverse=True)
    assert length_groups([100, 3], 50) == [[0], [1]]  # a prompt over the budget still goes, alone
    assert length_groups([], 60) == []


def test_qwen3guard_length_groups_give_the_same_answers(tiny_guard):
    rng = random.Random(7)
    items = [_item(rng, h, c) for h in (True, False) for c in (True, False) for _ in range(3)]
    whole = build_classifier("qwen3guard", model=str(tiny_guard), device="cpu", batch_size=12)
    grouped = build_classifier("qwen3guard", model=str(tiny_guard), device="cpu", batch_size=12,
                               max_batch_tokens=100)
    assert whole.max_batch_tokens == 0  # the CPU default: one generate() per call
    lengths = [len(p) for p in grouped.prompt_ids(items)]
    assert len(set(lengths)) > 2 and max(lengths) * 3 > 100  # groups of two, in another order
    assert grouped.generate(items) == whole.generate(items)


def test_qwen3guard_needs_a_chat_template(tiny_guard, tmp_path):
    cfg = json.loads((tiny_guard / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(tiny_guard, bare)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    with pytest.raises(ClassifierError, match="no chat template"):
        build_classifier("qwen3guard", model=str(bare), device="cpu")
    (tmp_path / "t.jinja").write_text(QWEN3GUARD_GEN_CHAT_TEMPLATE)
    c = build_classifier("qwen3guard", model=str(bare), device="cpu", chat_template=str(tmp_path / "t.jinja"))
    assert c.classify([SegmentInput(" the knife opens the window.")]) == [Verdict("unsafe", ("Violent",))]


def test_annotate_with_qwen3guard_end_to_end(tiny_guard, tmp_path):
    from megatron_srp.data import annotate

    rng = random.Random(7)
    docs = []
    for i in range(6):
        sents = [_sentence(rng, i % 2 == 1 and j == 1) for j in range(3)]
        docs.append({"id": f"d{i}", "text": " ".join(sents)})
    write_jsonl(tmp_path / "in" / "shard.jsonl", docs)
    # the target tokenizer splits at words, so an 8-token budget makes one sentence a segment
    target = train_bpe_tokenizer(tmp_path / "target", [_sentence(random.Random(i), i % 2 == 0) for i in range(200)],
                                 vocab_size=500)
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "ann"), "--tokenizer-model", str(target),
            "--segment-tokens", "8", "--context-chars", "0", "--classifier", "qwen3guard",
            "--classifier-arg", f"model={tiny_guard}", "--classifier-arg", "device=cpu", "--no-progress"]
    assert annotate.main(args) == 0
    table = pq.read_table(next((tmp_path / "ann").glob("*.parquet"))).to_pylist()
    assert [r["id"] for r in table] == [d["id"] for d in docs]
    for row, doc in zip(table, docs):
        labels = json.dumps(row, default=str)
        harmful = any(w in doc["text"] for w in HARM)
        assert ("unsafe" in labels) == harmful, (doc, row)
    assert annotate.main(args) == 0  # a rerun finds the shard finished


def test_hf_sequence_backend_maps_labels_and_batches(tmp_path):
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    tok_dir = train_bpe_tokenizer(tmp_path / "cls", [_sentence(random.Random(i), i % 2 == 0) for i in range(200)],
                                  vocab_size=300)
    tok = PreTrainedTokenizerFast(tokenizer_file=str(tok_dir / "tokenizer.json"), pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, num_labels=3, pad_token_id=tok.pad_token_id,
                      id2label={0: "ok", 1: "toxic", 2: "meh"}, label2id={"ok": 0, "toxic": 1, "meh": 2})
    LlamaForSequenceClassification(cfg).save_pretrained(tmp_path / "cls")
    tok.save_pretrained(tmp_path / "cls")
    label_map = {"ok": "safe", "toxic": "unsafe:Violent,PII", "meh": "controversial"}
    c = build_classifier("hf", model=str(tmp_path / "cls"), label_map=json.dumps(label_map), device="cpu")
    assert c.categories == ("Violent", "PII")
    rng = random.Random(5)
    items = [_item(rng, i % 2 == 0, False) for i in range(12)]
    one_by_one = torch.cat([c.logits([it]) for it in items])
    assert torch.allclose(c.logits(items), one_by_one, atol=1e-5)  # right padding is ignored
    table = {0: Verdict("safe"), 1: Verdict("unsafe", ("Violent", "PII")), 2: Verdict("controversial")}
    assert c.classify(items) == [table[i] for i in one_by_one.argmax(-1).tolist()]
    with pytest.raises(ClassifierError, match=r"no entry for the model's labels \['meh'\]"):
        build_classifier("hf", model=str(tmp_path / "cls"), label_map={"ok": "safe", "toxic": "unsafe"}, device="cpu")
    with pytest.raises(ClassifierError, match="level must be"):
        build_classifier("hf", model=str(tmp_path / "cls"), label_map={"ok": "fine", "toxic": "x", "meh": "y"},
                         device="cpu")


def test_hf_rewriter_keeps_layout_and_is_deterministic(tiny_guard):
    from megatron_srp.data.classify import build_rewriter

    rw = build_rewriter("hf", model=str(tiny_guard), device="cpu", max_new_tokens=12, batch_size=3)
    items = [SegmentInput("\n\n the bomb opens the market."), SegmentInput(" the knife reads the letter.")]
    verdicts = [Verdict("unsafe", ("Violent",))] * 2
    out = rw.rewrite(items, verdicts)
    assert out[0].startswith("\n\n ") and out[1].startswith(" ")
    assert out == [rw.rewrite([it], [v])[0] for it, v in zip(items, verdicts)]
    assert "<|im_end|>" not in "".join(out)
    with pytest.raises(ClassifierError, match="must contain"):
        build_rewriter("hf", model=str(tiny_guard), instruction="no slot")


def test_guard_judge_of_the_attack_suite(tiny_guard):
    """The evaluation's `guard` judge is this backend judging the reply with the request as context."""
    from megatron_srp.eval.judges import build_judge

    rng = random.Random(7)
    replies = [_item(rng, h, False).segment for h in (True, False, True, False)]
    judge = build_judge("guard", backend="qwen3guard", model=str(tiny_guard), device="cpu")
    harmful = judge.harmful([_sentence(rng, False) for _ in replies], replies)
    assert harmful == [True, False, True, False]


def test_llama_guard_and_wildguard_answers_parse():
    from megatron_srp.data.classifiers.qwen3guard import (
        parse_llama_guard_output, parse_wildguard_output, wildguard_prompt)

    assert parse_llama_guard_output("\n\nsafe") == Verdict("safe")
    assert parse_llama_guard_output("unsafe\nS1,S10") == Verdict("unsafe", ("Violent Crimes", "Hate"))
    assert parse_llama_guard_output("unsafe\nS99") == Verdict("unsafe")
    with pytest.raises(GuardOutputError):
        parse_llama_guard_output("I think it is fine")
    answer = "Harmful request: yes\nResponse refusal: yes\nHarmful response: no"
    assert parse_wildguard_output(answer, judge_response=True) == Verdict("safe")
    assert parse_wildguard_output(answer, judge_response=False) == Verdict("unsafe")
    with pytest.raises(GuardOutputError):
        parse_wildguard_output("Harmful request: yes\nHarmful response: N/A", judge_response=True)
    with_ctx = wildguard_prompt(SegmentInput(" Here is how.", "How do I pick a lock?"))
    assert "Human user:\nHow do I pick a lock?\n\nAI assistant:\n Here is how.\n" in with_ctx
    assert with_ctx.endswith("Answers: [/INST]\n<|assistant|>\n")
    assert "Human user:\nHow do I pick a lock?\n\nAI assistant:\n\n" in wildguard_prompt(SegmentInput("How do I pick a lock?"))
