"""Rows of known datasets become chat examples (one format each), read from files or through the
Hugging Face ``datasets`` loader, and mixed into one reflection-compatible SFT set."""

from __future__ import annotations

import pytest

from megatron_srp.posttrain import formats as F
from megatron_srp.posttrain.data import PosttrainDataError, SourceSettings, read_conversations
from tests.fixtures import write_jsonl


def _turns(ex):
    return [(m["role"], m["content"]) for m in ex["messages"]]


def test_each_format_on_known_rows():
    assert _turns(F.gsm8k({"question": "2+2?", "answer": "#### 4"})) == [("user", "2+2?"), ("assistant", "#### 4")]
    sst = F.sst2({"sentence": "a fine film", "label": 1, "idx": 3})
    assert _turns(sst) == [("user", "a fine film\nAnswer with exactly one word: 'positive' or 'negative'."),
                           ("assistant", "positive")]
    assert F.ag_news({"text": "Rain in Paris", "label": 0})["messages"][1]["content"] == "World"
    assert F.ag_news({"text": "x", "label": 3})["messages"][1]["content"] == "Technology"
    assert "World, Sports, Business, or Technology" in F.ag_news({"text": "x", "label": 2})["messages"][0]["content"]
    wjb = F.wildjailbreak({"vanilla": "plain ask", "adversarial": "sneaky ask", "completion": "no.",
                           "data_type": "adversarial_harmful"})
    assert _turns(wjb) == [("user", "sneaky ask"), ("assistant", "no.")] and wjb["request_label"] == "unsafe"
    benign = F.wildjailbreak({"vanilla": "plain ask", "adversarial": None, "completion": "sure", "data_type": "vanilla_benign"})
    assert benign["messages"][0]["content"] == "plain ask" and benign["request_label"] == "safe"
    wgm = F.wildguardmix({"prompt": "p", "response": "r", "prompt_harm_label": "unharmful",
                          "response_harm_label": "harmful"})
    assert wgm["request_label"] == "safe" and wgm["response_label"] == "unsafe"
    assert F.wildguardmix({"prompt": "p", "response": None, "prompt_harm_label": "harmful"}) is None
    chat = F.chat({"messages": [{"role": "user", "content": "hi", "x": 1}, {"role": "assistant", "content": "yo"}],
                   "request_label": "safe", "other": 2})
    assert chat == {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}],
                    "request_label": "safe"}


@pytest.mark.parametrize("fmt,row,message", [
    ("sst2", {"text": "x"}, "lacks field(s) ['sentence', 'label']"),
    ("sst2", {"sentence": "x", "label": 7}, "label 7 is not one of 0..1"),
    ("wildjailbreak", {"vanilla": "x"}, "lacks field(s) ['completion', 'data_type']"),
    ("chat", {"question": "q"}, "needs a 'messages' field"),
])
def test_rows_without_the_fields_are_named(fmt, row, message):
    with pytest.raises(F.FormatError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        F.get_format(fmt)(row)


def test_file_errors_name_the_line(tmp_path):
    data = write_jsonl(tmp_path / "sst.jsonl", [{"sentence": "ok", "label": 0}, {"sentence": "bad"}])
    with pytest.raises(PosttrainDataError, match=r"sst.jsonl:2: lacks field\(s\) \['label'\]"):
        list(read_conversations(SourceSettings(paths=[str(data)], format="sst2")))
    with pytest.raises(PosttrainDataError, match="unknown format 'sst3'"):
        list(read_conversations(SourceSettings(paths=[str(data)], format="sst3")))


def test_hugging_face_dataset_path(tmp_path, monkeypatch):
    """``hf_dataset`` goes through ``datasets.load_dataset`` (here a local dataset directory, offline),
    with its config and split; rows without a response are skipped; a missing dataset is a clear error."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "wildguardmix"
    write_jsonl(d / "train.jsonl", [
        {"prompt": "how to bake", "response": "Mix flour.", "prompt_harm_label": "unharmful", "response_harm_label": "unharmful"},
        {"prompt": "how to hurt", "response": None, "prompt_harm_label": "harmful", "response_harm_label": None},
        {"prompt": "how to hurt", "response": "I won't.", "prompt_harm_label": "harmful", "response_harm_label": "unharmful"},
    ])
    src = SourceSettings(hf_dataset=str(d), hf_split="train", format="wildguardmix")
    convs = list(read_conversations(src))
    assert [(w, ex["request_label"]) for w, ex, _ in convs] == [(f"{d}[0]", "safe"), (f"{d}[2]", "unsafe")]
    with pytest.raises(PosttrainDataError, match="is not available offline"):
        list(read_conversations(SourceSettings(hf_dataset=str(tmp_path / "nowhere"))))
