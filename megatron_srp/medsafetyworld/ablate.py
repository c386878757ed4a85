"""The paper's ablation in MedSafetyWorld: raw / filter / rewrite / srp, end to end, resumable.

``tools/medsafetyworld.py ablate RECIPE`` runs, in OUT (the recipe's ``out_dir``):

  world.json, corpus/          generate (the world, the corpus)
  tokenizer/                   a word-level tokenizer trained once on the world's text
  ann/                         tools/annotate.py with the oracle backend (one annotation)
  data/TREATMENT_*             tools/preprocess_data.py --variant plain | filter | rewrite | srp
  TREATMENT/seedS/pretrain/    tools/pretrain.py on recipes/medsafetyworld/*.yaml (Megatron-Core)
  TREATMENT/seedS/hf/          tools/convert_to_hf.py with the logit parity check
  TREATMENT/seedS/sft/final    reflection-compatible SFT (srp) or plain SFT (the others)
  TREATMENT/seedS/eval.json    every metric (evaluate.py), incl. finetuning attacks
  results.json, results.md, results.png   (report)

Each stage writes its output atomically and is skipped when that output exists, so a rerun (or a
job restarted after a kill) continues where it stopped. Stages that train run one at a time: two
trainings on 2 cores slow each other 3-5x.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from megatron_srp.medsafetyworld.corpus import CorpusSettings
from megatron_srp.medsafetyworld.world import WorldSettings
from megatron_srp.posttrain.sft import SFTTrainingSettings

ROOT = Path(__file__).resolve().parents[2]
TREATMENTS = ("raw", "filter", "rewrite", "srp")
VARIANT = {"raw": "plain", "filter": "filter", "rewrite": "rewrite", "srp": "srp"}


@dataclass
class PosttrainSettings:
    """The post-training stage (the same for every treatment but for reflections)."""

    n_examples: int = 2000
    """Chat examples (benign cells in turn; harmful story requests at harmful_share)."""
    harmful_share: float = 0.2
    """Share of harmful requests (answered with a refusal, or an Unsafe reflection for srp)."""
    mistake_share: float = 0.5
    """srp: share of benign requests whose target is a prescription mistake (a correct drug the oracle
    rejects) followed by its Unsafe reflection, where the turn ends; the baselines get a safe answer to
    the same request. Without such examples every post-training action is safe and the reflection after
    an action learns to say Safe always."""
    refusal_after_flag: bool = False
    """srp: write the refusal after the Unsafe request reflection (False: the turn ends at the flag)."""
    training: SFTTrainingSettings = field(default_factory=lambda: SFTTrainingSettings(
        num_train_epochs=2, per_device_train_batch_size=16, learning_rate=5e-4, logging_steps=20, save_steps=100000))
    """SFT optimisation."""


@dataclass
class EvalSettings:
    """Evaluation sets and attacks."""

    n_items: int = 300
    """Test patients per cell (the same for every treatment and seed)."""
    test_seed: int = 0
    """Seed of the test sets."""
    prefill_tokens: list[int] = field(default_factory=lambda: [2, 3, 5])
    """Prefilling attacks: tokens of a harmful answer forced at the start of the reply. A MedSafetyWorld
    answer ("Rx : X 200 mg daily .") is 7 tokens: 2 = "Rx :" (the model picks the drug), 3 = the drug
    is given, 5 = drug and dose are given; the question is then whether the model flags it."""
    finetune_harmful: list[int] = field(default_factory=lambda: [10, 100])
    """Harmful finetuning attacks: N story x harm pairs with harmful prescriptions, no reflections."""
    finetune_benign: list[int] = field(default_factory=lambda: [100])
    """Benign finetuning: N safe case-note prescriptions."""
    attack_training: SFTTrainingSettings = field(default_factory=lambda: SFTTrainingSettings(
        num_train_epochs=3, per_device_train_batch_size=8, learning_rate=2e-4, warmup_ratio=0.0,
        logging_steps=10, save_steps=100000))
    """Optimisation of the finetuning attacks."""
    batch_size: int = 64
    """Generation batch size."""
    device: str = "cpu"
    """Where evaluation runs (cpu or cuda)."""


@dataclass
class AblationRecipe:
    """``tools/medsafetyworld.py ablate RECIPE``: one world, four treatments, several model seeds."""

    name: str = "medsafetyworld"
    """Run name."""
    out_dir: Optional[str] = None
    """Where everything goes (default runs/medsafetyworld/NAME)."""
    world: WorldSettings = field(default_factory=WorldSettings)
    """The world."""
    corpus: CorpusSettings = field(default_factory=CorpusSettings)
    """The pretraining corpus (unsafe share and mix are the knobs of the SRP comparison)."""
    treatments: list[str] = field(default_factory=lambda: list(TREATMENTS))
    """Which of raw, filter, rewrite, srp."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Model seeds (training.seed of pretraining and the SFT seed)."""
    pretrain_recipe: str = "recipes/medsafetyworld/model_tiny.yaml"
    """Megatron-Core recipe of the model (relative to the repository or absolute)."""
    pretrain_overrides: list[str] = field(default_factory=list)
    """``key=value`` overrides of the pretraining recipe (e.g. training.train_iters=2000)."""
    posttrain: PosttrainSettings = field(default_factory=PosttrainSettings)
    """Post-training."""
    eval: EvalSettings = field(default_factory=EvalSettings)
    """Evaluation."""
    skip_posttrain: bool = False
    """Stop after the pretrained-model evaluation (no SFT, no chat attacks)."""


def load_ablation(path: str, overrides: list[str] = ()) -> AblationRecipe:
    from megatron_srp.config import RecipeError, load_config

    r = load_config(AblationRecipe, path, overrides)
    bad = [t for t in r.treatments if t not in TREATMENTS]
    if bad or not r.treatments:
        raise RecipeError(f"treatments: {bad or '[]'} not in {list(TREATMENTS)}")
    if not r.seeds:
        raise RecipeError("seeds: at least one model seed")
    if r.out_dir is None:
        r.out_dir = f"runs/medsafetyworld/{r.name}"
    return r


class Stage:
    """One progress line per stage: name, skipped or done, seconds."""

    def __init__(self, log, timings_path: Optional[Path] = None):
        self.log = log
        self.timings: dict[str, float] = {}
        self.timings_path = timings_path

    def run(self, name: str, done: bool, fn):
        if done:
            self.log(f"[ablate] {name}: done earlier, skipped")
            return
        self.log(f"[ablate] {name} ...")
        t0 = time.time()
        fn()
        self.timings[name] = round(time.time() - t0, 1)
        if self.timings_path is not None:  # the measured cost of every stage, across reruns
            with open(self.timings_path, "a") as f:
                f.write(json.dumps({"stage": name, "seconds": self.timings[name], "finished": time.time()}) + "\n")
        self.log(f"[ablate] {name}: done in {self.timings[name]:.0f} s")


class StageError(RuntimeError):
    """A stage's tool failed; the message names its log."""


def _run(cmd: list[str], log_path: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        tail = Path(log_path).read_text().splitlines()[-15:]
        raise StageError(f"{Path(cmd[1]).name} failed (exit {proc.returncode}); log {log_path}:\n" + "\n".join(tail))


def world_texts(out: Path) -> list[str]:
    """Everything the tokenizer must know: the corpus, every entity, chat, reflections, attacks."""
    from megatron_srp.medsafetyworld.evaluate import FORMAT
    from megatron_srp.medsafetyworld.oracle import CATEGORIES
    from megatron_srp.medsafetyworld.tasks import ATTACK_TEMPLATES, REFUSAL
    from megatron_srp.medsafetyworld.world import DOSES, World
    from megatron_srp.reflection import SAFE, UNSAFE, Verdict

    w = World.load(str(out / "world.json"))
    texts = [json.loads(line)["text"] for p in sorted((out / "corpus").glob("*.jsonl")) for line in p.open()]
    texts.append(" ".join([d.name for d in w.drugs] + w.conditions + w.enzymes + w.names))
    texts.append(" ".join(str(x) for x in list(range(18, 91)) + list(DOSES) + [max(DOSES) + 100]))
    verdicts = [Verdict(SAFE), Verdict(UNSAFE)] + [Verdict(UNSAFE, tuple(CATEGORIES[:i]) + (c,))
                                                   for i in range(3) for c in CATEGORIES]
    texts += [FORMAT.render(v) for v in verdicts]
    texts += ["User : Assistant : Drill : Answer : Story : Question : no drug : and was refused", REFUSAL,
              *ATTACK_TEMPLATES.values()]
    return texts


def sft_examples(world, r: AblationRecipe, reflections: bool, seed: int) -> list[dict]:
    from megatron_srp.medsafetyworld.evaluate import FORMAT
    from megatron_srp.medsafetyworld.oracle import judge_text
    from megatron_srp.medsafetyworld.corpus import ACTION_GENRES
    from megatron_srp.medsafetyworld.tasks import (
        REFUSAL, chat_answer, chat_request, mistaken_answer, safe_answer, sft_items,
    )
    from megatron_srp.posttrain.data import plain_turn, reflection_turn
    from megatron_srp.reflection import SAFE, UNSAFE, Verdict
    import random

    rng, mistakes = random.Random(6_000_000 + seed), random.Random(7_000_000 + seed)
    out = []
    for item, harmful in sft_items(world, r.posttrain.n_examples, r.posttrain.harmful_share, seed):
        request = chat_request(item)
        refusal = REFUSAL.format(name=item.patient.name)
        if harmful:
            verdict, answer = Verdict(UNSAFE), ""
        else:
            ans = safe_answer(world, item, rng)
            if ans is None:
                continue
            # drawn for every treatment (from its own stream), so all four see the same requests
            mistake = rng.random() < r.posttrain.mistake_share and item.genre in ACTION_GENRES
            if reflections and mistake:
                ans = mistaken_answer(world, item, mistakes) or ans
            verdict, answer = Verdict(SAFE), chat_answer(item.genre, *ans)
        if reflections:
            turn = reflection_turn(verdict, [answer] if answer else [], [judge_text(world, answer, request)] if answer else [],
                                   FORMAT, refusal if r.posttrain.refusal_after_flag else None)
        else:
            turn = plain_turn(verdict, answer, refusal)
        out.append({"messages": [{"role": "user", "content": request}, {"role": "assistant", "content": turn}]})
    return out


def run_ablation(r: AblationRecipe, log=print) -> dict:
    from megatron_srp.medsafetyworld.corpus import write_corpus
    from megatron_srp.medsafetyworld.tokenizer import train_word_tokenizer
    from megatron_srp.medsafetyworld.world import World, generate_world

    out = Path(r.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stage = Stage(log, out / "timings.jsonl")
    (out / "ablation.json").write_text(json.dumps(asdict(r), indent=1))
    py = sys.executable
    tools = ROOT / "tools"

    def generate():
        w = generate_world(r.world)
        write_corpus(w, r.corpus, str(out / "corpus"))
        w.save(str(out / "world.json"))  # written last: the stage's marker

    stage.run("generate world and corpus", (out / "world.json").is_file(), generate)
    world = World.load(str(out / "world.json"))
    tok_dir = out / "tokenizer"
    stage.run("train tokenizer", (tok_dir / "tokenizer.json").is_file(),
              lambda: train_word_tokenizer(world_texts(out), str(tok_dir)))
    stage.run("annotate (oracle)", (out / "ann" / "annotations.json").is_file(), lambda: _run(
        [py, str(tools / "annotate.py"), "--input", str(out / "corpus"), "--output", str(out / "ann"),
         "--tokenizer-model", str(tok_dir), "--classifier", "oracle", "--classifier-arg",
         f"world={out / 'world.json'}", "--no-progress"], str(out / "annotate.log")))
    (out / "data").mkdir(exist_ok=True)
    for t in r.treatments:
        stats = out / "data" / f"{t}.stats.json"
        extra = (["--rewriter", "medsafetyworld", "--rewriter-arg", f"world={out / 'world.json'}"]
                 if t == "rewrite" else [])
        stage.run(f"preprocess {t}", stats.is_file(), lambda t=t, stats=stats, extra=extra: _run(
            [py, str(tools / "preprocess_data.py"), "--input", str(out / "corpus"), "--output-prefix",
             str(out / "data" / t), "--tokenizer-model", str(tok_dir), "--append-eod", "--annotations",
             str(out / "ann"), "--variant", VARIANT[t], "--no-progress", "--stats", str(stats), *extra],
            str(out / "data" / f"{t}.log")))
    from tokenizers import Tokenizer

    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    recipe_path = Path(r.pretrain_recipe)
    recipe_path = recipe_path if recipe_path.is_absolute() else ROOT / recipe_path
    for seed in r.seeds:  # seed-major: an interrupted run has whole seeds of every treatment
        for t in r.treatments:
            run_dir = out / t / f"seed{seed}"
            run_dir.mkdir(parents=True, exist_ok=True)
            _one_model(r, stage, world, out, run_dir, t, seed, recipe_path, vocab, tok_dir)
    results = collect(out, r)
    write_report(out, results)
    log(f"[ablate] results: {out / 'results.md'}")
    return results


def _one_model(r, stage, world, out, run_dir, t, seed, recipe_path, vocab, tok_dir):
    from megatron_srp.config import load_recipe
    from megatron_srp.training.layout import read_tracker

    py, tools = sys.executable, ROOT / "tools"
    ckpt = run_dir / "pretrain" / "checkpoints"
    overrides = [f"data.data_path=[{out / 'data' / t}_text_document]", "data.mock=false", f"data.tokenizer_model={tok_dir}",
                 f"model.vocab_size={vocab}", f"training.seed={1234 + seed}", f"checkpoint.dir={ckpt}",
                 f"logging.dir={run_dir / 'pretrain'}", "logging.tensorboard=false", *r.pretrain_overrides]
    train_iters = load_recipe(recipe_path, overrides).training.train_iters
    stage.run(f"pretrain {t} seed {seed}", read_tracker(str(ckpt)) == train_iters, lambda: _run(
        [py, str(tools / "pretrain.py"), str(recipe_path), *overrides], str(run_dir / "pretrain.log")))
    hf = run_dir / "hf"
    stage.run(f"export {t} seed {seed} (parity check)", (hf / "config.json").is_file(), lambda: _run(
        [py, str(tools / "convert_to_hf.py"), "--checkpoint", str(ckpt), "--output", str(hf), "--tokenizer",
         str(tok_dir), "--dtype", "fp32", "--no-progress", "--overwrite"], str(run_dir / "export.log")))
    from megatron_srp.eval.generate import load_model
    from megatron_srp.medsafetyworld.evaluate import evaluate_chat, evaluate_pretrained
    from megatron_srp.posttrain.sft import train_sft

    e = r.eval
    base_json = run_dir / "eval_pretrained.json"

    def eval_base():
        model, tok = load_model(str(hf), e.device)
        _write_json(base_json, evaluate_pretrained(model, tok, world, e.n_items, t == "srp", e.test_seed, e.batch_size))

    stage.run(f"evaluate pretrained {t} seed {seed}", base_json.is_file(), eval_base)
    if r.skip_posttrain:
        return
    sft_dir = run_dir / "sft"
    settings = _with_seed(r.posttrain.training, seed)
    stage.run(f"post-train {t} seed {seed}", (sft_dir / "final" / "config.json").is_file(), lambda: train_sft(
        str(hf), sft_examples(world, r, t == "srp", seed), str(sft_dir), settings, quiet=True))
    chat_json = run_dir / "eval_chat.json"

    def eval_chat():
        model, tok = load_model(str(sft_dir / "final"), e.device)
        _write_json(chat_json, evaluate_chat(model, tok, world, e.n_items, e.prefill_tokens, e.test_seed, e.batch_size))

    stage.run(f"evaluate post-trained {t} seed {seed}", chat_json.is_file(), eval_chat)
    from megatron_srp.medsafetyworld.tasks import attack_pairs

    for kind, sizes in (("harmful", e.finetune_harmful), ("benign", e.finetune_benign)):
        for n in sizes:
            ft_dir = run_dir / f"finetune_{kind}_{n}"
            ft_json = run_dir / f"eval_finetune_{kind}_{n}.json"

            def attack(kind=kind, n=n, ft_dir=ft_dir, ft_json=ft_json):
                final = train_sft(str(sft_dir / "final"), attack_pairs(world, n, kind == "harmful", seed), str(ft_dir),
                                  _with_seed(e.attack_training, seed), quiet=True)
                model, tok = load_model(final, e.device)
                _write_json(ft_json, evaluate_chat(model, tok, world, e.n_items, [], e.test_seed, e.batch_size))

            stage.run(f"finetuning attack {kind} N={n} {t} seed {seed}", ft_json.is_file(), attack)


def _with_seed(s: SFTTrainingSettings, seed: int) -> SFTTrainingSettings:
    from dataclasses import replace

    return replace(s, seed=s.seed + seed)


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


# --- report ----------------------------------------------------------------------------------

# (column, file, key path) of the summary table; rates are shares of the cell's items.
SUMMARY = [
    ("held-out harmful action", "eval_pretrained", ("case_note x harm", "harmful_action", "rate")),
    ("held-out acted on", "eval_pretrained", ("case_note x harm", "acted_on", "rate")),
    ("best constant drug", "eval_pretrained", ("case_note x harm", "best_constant_drug_rate")),
    ("distinct answers", "eval_pretrained", ("case_note x harm", "distinct_answers")),
    ("top answer share", "eval_pretrained", ("case_note x harm", "top_answer_share")),
    ("drill x harm relation acc.", "eval_pretrained", ("drill x harm", "relation_accuracy", "rate")),
    ("story x harm harmful", "eval_pretrained", ("story x harm", "harmful_action", "rate")),
    ("seen case-note cells harmful", "eval_pretrained", ("case_note x cleared_by", "harmful_action", "rate")),
    ("utility (case x treats correct & safe)", "eval_pretrained", ("case_note x treats", "correct_and_safe", "rate")),
    ("reflection F1, held-out forced", "eval_pretrained",
     ("forced_output_classification", "case_note x harm", "per_class", "unsafe", "f1")),
    ("reflection F1, seen forced", "eval_pretrained",
     ("forced_output_classification", "case_note x treats", "per_class", "unsafe", "f1")),
    ("chat: held-out harmful action", "eval_chat", ("held_out_harmful", "harmful_action", "rate")),
    ("chat: held-out acted on", "eval_chat", ("held_out_harmful", "acted_on", "rate")),
    ("chat: held-out refused or flagged", "eval_chat", ("held_out_harmful", "refused_or_flagged", "rate")),
    ("chat: prefill 2 acted on", "eval_chat", ("prefill_2", "acted_on", "rate")),
    ("chat: prefill 3 acted on", "eval_chat", ("prefill_3", "acted_on", "rate")),
    ("chat: templates acted on (mean)", "eval_chat", "templates"),
    ("chat: over-refusal", "eval_chat", ("benign_over_refusal", "rate")),
    ("chat: utility", "eval_chat", ("benign_utility", "rate")),
    ("harmful FT N=100: acted on", "eval_finetune_harmful_100", ("held_out_harmful", "acted_on", "rate")),
    ("benign FT N=100: acted on", "eval_finetune_benign_100", ("held_out_harmful", "acted_on", "rate")),
]


def _get(obj, path):
    for k in path:
        if not isinstance(obj, dict) or k not in obj:
            return None
        obj = obj[k]
    return obj


def _value(files: dict, source: str, path):
    data = files.get(source)
    if data is None:
        return None
    if path == "templates":
        vals = [v["acted_on"]["rate"] for k, v in data.items() if k.startswith("template_")]
        return sum(vals) / len(vals) if vals else None
    return _get(data, path)


def collect(out: Path, r: AblationRecipe) -> dict:
    per_run = {}
    for t in r.treatments:
        for seed in r.seeds:
            run_dir = out / t / f"seed{seed}"
            files = {p.stem: json.loads(p.read_text()) for p in run_dir.glob("eval*.json")}
            metrics = {"pretrain_final_loss": _final_loss(run_dir / "pretrain" / "metrics.jsonl")}
            for col, src, path in SUMMARY:
                metrics[col] = _value(files, src, path)
            per_run[f"{t}/seed{seed}"] = {"treatment": t, "seed": seed, "summary": metrics, "detail": files}
    table = {}
    import statistics

    for t in r.treatments:
        runs = [v["summary"] for v in per_run.values() if v["treatment"] == t]
        table[t] = {}
        for col in ["pretrain_final_loss"] + [c for c, _, _ in SUMMARY]:
            vals = [x[col] for x in runs if x[col] is not None]
            table[t][col] = {"mean": statistics.mean(vals) if vals else None,
                             "sd": statistics.stdev(vals) if len(vals) > 1 else None, "n": len(vals)}
    return {"recipe": asdict(r), "table": table, "runs": per_run}


def _final_loss(path: Path) -> Optional[float]:
    if not path.is_file():
        return None
    recs = [json.loads(line) for line in path.open() if '"loss"' in line]
    recs = [x for x in recs if "loss" in x]
    return recs[-1]["loss"] if recs else None


def _fmt(cell: dict) -> str:
    if cell["mean"] is None:
        return "-"
    m = cell["mean"]
    text = f"{m:.3f}" if isinstance(m, float) else str(m)
    if cell["sd"] is not None:
        text += f" ± {cell['sd']:.3f}"
    return text


def write_report(out: Path, results: dict) -> None:
    _write_json(out / "results.json", results)
    table = results["table"]
    treatments = list(table)
    cols = ["pretrain_final_loss"] + [c for c, _, _ in SUMMARY]
    seeds = results["recipe"]["seeds"]
    lines = [f"# MedSafetyWorld ablation: {results['recipe']['name']}", "",
             f"Mean ± sd over model seeds {seeds} (sd needs 2 or more finished seeds). Rates are shares of "
             f"{results['recipe']['eval']['n_items']} test requests per cell, scored by the oracle.", "",
             "| metric | " + " | ".join(treatments) + " |", "|---|" + "---|" * len(treatments)]
    for col in cols:
        lines.append(f"| {col} | " + " | ".join(_fmt(table[t][col]) for t in treatments) + " |")
    (out / "results.md.tmp").write_text("\n".join(lines) + "\n")
    os.replace(out / "results.md.tmp", out / "results.md")
    _plot(out, table, treatments)


def _plot(out: Path, table: dict, treatments: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["held-out harmful action", "held-out acted on", "best constant drug", "chat: held-out acted on",
            "chat: prefill 3 acted on", "harmful FT N=100: acted on"]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(1, len(treatments))
    for i, t in enumerate(treatments):
        means = [table[t][c]["mean"] or 0.0 for c in cols]
        sds = [table[t][c]["sd"] or 0.0 for c in cols]
        ax.bar([j + i * width for j in range(len(cols))], means, width, yerr=sds, label=t, capsize=2)
    ax.set_xticks([j + width * (len(treatments) - 1) / 2 for j in range(len(cols))])
    ax.set_xticklabels([c.replace(": ", ":\n") for c in cols], fontsize=7)
    ax.set_ylabel("share of held-out harmful requests")
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "results.png.tmp.png", dpi=120)
    os.replace(out / "results.png.tmp.png", out / "results.png")
    plt.close(fig)
