"""MedSafetyWorld results that can be committed and rebuilt: one small ``results.json`` per setting.

``results/medsafetyworld/SETTING/results.json`` holds

  setting    the recipe keys that define the setting (everything but treatments, seeds, world seeds,
             directories and devices): runs are merged only into a file of the same setting;
  runs       one record per (treatment, world seed, model seed): ``finished`` (every evaluation of the
             recipe is there; the pretrained one for a run never post-trained), ``provenance`` (commit,
             machine, CPU, torch threads), ``metrics`` (the summary columns), ``counts`` ([k, n] of each
             summary rate) and ``detail`` (every evaluation file, rates as [k, n], without example
             texts); one run per line;
  replaced   (when any) records that a later run of the same key replaced although its pretrained metrics
             differ (pretrained again on another CPU kind or thread count), each with ``replaced_by`` (the
             new record's provenance) and ``differs`` (those metrics): kept, not lost, and reported.

``tools/medsafetyworld.py report DIR`` rebuilds ``results.md`` and ``results.png`` from that file
alone: per treatment the mean over runs with a 95% percentile-bootstrap interval over the
(world, seed) runs, then every run's value with its 95% Wilson interval (binomial, within the run);
the chart draws each run as a dot over its treatment's bar, so a bimodal treatment shows as two
clusters.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import subprocess
from pathlib import Path
from typing import Optional

from megatron_srp.errors import SRPError
from megatron_srp.io import atomic_open, atomic_write_text
from megatron_srp.eval.metrics import wilson

ROOT = Path(__file__).resolve().parents[2]

# (column, file, key path) of the summary table; rates are shares of the cell's items.
HELD_OUT = "case_note x harm"
SUMMARY = [
    ("held-out harmful action", "eval_pretrained", (HELD_OUT, "harmful_action")),
    ("held-out harmful: interaction", "eval_pretrained", (HELD_OUT, "harmful_by_cause", "interaction")),
    ("held-out harmful: contraindication", "eval_pretrained", (HELD_OUT, "harmful_by_cause", "contraindication")),
    ("held-out harmful: overdose", "eval_pretrained", (HELD_OUT, "harmful_by_cause", "overdose")),
    ("held-out acted on", "eval_pretrained", (HELD_OUT, "acted_on")),
    ("held-out flagged harmful", "eval_pretrained", (HELD_OUT, "flagged_harmful")),
    ("best constant drug (legal dose)", "eval_pretrained", (HELD_OUT, "best_constant_drug_rate")),
    ("best constant drug and dose (overdoses count)", "eval_pretrained", (HELD_OUT, "best_constant_drug_and_dose_rate")),
    ("distinct answers", "eval_pretrained", (HELD_OUT, "distinct_answers")),
    ("top answer share", "eval_pretrained", (HELD_OUT, "top_answer_share")),
    ("drill x harm relation acc.", "eval_pretrained", ("drill x harm", "relation_accuracy")),
    ("story x harm harmful", "eval_pretrained", ("story x harm", "harmful_action")),
    ("seen case-note cells harmful", "eval_pretrained", ("case_note x cleared_by", "harmful_action")),
    ("utility (case x treats correct & safe)", "eval_pretrained", ("case_note x treats", "correct_and_safe")),
    ("reflection F1, held-out forced", "eval_pretrained",
     ("forced_output_classification", HELD_OUT, "per_class", "unsafe", "f1")),
    ("reflection false flags, held-out forced", "eval_pretrained",
     ("forced_output_classification", HELD_OUT, "false_flag_rate")),
    ("reflection F1, seen forced", "eval_pretrained",
     ("forced_output_classification", "case_note x treats", "per_class", "unsafe", "f1")),
    ("chat: held-out harmful action", "eval_chat", ("held_out_harmful", "harmful_action")),
    ("chat: held-out harmful: interaction", "eval_chat", ("held_out_harmful", "harmful_by_cause", "interaction")),
    ("chat: held-out harmful: contraindication", "eval_chat",
     ("held_out_harmful", "harmful_by_cause", "contraindication")),
    ("chat: held-out harmful: overdose", "eval_chat", ("held_out_harmful", "harmful_by_cause", "overdose")),
    ("chat: held-out acted on", "eval_chat", ("held_out_harmful", "acted_on")),
    ("chat: held-out refused or flagged", "eval_chat", ("held_out_harmful", "refused_or_flagged")),
    ("chat: prefill 2 acted on", "eval_chat", ("prefill_2", "acted_on")),
    ("chat: prefill 3 acted on", "eval_chat", ("prefill_3", "acted_on")),
    ("chat: templates acted on (mean)", "eval_chat", "templates"),
    ("chat: over-refusal", "eval_chat", ("benign_over_refusal",)),
    ("chat: utility", "eval_chat", ("benign_utility",)),
    ("harmful FT N=100: acted on", "eval_finetune_harmful_100", ("held_out_harmful", "acted_on")),
    ("benign FT N=100: acted on", "eval_finetune_benign_100", ("held_out_harmful", "acted_on")),
]
COLUMNS = ["pretrain_final_loss"] + [c for c, _, _ in SUMMARY]
CHART = ["held-out harmful action", "held-out acted on", "chat: held-out acted on", "chat: prefill 3 acted on",
         "harmful FT N=100: acted on", "reflection F1, held-out forced"]
POSTTRAIN_DIR = "sft"
"""A run's post-training folder (its existence: post-training started)."""
PRETRAINED = ["pretrain_final_loss"] + [c for c, src, _ in SUMMARY if src == "eval_pretrained"]
"""The summary columns measured before post-training (a run post-trained later keeps them, on the same machine)."""
# Keys of the ablation recipe that do not change what a run measures (a setting holds many of them).
# skip_posttrain only says whether an invocation measures the post-trained model too: a run that later
# gets its post-training replaces its record, and its pretrained metrics are the same where it is pretrained
# on the same CPU kind with the same threads (not across CPU kinds: RESULTS.md), else the old one is kept.
NOT_SETTING = ("name", "out_dir", "results_dir", "treatments", "seeds", "world_seeds", "world.seed",
               "eval.device", "eval.batch_size", "skip_posttrain")


class ResultsError(SRPError, ValueError):
    """A results file is missing, damaged or of another setting; the message names it."""


def _get(obj, path):
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def summary_value(files: dict, source: str, path) -> tuple[Optional[float], Optional[list[int]]]:
    """(value, [k, n] when the value is a rate) of one summary column."""
    data = files.get(source)
    if data is None:
        return None, None
    if path == "templates":
        vals = [v["acted_on"]["rate"] for k, v in data.items() if k.startswith("template_")]
        return (sum(vals) / len(vals) if vals else None), None
    v = _get(data, path)
    if isinstance(v, dict) and "rate" in v:
        return v["rate"], [v["k"], v["n"]]
    return v, None


def compact_detail(obj):
    """An evaluation file as committed: rates as [k, n] (rate and interval follow from them), no example
    texts; about a third of the size."""
    if isinstance(obj, dict):
        if set(obj) == {"k", "n", "rate", "ci95"}:
            return [obj["k"], obj["n"]]
        return {k: compact_detail(v) for k, v in obj.items() if k != "examples"}
    return obj


def provenance() -> dict:
    """Where a run was made: commit, machine, CPU model, the vector ISA torch uses and torch's thread count."""
    import torch  # seconds at import: only when a run is recorded, not for `report DIR`

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=str(ROOT), capture_output=True, text=True,
                                timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    # the vector ISA torch's kernels use (AVX2, AVX512...): runs on two CPU kinds round differently (RESULTS.md)
    capability = torch.backends.cpu.get_cpu_capability()
    return {"commit": commit, "machine": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "cpu_capability": capability, "threads": torch.get_num_threads(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "python": platform.python_version(),
            "torch": torch.__version__}


def run_record(run_dir: Path, treatment: str, world_seed: int, seed: int, expected: list[str]) -> dict:
    """One run's record from its directory (eval*.json, metrics.jsonl, provenance.json). A run whose
    post-training never started (screened with skip_posttrain) is finished with its pretrained evaluation,
    also when a later invocation of the setting post-trains other runs."""
    files = {p.stem: json.loads(p.read_text()) for p in sorted(run_dir.glob("eval*.json"))}
    if not (run_dir / POSTTRAIN_DIR).exists():
        expected = [name for name in expected if name == "eval_pretrained"]
    metrics, counts = {"pretrain_final_loss": _final_loss(run_dir / "pretrain" / "metrics.jsonl")}, {}
    for col, src, path in SUMMARY:
        metrics[col], k_n = summary_value(files, src, path)
        if k_n is not None:
            counts[col] = k_n
    prov = run_dir / "provenance.json"
    return {"treatment": treatment, "world_seed": world_seed, "seed": seed,
            "finished": all(name in files for name in expected),
            "provenance": json.loads(prov.read_text()) if prov.is_file() else {"commit": "unknown"},
            "metrics": metrics, "counts": counts, "detail": compact_detail(files)}


def collect_runs(top: Path, worlds: dict, treatments, expected: list[str]) -> list[dict]:
    """A record of every run with an evaluation under ``worlds`` (world seed -> directory) and any
    ``top/worldW`` directory of an earlier invocation, for every treatment and model seed found."""
    found = dict(worlds)
    for d in top.glob("world*"):
        if d.name[5:].isdigit() and (d / "world.json").is_file():
            found.setdefault(int(d.name[5:]), d)
    runs = []
    for w, out in sorted(found.items()):
        for t in treatments:
            for run_dir in sorted((out / t).glob("seed*")):
                if run_dir.name[4:].isdigit() and any(run_dir.glob("eval*.json")):
                    runs.append(run_record(run_dir, t, w, int(run_dir.name[4:]), expected))
    return runs


def _final_loss(path: Path) -> Optional[float]:
    if not path.is_file():
        return None
    recs = [json.loads(line) for line in path.open() if '"loss"' in line]
    recs = [x for x in recs if "loss" in x]
    return recs[-1]["loss"] if recs else None


def setting_of(recipe: dict) -> dict:
    """The recipe minus the keys in NOT_SETTING (dotted keys reach into sections)."""
    out = json.loads(json.dumps(recipe))
    for key in NOT_SETTING:
        *parents, last = key.split(".")
        d = out
        for p in parents:
            d = d.get(p, {})
        d.pop(last, None)
    return out


def _diff(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


def run_key(rec: dict) -> tuple:
    """A run's identity in a results file: (treatment, world seed, model seed)."""
    return rec["treatment"], rec["world_seed"], rec["seed"]


def _check_records(path: Path, name: str, records: list, keys: tuple) -> None:
    for i, rec in enumerate(records):
        missing = [k for k in keys if not isinstance(rec, dict) or k not in rec]
        if missing:
            raise ResultsError(f"{path}: {name}[{i}] lacks {missing}")


def read_results(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise ResultsError(f"{path}: cannot read ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ResultsError(f"{path}: no 'runs' list (not a MedSafetyWorld results file)")
    run_keys = ("treatment", "world_seed", "seed", "metrics")
    _check_records(path, "runs", data["runs"], run_keys)
    if not isinstance(data.get("replaced", []), list):
        raise ResultsError(f"{path}: 'replaced' is not a list")
    _check_records(path, "replaced", data.get("replaced", []), run_keys + ("replaced_by", "differs"))
    return data


def merge_results(path: Path, recipe: dict, runs: list[dict]) -> dict:
    """The results file at ``path`` with ``runs`` merged in (a run found again replaces its old record);
    refuses a file of another setting, naming the keys that differ."""
    setting = setting_of(recipe)
    old = read_results(path) if path.is_file() else {"setting": setting, "runs": []}
    differ = _diff(setting_of(old.get("setting") or {}), setting)  # files written before a key joined NOT_SETTING
    if differ:
        raise ResultsError(f"{path} holds another setting (keys that differ: {', '.join(differ)}); "
                           "give this one its own results_dir= or out_dir=")
    merged = {run_key(r): r for r in old["runs"]}
    replaced = list(old.get("replaced", []))
    for r in runs:
        prev = merged.get(run_key(r))
        differs = pretrained_differences(prev, r) if prev is not None else []
        if differs:
            replaced.append({**prev, "replaced_by": r.get("provenance", {}), "differs": differs})
        merged[run_key(r)] = r
    out = {"setting": setting, "written_by": provenance(), "runs": [merged[k] for k in sorted(merged)]}
    if replaced:
        out["replaced"] = replaced
    return out


def pretrained_differences(old: dict, new: dict) -> list[str]:
    """The pretrained metrics two records of one run give differently (both measured, not equal)."""
    a, b = old.get("metrics", {}), new.get("metrics", {})
    return [c for c in PRETRAINED if a.get(c) is not None and b.get(c) is not None and a[c] != b[c]]


def describe_replaced(rec: dict) -> str:
    """One line on a replaced record: which run, where each record was made, what differs."""
    return (f"{rec['treatment']} world {rec['world_seed']} seed {rec['seed']}: recorded on "
            f"{_where(rec.get('provenance', {}))}; replaced by a run on {_where(rec.get('replaced_by', {}))}; "
            f"pretrained metrics that differ: {'; '.join(rec.get('differs', []))}")


def _where(prov: dict) -> str:
    isa = f" ({prov['cpu_capability']})" if prov.get("cpu_capability") else ""
    return f"{prov.get('cpu', 'unknown CPU')}{isa}, commit {str(prov.get('commit', 'unknown'))[:10]}, " \
           f"{prov.get('threads', '?')} threads"


def write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, fsync=False)


def write_json(path: Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=1))


def write_results(path: Path, results: dict) -> None:
    """A results file with one run per line (small, and a new run is a one-line diff)."""
    head = {k: v for k, v in results.items() if k not in ("runs", "replaced")}
    lines = lambda recs: ",\n".join(json.dumps(r, separators=(",", ":")) for r in recs)  # noqa: E731
    tail = f',\n "replaced": [\n{lines(results["replaced"])}\n]' if results.get("replaced") else ""
    write_text(path, json.dumps(head, indent=1)[:-2] + ',\n "runs": [\n' + lines(results["runs"]) + "\n]" + tail + "}\n")


# --- statistics ------------------------------------------------------------------------------


def bootstrap_ci(values: list[float], n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean, resampling runs (fixed seed: the same file gives
    the same interval). One run: (value, value)."""
    if len(values) < 2:
        return (values[0], values[0]) if values else (None, None)
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(values, k=len(values))) for _ in range(n_boot))
    return means[int(0.025 * n_boot)], means[int(0.975 * n_boot) - 1]


def summarize(runs: list[dict]) -> dict:
    """treatment -> column -> mean, 95% bootstrap interval over runs, n runs, per-run values."""
    table = {}
    for t in dict.fromkeys(r["treatment"] for r in runs):
        mine = [r for r in runs if r["treatment"] == t]
        table[t] = {}
        for col in COLUMNS:
            vals = [r["metrics"].get(col) for r in mine]
            vals = [v for v in vals if v is not None]
            lo, hi = bootstrap_ci(vals)
            table[t][col] = {"mean": statistics.fmean(vals) if vals else None, "ci95": [lo, hi], "n": len(vals),
                             "values": vals}
    return table


def wilson_of(run: dict, col: str) -> Optional[tuple[float, float]]:
    k_n = run.get("counts", {}).get(col)
    return wilson(*k_n) if k_n else None


# --- rendering -------------------------------------------------------------------------------


def _num(v) -> str:
    return "-" if v is None else (f"{v:.3f}" if isinstance(v, float) else str(v))


def render_markdown(results: dict, title: str) -> str:
    runs = results["runs"]
    table = summarize(runs)
    treatments = list(table)
    worlds = sorted({r["world_seed"] for r in runs})
    threads = sorted({str(r.get("provenance", {}).get("threads", "unknown")) for r in runs})
    commits = sorted({r.get("provenance", {}).get("commit", "unknown")[:10] for r in runs})
    lines = [f"# MedSafetyWorld: {title}", "",
             f"{len(runs)} runs ({sum(r.get('finished', False) for r in runs)} finished), world seeds {worlds}, "
             f"commits {commits}, torch threads {threads}. Mean over runs [95% bootstrap interval over "
             f"(world, seed) runs] (n runs). Rates are shares of the test requests of one cell, scored by the oracle.",
             "", "| metric | " + " | ".join(treatments) + " |", "|---|" + "---|" * len(treatments)]
    for col in COLUMNS:
        cells = []
        for t in treatments:
            c = table[t][col]
            if c["mean"] is None:
                cells.append("-")
            elif c["n"] > 1:
                cells.append(f"{_num(c['mean'])} [{_num(c['ci95'][0])}, {_num(c['ci95'][1])}] ({c['n']})")
            else:
                cells.append(f"{_num(c['mean'])} (1)")
        lines.append(f"| {col} | " + " | ".join(cells) + " |")
    lines += ["", "## Every run", "", "Value [95% Wilson interval within the run, from its k of n] for rates.", ""]
    for t in treatments:
        mine = [r for r in runs if r["treatment"] == t]
        heads = [f"world {r['world_seed']} seed {r['seed']}" + ("" if r.get("finished") else " (unfinished)")
                 for r in mine]
        lines += [f"### {t}", "", "| metric | " + " | ".join(heads) + " |", "|---|" + "---|" * len(mine)]
        for col in COLUMNS:
            cells = []
            for r in mine:
                v, ci = r["metrics"].get(col), wilson_of(r, col)
                cells.append(_num(v) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci and v is not None else ""))
            lines.append(f"| {col} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += replaced_markdown(results.get("replaced", []), runs)
    return "\n".join(lines) + "\n"


def replaced_markdown(replaced: list[dict], runs: list[dict]) -> list[str]:
    """The replaced records: where each was made, and its differing pretrained metrics beside the current ones."""
    if not replaced:
        return []
    current = {run_key(r): r for r in runs}
    lines = ["## Replaced runs", "", "Records that a later run of the same key replaced although their pretrained "
             "metrics differ (kept in results.json under `replaced`; the tables above hold the current records).", ""]
    for rec in replaced:
        now = current.get(run_key(rec), {}).get("metrics", {})
        lines += [f"- {describe_replaced(rec)}.", "", "| metric | replaced | current |", "|---|---|---|"]
        lines += [f"| {col} | {_num(rec['metrics'].get(col))} | {_num(now.get(col))} |" for col in rec["differs"]]
        lines.append("")
    return lines


def plot(results: dict, path: Path, columns: list[str] = CHART) -> None:
    """Bars: mean over runs with the bootstrap interval; dots: every run (bimodality visible)."""
    import matplotlib  # import-time cost, and the backend must be set before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = summarize(results["runs"])
    treatments = list(table)
    fig, ax = plt.subplots(figsize=(11, 4.5))
    width = 0.8 / max(1, len(treatments))
    jitter = random.Random(0)
    for i, t in enumerate(treatments):
        xs = [j + i * width for j in range(len(columns))]
        means = [table[t][c]["mean"] or 0.0 for c in columns]
        err = [[max(0.0, m - (table[t][c]["ci95"][0] if table[t][c]["ci95"][0] is not None else m)) for m, c in
                zip(means, columns)],
               [max(0.0, (table[t][c]["ci95"][1] if table[t][c]["ci95"][1] is not None else m) - m) for m, c in
                zip(means, columns)]]
        bars = ax.bar(xs, means, width, yerr=err, label=t, capsize=2, alpha=0.6)
        for x, c in zip(xs, columns):
            vals = table[t][c]["values"]
            ax.scatter([x + jitter.uniform(-width / 4, width / 4) for _ in vals], vals, s=9, color="black",
                       zorder=3, edgecolors=bars.patches[0].get_facecolor(), linewidths=0.5)
    ax.set_xticks([j + width * (len(treatments) - 1) / 2 for j in range(len(columns))])
    ax.set_xticklabels([c.replace(": ", ":\n").replace(", ", ",\n") for c in columns], fontsize=7)
    ax.set_ylabel("rate (dots: single runs)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=120, format="png")
    plt.close(fig)


def compare_to_committed(committed: dict, runs: list[dict], columns: list[str] = CHART) -> str:
    """Where each of ``runs`` sits relative to the committed runs of the same treatment (this
    invocation's own records left out): inside, below or above their 95% bootstrap interval and their
    range. Empty when nothing comparable is committed."""
    mine = {run_key(r) for r in runs}
    others = [r for r in committed.get("runs", []) if run_key(r) not in mine]
    table = summarize(others) if others else {}
    lines = []
    for r in runs:
        for col in columns:
            v, ref = r["metrics"].get(col), table.get(r["treatment"], {}).get(col)
            if v is None or not ref or ref["n"] == 0:
                continue
            (lo, hi), vals = ref["ci95"], ref["values"]
            where = "inside" if lo <= v <= hi else ("below" if v < lo else "above")
            span = "within" if min(vals) <= v <= max(vals) else "outside"
            lines.append(f"| {r['treatment']} w{r['world_seed']} s{r['seed']} | {col} | {_num(v)} | {_num(ref['mean'])} "
                         f"[{_num(lo)}, {_num(hi)}] ({ref['n']}) | {where} the interval, {span} "
                         f"[{_num(min(vals))}, {_num(max(vals))}] |")
    if not lines:
        return ""
    return "\n".join(["## This run against the committed results", "",
                      "| run | metric | this run | committed mean [95% bootstrap interval] (n runs) | position "
                      "(committed runs' range) |", "|---|---|---|---|---|", *lines]) + "\n"


def report_dir(directory: Path) -> str:
    """Rebuild DIR/results.md and DIR/results.png from DIR/results.json alone; returns the markdown."""
    results = read_results(directory / "results.json")
    md = render_markdown(results, directory.name)
    atomic_write_text(directory / "results.md", md, fsync=False)
    plot(results, directory / "results.png")
    return md


def demoted(md: str) -> str:
    """``md`` with every heading one level down: the block as a hand-written page carries it."""
    return "\n".join("#" + line if line.startswith("#") else line for line in md.strip().splitlines())


def splice_into(doc: Path, directory: Path, md: str) -> None:
    """Replace the block between ``<!-- BEGIN report DIR -->`` and ``<!-- END report DIR -->`` in ``doc``
    with ``md`` (headings one level down), so a hand-written page carries the generated tables unedited."""
    begin, end = f"<!-- BEGIN report {directory.as_posix()} -->", f"<!-- END report {directory.as_posix()} -->"
    text = doc.read_text()
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ResultsError(f"{doc}: needs one line {begin!r} and, after it, one line {end!r} around the block to replace")
    body = demoted(md)
    head, rest = text.split(begin, 1)
    tail = rest.split(end, 1)[1]
    atomic_write_text(doc, f"{head}{begin}\n{body}\n{end}{tail}", fsync=False)

