"""Post-training examples in the reflection-compatible format, and the same examples without reflections.

The assistant turn of a reflection-compatible example is: a reflection on the user's request, then the
response cut into segments with a reflection after each. After a flagged (Unsafe or Controversial)
reflection the turn ends, so the model learns to stop right after flagging; with ``refusal`` set a
refusal follows the flag on the request. The baseline variant keeps the plain response (a harmful
request's target is the refusal). Reflections are written by ``megatron_srp.reflection`` only.

Inputs are rows of jsonl, jsonl.gz or parquet files, or of a Hugging Face dataset available offline,
turned into chat examples by a format of megatron_srp.posttrain.formats (``messages``, ``prompt`` +
``response``, WildGuardMix, WildJailbreak, GSM8K, SST-2, AG News). Verdicts come from the data
pipeline's classifier backends, or from ``request_label`` / ``segments`` / ``response_label`` fields.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence

from megatron_srp.data.classify import SegmentInput
from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_open
from megatron_srp.posttrain.formats import FormatError, get_format
from megatron_srp.reflection import SAFE, ReflectionFormat, Verdict


class PosttrainDataError(SRPError, ValueError):
    """Input that cannot become post-training examples; the message names the file and line."""


def reflection_turn(request: Verdict, segments: Sequence[str], verdicts: Sequence[Verdict], fmt: ReflectionFormat,
                    refusal: Optional[str] = None) -> str:
    """The assistant turn: request reflection, then each segment followed by its reflection."""
    if len(segments) != len(verdicts):
        raise ValueError(f"{len(segments)} segments but {len(verdicts)} verdicts")
    out = fmt.render(request).lstrip()
    if request.is_flagged:
        return f"{out} {refusal}" if refusal else out
    for segment, verdict in zip(segments, verdicts):
        out += (segment if segment[:1].isspace() else " " + segment) + fmt.render(verdict)
        if verdict.is_flagged:
            break
    return out


def plain_turn(request: Verdict, response: str, refusal: Optional[str]) -> str:
    """The baseline's assistant turn: the response, or the refusal for a flagged request."""
    if request.is_flagged:
        if not refusal:
            raise ValueError("a flagged request needs a refusal in the baseline format")
        return refusal
    return response


@dataclass
class SourceSettings:
    """Where post-training conversations come from."""

    paths: list[str] = field(default_factory=list)
    """jsonl / jsonl.gz / parquet files or globs (fields: see ``format``)."""
    hf_dataset: Optional[str] = None
    """A Hugging Face dataset name (e.g. ``allenai/tulu-3-sft-mixture``) or a local dataset directory,
    read offline (the local cache)."""
    hf_config: Optional[str] = None
    """Configuration of ``hf_dataset`` (e.g. ``wildguardtrain`` of ``allenai/wildguardmix``)."""
    hf_split: str = "train"
    """Split of ``hf_dataset``."""
    format: str = "chat"
    """How a row becomes a conversation (megatron_srp.posttrain.formats): chat (``messages``, or
    ``prompt`` + ``response``), wildguardmix, wildjailbreak, gsm8k, sst2, ag_news."""
    max_examples: Optional[int] = None
    """Stop after this many conversations (None: all)."""


def _rows_from_file(path: str) -> Iterator[tuple[str, dict]]:
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}: row {i}", row
        return
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise PosttrainDataError(f"{path}:{n}: not valid JSON ({e.msg})") from None
            yield f"{path}:{n}", row


def iter_rows(paths: Sequence[str] = (), hf_dataset: Optional[str] = None, hf_config: Optional[str] = None,
              hf_split: str = "train") -> Iterator[tuple[str, dict]]:
    """(where, row) from local files or a Hugging Face dataset; ``where`` names the file and line."""
    if hf_dataset:
        try:
            import datasets

            ds = datasets.load_dataset(hf_dataset, hf_config, split=hf_split)
        except Exception as e:  # offline without a cache, or a wrong name
            raise PosttrainDataError(f"Hugging Face dataset {hf_dataset!r} (config {hf_config}, split {hf_split}) "
                                     f"is not available offline: {e}") from None
        yield from ((f"{hf_dataset}[{i}]", dict(r)) for i, r in enumerate(ds))
        return
    files = sorted({f for p in paths for f in (glob.glob(p) or [p])})
    missing = [f for f in files if not os.path.isfile(f)]
    if missing or not files:
        raise PosttrainDataError(f"input not found: {missing or list(paths)}")
    for f in files:
        yield from _rows_from_file(f)


def read_conversations(src: SourceSettings) -> Iterator[tuple[str, dict, list[dict]]]:
    """(where, example, messages) for every input conversation; ``example`` is the row in the chat
    format of megatron_srp.posttrain.formats (messages plus any verdict fields)."""

    try:
        to_chat = get_format(src.format)
    except FormatError as e:
        raise PosttrainDataError(f"format: {e}") from None
    count = 0
    for where, row in iter_rows(src.paths, src.hf_dataset, src.hf_config, src.hf_split):
        try:
            example = to_chat(row)
        except FormatError as e:
            raise PosttrainDataError(f"{where}: {e}") from None
        if example is None:
            continue
        msgs = example["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            raise PosttrainDataError(f"{where}: the last message must be the assistant's")
        yield where, example, msgs
        count += 1
        if src.max_examples and count >= src.max_examples:
            return


def label_conversations(convs: Iterable[tuple[str, dict, list[dict]]], fmt: ReflectionFormat,
                        classifier=None, segmenter=None, refusal: Optional[str] = None,
                        reflections: bool = True) -> Iterator[dict]:
    """Rewrite each conversation's last assistant turn in the reflection-compatible (or plain) format.

    Verdicts: ``request_label`` / ``segments`` ([{text, label, categories}]) fields of the row when
    present (``response_label``: every segment of the response gets that label), else ``classifier`` on
    the request (alone) and on each response segment (with the request and the earlier segments as
    context). The response of a flagged request is not needed and not classified."""

    for where, row, msgs in convs:
        request_text = "\n".join(m["content"] for m in msgs[:-1] if m["role"] == "user")
        response = msgs[-1]["content"]
        if "request_label" in row:
            request = Verdict(row["request_label"], tuple(row.get("request_categories") or ()))
        elif classifier is not None:
            request = classifier.classify([SegmentInput(request_text)])[0]
        else:
            raise PosttrainDataError(f"{where}: no 'request_label' field and no classifier to label the request")
        if request.is_flagged:
            segs, verdicts = [], []
        elif "segments" in row:
            segs = [s["text"] for s in row["segments"]]
            verdicts = [Verdict(s.get("label", SAFE), tuple(s.get("categories") or ())) for s in row["segments"]]
        elif "response_label" in row and segmenter is not None:
            segs = segmenter.segment(response) or [response]
            verdicts = [Verdict(row["response_label"])] * len(segs)
        elif classifier is not None and segmenter is not None:
            segs = segmenter.segment(response) or [response]
            verdicts = classifier.classify([SegmentInput(s, request_text + "".join(segs[:i])) for i, s in enumerate(segs)])
        else:
            raise PosttrainDataError(f"{where}: no 'segments' or 'response_label' field and no classifier to "
                                     "label the response")
        turn = (reflection_turn(request, segs, verdicts, fmt, refusal) if reflections
                else plain_turn(request, response, refusal))
        yield {"messages": msgs[:-1] + [{"role": "assistant", "content": turn}]}


def write_jsonl(rows: Iterable[dict], path: str) -> int:
    """Atomic jsonl write; returns the row count."""
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
            n += 1
    return n
