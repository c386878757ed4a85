"""Typed settings of the annotate and preprocess commands, built once from the command line.

``tools/annotate.py`` and ``tools/preprocess_data.py`` parse argv into an ``AnnotateConfig`` or a
``PreprocessConfig``; the data library and every datatrove or Slurm task of a run receive that object
(pickled into the task), never an argparse namespace. The classes load like the other recipes too
(``megatron_srp.config.config_from_dict`` / ``load_config``: the same key checks and did-you-mean).
Flag help texts are the field docstrings below.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from megatron_srp.config import field_docs
from megatron_srp.data.classify import BACKENDS as CLASSIFIERS
from megatron_srp.data.classify import REWRITERS, parse_options
from megatron_srp.data.materialize import VARIANTS, Variant
from megatron_srp.data.tokenizer import BACKENDS as TOKENIZER_BACKENDS


@dataclass
class ExecutorConfig:
    """Where the command's input files are processed (datatrove scale-out)."""

    executor: Literal["none", "local", "slurm"] = "none"
    """none: this process; local: datatrove tasks on this node; slurm: a Slurm job array"""
    tasks: Optional[int] = None
    """datatrove tasks (default and maximum: one per input file)"""
    local_workers: int = -1
    """local: tasks run at once (-1: all)"""
    logging_dir: Optional[str] = None
    """datatrove logs and completion markers (default: OUTPUT.datatrove)"""
    slurm_partition: Optional[str] = None
    """slurm: partition"""
    slurm_time: str = "24:00:00"
    """slurm: time limit per task"""
    slurm_cpus_per_task: int = 8
    """slurm: CPUs per task"""
    slurm_mem_per_cpu_gb: int = 2
    """slurm: memory per CPU (GB)"""
    slurm_gpus_per_task: int = 0
    """slurm: GPUs per task (classifier backends)"""
    slurm_qos: str = "normal"
    """slurm: quality of service"""
    slurm_venv: Optional[str] = None
    """slurm: virtualenv to activate in each task"""
    slurm_env_command: Optional[str] = None
    """slurm: shell command run before each task (module load ...)"""
    slurm_sbatch_args: dict[str, Any] = field(default_factory=dict)
    """extra #SBATCH options (account=..., constraint=...)"""


@dataclass
class AnnotateConfig:
    """``tools/annotate.py``: segment a corpus and classify every segment once."""

    input: list[str]
    """files, globs or directories (jsonl, jsonl.gz, parquet)"""
    output: str
    """annotation directory (sidecars, manifest, verdict cache)"""
    tokenizer_model: str
    """target HF tokenizer directory (segment budget)"""
    classifier: str = "qwen3guard"
    """the classifier backend"""
    classifier_options: dict[str, Any] = field(default_factory=dict)
    """backend options (e.g. model=DIR, batch_size=16, world=world.json)"""
    segment_tokens: int = 256
    """token budget of a segment"""
    context_chars: int = 1000
    """preceding text shown to the classifier"""
    json_key: str = "text"
    """the text field of a row"""
    id_key: str = "id"
    """the id field of a row"""
    punkt_train_docs: int = 0
    """train Punkt on the first N documents (offline) instead of the untrained splitter"""
    on_error: Literal["fail", "skip"] = "fail"
    """bad rows: stop, or skip and count"""
    max_doc_chars: int = 10_000_000
    """a longer document is a bad row"""
    workers: int = 1
    """shards annotated in parallel (one classifier each)"""
    batch_docs: int = 64
    """documents segmented and classified together"""
    progress: bool = True
    """show a progress bar"""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """scale-out with datatrove"""


@dataclass
class PreprocessConfig:
    """``tools/preprocess_data.py``: tokenize a corpus into Megatron indexed datasets."""

    input: list[str]
    """files, globs or directories (jsonl, jsonl.gz, parquet)"""
    output_prefix: str
    """outputs are PREFIX_{json key}_document.bin/.idx"""
    tokenizer_model: str
    """Hugging Face tokenizer directory (tokenizer.json)"""
    tokenizer_type: Literal["HuggingFaceTokenizer"] = "HuggingFaceTokenizer"
    """Megatron-LM's tokenizer type (only Hugging Face tokenizers)"""
    workers: int = 1
    """CPU cores to tokenize with (gigatoken: a process per span of a large file; tokenizers: processes)"""
    append_eod: bool = False
    """end every non-empty document with the end-of-document token"""
    json_keys: list[str] = field(default_factory=lambda: ["text"])
    """the text fields tokenized, one output each"""
    partitions: int = 1
    """accepted for compatibility; input files are always processed in order as parts"""
    log_interval: int = 1000
    """accepted for compatibility (a progress bar is shown)"""
    annotations: Optional[str] = None
    """directory written by tools/annotate.py (needed by every variant but plain)"""
    variant: Variant = "plain"
    """which corpus to build from the annotations"""
    filter_granularity: Literal["document", "segment"] = "document"
    """filter: drop whole documents with a flagged segment, or only the flagged segments"""
    flagged_labels: list[str] = field(default_factory=lambda: ["unsafe"])
    """labels filter drops and rewrite replaces (e.g. unsafe,controversial)"""
    rewriter: Optional[str] = None
    """rewrite: the backend"""
    rewriter_options: dict[str, Any] = field(default_factory=dict)
    """rewrite: backend options"""
    rewrite_cache: Optional[str] = None
    """sqlite cache of rewrites (default: ANNOTATIONS/rewrites.sqlite)"""
    reflection_options: dict[str, Any] = field(default_factory=dict)
    """reflection format options (open_tag, close_tag, safe_word, register_special_tokens, ...)"""
    injection_guard: bool = True
    """encode special-token strings in source text as text and break reflection tags. Without it
    (--no-injection-guard) the text is kept as it is, as Megatron-LM does; with it plain differs from
    Megatron-LM's bytes exactly in the documents that contain a special-token string or a reflection tag
    (--stats: guard_changed_documents)"""
    on_error: Literal["fail", "skip"] = "fail"
    """bad rows: stop, or skip and count"""
    max_doc_chars: int = 10_000_000
    """a longer document is a bad row"""
    id_key: str = "id"
    """the id field of a row"""
    stats: Optional[str] = None
    """write statistics (JSON) here: documents, tokens, segments, the documents the guard changed
    (guard_changed_documents) and those encoded by tokenizers instead of gigatoken
    (tokenizers_fallback_documents)"""
    chunk_docs: int = 4096
    """at most this many documents per encode call"""
    chunk_mb: float = 4.0
    """at most this much text (MB) per encode call (4 MB: a chunk's arrays stay below glibc's largest mmap
    threshold and are reused, where 8 MB faulted a third more pages; BENCHMARKS.md)"""
    tokenizer_backend: str = "auto"
    """auto: gigatoken when installed and equal to tokenizers on this tokenizer, else tokenizers"""
    keep_parts: bool = False
    """keep PREFIX.parts/ after the merge"""
    progress: bool = True
    """show a progress bar"""
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    """scale-out with datatrove"""


# -- the command lines --------------------------------------------------------------------------

def add_executor_args(parser: argparse.ArgumentParser) -> None:
    doc = field_docs(ExecutorConfig)
    g = parser.add_argument_group("scale-out with datatrove")
    g.add_argument("--executor", choices=["none", "local", "slurm"], default="none", help=doc["executor"])
    g.add_argument("--tasks", type=int, default=None, help=doc["tasks"])
    g.add_argument("--local-workers", type=int, default=-1, help=doc["local_workers"])
    g.add_argument("--logging-dir", help=doc["logging_dir"])
    g.add_argument("--slurm-partition", help=doc["slurm_partition"])
    g.add_argument("--slurm-time", default="24:00:00", help=doc["slurm_time"])
    g.add_argument("--slurm-cpus-per-task", type=int, default=8)
    g.add_argument("--slurm-mem-per-cpu-gb", type=int, default=2)
    g.add_argument("--slurm-gpus-per-task", type=int, default=0, help=doc["slurm_gpus_per_task"])
    g.add_argument("--slurm-qos", default="normal")
    g.add_argument("--slurm-venv", help=doc["slurm_venv"])
    g.add_argument("--slurm-env-command", help=doc["slurm_env_command"])
    g.add_argument("--slurm-sbatch-arg", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{doc['slurm_sbatch_args']}, repeatable")


def executor_config(ns: argparse.Namespace) -> ExecutorConfig:
    return ExecutorConfig(
        executor=ns.executor, tasks=ns.tasks, local_workers=ns.local_workers, logging_dir=ns.logging_dir,
        slurm_partition=ns.slurm_partition, slurm_time=ns.slurm_time, slurm_cpus_per_task=ns.slurm_cpus_per_task,
        slurm_mem_per_cpu_gb=ns.slurm_mem_per_cpu_gb, slurm_gpus_per_task=ns.slurm_gpus_per_task,
        slurm_qos=ns.slurm_qos, slurm_venv=ns.slurm_venv, slurm_env_command=ns.slurm_env_command,
        slurm_sbatch_args=parse_options(ns.slurm_sbatch_arg, "--slurm-sbatch-arg"))


def annotate_parser(description: str) -> argparse.ArgumentParser:
    doc = field_docs(AnnotateConfig)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", required=True, help=doc["input"])
    p.add_argument("--output", required=True, help=doc["output"])
    p.add_argument("--tokenizer-model", required=True, help=doc["tokenizer_model"])
    p.add_argument("--classifier", default="qwen3guard", choices=sorted(CLASSIFIERS))
    p.add_argument("--classifier-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="backend option, repeatable (e.g. model=DIR, batch_size=16, world=world.json)")
    p.add_argument("--segment-tokens", type=int, default=256, help=doc["segment_tokens"])
    p.add_argument("--context-chars", type=int, default=1000, help=doc["context_chars"])
    p.add_argument("--json-key", default="text")
    p.add_argument("--id-key", default="id")
    p.add_argument("--punkt-train-docs", type=int, default=0, help=doc["punkt_train_docs"])
    p.add_argument("--on-error", choices=["fail", "skip"], default="fail", help=doc["on_error"])
    p.add_argument("--max-doc-chars", type=int, default=10_000_000)
    p.add_argument("--workers", type=int, default=1, help=doc["workers"])
    p.add_argument("--batch-docs", type=int, default=64, help=doc["batch_docs"])
    p.add_argument("--no-progress", action="store_true")
    add_executor_args(p)
    return p


def annotate_config(ns: argparse.Namespace) -> AnnotateConfig:
    """The settings of one annotate run; a bad KEY=VALUE raises ClassifierError naming the flag."""
    return AnnotateConfig(
        input=list(ns.input), output=ns.output, tokenizer_model=ns.tokenizer_model, classifier=ns.classifier,
        classifier_options=parse_options(ns.classifier_arg, "--classifier-arg"), segment_tokens=ns.segment_tokens,
        context_chars=ns.context_chars, json_key=ns.json_key, id_key=ns.id_key,
        punkt_train_docs=ns.punkt_train_docs, on_error=ns.on_error, max_doc_chars=ns.max_doc_chars,
        workers=ns.workers, batch_docs=ns.batch_docs, progress=not ns.no_progress, executor=executor_config(ns))


def preprocess_parser(description: str) -> argparse.ArgumentParser:
    doc = field_docs(PreprocessConfig)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("Megatron-LM flags")
    g.add_argument("--input", nargs="+", required=True, help=doc["input"])
    g.add_argument("--output-prefix", required=True)
    g.add_argument("--tokenizer-type", default="HuggingFaceTokenizer", choices=["HuggingFaceTokenizer"])
    g.add_argument("--tokenizer-model", required=True, help=doc["tokenizer_model"])
    g.add_argument("--workers", type=int, default=1, help=doc["workers"])
    g.add_argument("--append-eod", action="store_true")
    g.add_argument("--json-keys", nargs="+", default=["text"])
    g.add_argument("--partitions", type=int, default=1, help=doc["partitions"])
    g.add_argument("--log-interval", type=int, default=1000, help=doc["log_interval"])
    s = p.add_argument_group("SRP")
    s.add_argument("--annotations", help=doc["annotations"])
    s.add_argument("--variant", choices=VARIANTS, default="plain")
    s.add_argument("--filter-granularity", choices=["document", "segment"], default="document")
    s.add_argument("--flagged-labels", default="unsafe", help=f"comma-separated {doc['flagged_labels']}")
    s.add_argument("--rewriter", choices=sorted(REWRITERS), help=doc["rewriter"])
    s.add_argument("--rewriter-arg", action="append", default=[], metavar="KEY=VALUE")
    s.add_argument("--rewrite-cache", help=doc["rewrite_cache"])
    s.add_argument("--reflection", action="append", default=[], metavar="KEY=VALUE",
                   help=f"{doc['reflection_options']}, repeatable")
    s.add_argument("--no-injection-guard", action="store_true",
                   help="keep tags and special-token strings in source text as they are, as Megatron-LM does. "
                        "With the guard (default) plain differs from Megatron-LM's bytes exactly in the documents "
                        "that contain a special-token string or a reflection tag (--stats: guard_changed_documents)")
    b = p.add_argument_group("input checks and outputs")
    b.add_argument("--on-error", choices=["fail", "skip"], default="fail")
    b.add_argument("--max-doc-chars", type=int, default=10_000_000)
    b.add_argument("--id-key", default="id")
    b.add_argument("--stats", help=doc["stats"])
    b.add_argument("--chunk-docs", type=int, default=4096, help=doc["chunk_docs"])
    b.add_argument("--chunk-mb", type=float, default=4.0, help=doc["chunk_mb"])
    b.add_argument("--tokenizer-backend", choices=TOKENIZER_BACKENDS, default="auto", help=doc["tokenizer_backend"])
    b.add_argument("--keep-parts", action="store_true", help=doc["keep_parts"])
    b.add_argument("--no-progress", action="store_true")
    add_executor_args(p)
    return p


def preprocess_config(ns: argparse.Namespace) -> PreprocessConfig:
    """The settings of one preprocess run; a bad KEY=VALUE raises ClassifierError naming the flag."""
    return PreprocessConfig(
        input=list(ns.input), output_prefix=ns.output_prefix, tokenizer_model=ns.tokenizer_model,
        tokenizer_type=ns.tokenizer_type, workers=ns.workers, append_eod=ns.append_eod,
        json_keys=list(ns.json_keys), partitions=ns.partitions, log_interval=ns.log_interval,
        annotations=ns.annotations, variant=ns.variant, filter_granularity=ns.filter_granularity,
        flagged_labels=[x.strip() for x in ns.flagged_labels.split(",") if x.strip()], rewriter=ns.rewriter,
        rewriter_options=parse_options(ns.rewriter_arg, "--rewriter-arg"), rewrite_cache=ns.rewrite_cache,
        reflection_options=parse_options(ns.reflection, "--reflection"), injection_guard=not ns.no_injection_guard,
        on_error=ns.on_error, max_doc_chars=ns.max_doc_chars, id_key=ns.id_key, stats=ns.stats,
        chunk_docs=ns.chunk_docs, chunk_mb=ns.chunk_mb, tokenizer_backend=ns.tokenizer_backend,
        keep_parts=ns.keep_parts, progress=not ns.no_progress, executor=executor_config(ns))
