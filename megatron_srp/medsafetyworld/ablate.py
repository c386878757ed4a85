"""The paper's ablation in MedSafetyWorld: raw / filter / rewrite / srp and control arms, end to end, resumable.

``tools/medsafetyworld.py ablate RECIPE`` runs, in OUT (the recipe's ``out_dir``; with ``world_seeds``
each world in OUT/worldW/):

  world.json, corpus/          generate (the world, the corpus)
  tokenizer/                   a word-level tokenizer trained once on the world's text
  ann/                         tools/annotate.py with the oracle backend (one annotation)
  data/TREATMENT_*             tools/preprocess_data.py --variant plain | filter | rewrite | srp
  TREATMENT/seedS/pretrain/    tools/pretrain.py on recipes/medsafetyworld/*.yaml (Megatron-Core); raw_rsft
                               and filter_rsft link to raw's / filter's model of the same seed (pretrained
                               once; the pair differs only in post-training)
  TREATMENT/seedS/hf/          tools/convert_to_hf.py with the logit parity check
  TREATMENT/seedS/sft/final    reflection-compatible SFT (srp) or plain SFT (the others)
  TREATMENT/seedS/eval*.json   every metric (evaluate.py), incl. finetuning attacks
  results.json, results.md, results.png   (report.py), also merged into RESULTS_DIR (committed)

Each stage writes its output atomically and is skipped when that output exists, so a rerun (or a
job restarted after a kill) continues where it stopped. Stages that train run one at a time: two
trainings on 2 cores slow each other 3-5x.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Optional

from tokenizers import Tokenizer

from megatron_srp.config import RecipeError, load_config, load_recipe
from megatron_srp.eval.generate import load_model
from megatron_srp.medsafetyworld.corpus import ACTION_GENRES, CorpusSettings, write_corpus
from megatron_srp.medsafetyworld.evaluate import FORMAT, evaluate_chat, evaluate_pretrained
from megatron_srp.medsafetyworld.oracle import CATEGORIES, judge_text
from megatron_srp.medsafetyworld.report import (
    POSTTRAIN_DIR, collect_runs, compare_to_committed, describe_replaced, merge_results, provenance, read_results,
    report_dir, write_json, write_results, write_text,
)
from megatron_srp.medsafetyworld.tasks import (
    ATTACK_TEMPLATES, REFUSAL, attack_pairs, chat_answer, chat_request, mistaken_answer, safe_answer, sft_items,
)
from megatron_srp.medsafetyworld.tokenizer import train_word_tokenizer
from megatron_srp.medsafetyworld.world import DOSES, World, WorldSettings, generate_world
from megatron_srp.posttrain.data import plain_turn, reflection_turn
from megatron_srp.posttrain.sft import SFTTrainingSettings, train_sft
from megatron_srp.reflection import SAFE, UNSAFE, Verdict
from megatron_srp.training.layout import read_tracker

ROOT = Path(__file__).resolve().parents[2]
TREATMENTS = ("raw", "filter", "rewrite", "srp", "raw_rsft", "filter_rsft", "srp_masked")
# The pretraining data of each treatment (one preprocessed copy per data name).
DATA = {"raw": "raw", "filter": "filter", "rewrite": "rewrite", "srp": "srp", "raw_rsft": "raw",
        "filter_rsft": "filter", "srp_masked": "srp"}
VARIANT = {"raw": "plain", "filter": "filter", "rewrite": "rewrite", "srp": "srp"}
# Control arms: raw_rsft / filter_rsft are pretrained without reflections and then get srp's
# reflection-compatible post-training; srp_masked sees srp's data with the reflection loss masked.
# Together they separate what pretraining with reflections does from what post-training does.
REFLECTION_SFT = {"srp", "raw_rsft", "filter_rsft", "srp_masked"}
REFLECTION_DATA = {"srp", "srp_masked"}  # reflections in the pretraining data: scored on the pretrained model
# raw_rsft / filter_rsft post-train the very model raw / filter pretrained (same data, seed and recipe):
# the pair differs only in post-training, and the arm costs no second pretraining.
SHARED_PRETRAINING = {"raw_rsft": "raw", "filter_rsft": "filter"}
PRETRAIN_EXTRA = {"srp_masked": ["data.reflection_loss=mask"]}


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
    treatments: list[str] = field(default_factory=lambda: list(TREATMENTS[:4]))
    """Which of raw, filter, rewrite, srp and the control arms raw_rsft, filter_rsft (pretrained on raw or
    filter data, then srp's reflection-compatible post-training) and srp_masked (srp data, reflection loss
    masked in pretraining)."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """Model seeds (training.seed of pretraining and the SFT seed)."""
    world_seeds: list[int] = field(default_factory=list)
    """World seeds, each in OUT/worldW/ (empty: the one world ``world.seed``, directly in OUT)."""
    results_dir: Optional[str] = None
    """The committed results folder these runs join (results.json, its tables and chart rebuilt), e.g.
    results/medsafetyworld/tiny_cpu. Null (the default, so `make demo` changes no tracked file): the runs
    stay under out_dir and are only compared with results/medsafetyworld/<out_dir's name> if it exists."""
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
    r = load_config(AblationRecipe, path, overrides)
    bad = [t for t in r.treatments if t not in TREATMENTS]
    if bad or not r.treatments:
        raise RecipeError(f"treatments: {bad or '[]'} not in {list(TREATMENTS)}")
    if not r.seeds:
        raise RecipeError("seeds: at least one model seed")
    try:
        r.corpus.validate()
    except ValueError as e:
        raise RecipeError(str(e)) from None
    if len(set(r.world_seeds)) != len(r.world_seeds) or len(set(r.seeds)) != len(r.seeds):
        raise RecipeError(f"world_seeds {r.world_seeds} / seeds {r.seeds}: a seed listed twice")
    if r.out_dir is None:
        r.out_dir = f"runs/medsafetyworld/{r.name}"
    return r


def committed_dir(r: AblationRecipe) -> Path:
    """The committed results these runs join (results_dir) or, without it, are compared with."""
    return Path(r.results_dir or f"results/medsafetyworld/{Path(r.out_dir).name}")


def world_dirs(r: AblationRecipe) -> list[tuple[int, Path]]:
    """(world seed, directory) of every world of the recipe."""
    out = Path(r.out_dir).resolve()
    if not r.world_seeds:
        return [(r.world.seed, out)]
    return [(w, out / f"world{w}") for w in r.world_seeds]


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


def _tool_cmd(name: str) -> list[str]:
    """The command line of one of the project's tools (annotate, preprocess_data, pretrain, convert_to_hf):
    its package entry point, never a file path."""
    return [sys.executable, "-m", f"megatron_srp.cli.{name}"]


def _run(cmd: list[str], log_path: str) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(ROOT)}
    with open(log_path, "a") as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT))
    if proc.returncode != 0:
        tail = Path(log_path).read_text().splitlines()[-15:]
        tool = cmd[2] if cmd[1] == "-m" else Path(cmd[1]).name
        raise StageError(f"{tool} failed (exit {proc.returncode}); log {log_path}:\n" + "\n".join(tail))


def world_texts(out: Path) -> list[str]:
    """Everything the tokenizer must know: the corpus, every entity, chat, reflections, attacks."""
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
    load_recipe(_recipe_path(r), r.pretrain_overrides)  # a misspelt override fails now, not after the data stages
    top = Path(r.out_dir).resolve()
    top.mkdir(parents=True, exist_ok=True)
    if r.results_dir:  # a results_dir of another setting fails now, not after hours
        merge_results(Path(r.results_dir) / "results.json", asdict(r), [])
    (top / "ablation.json").write_text(json.dumps(asdict(r), indent=1))
    worlds = [(w, out, _prepare_world(r, w, out, Stage(log, out / "timings.jsonl"))) for w, out in world_dirs(r)]
    for seed in r.seeds:  # seed-major: an interrupted run has whole seeds of every treatment and world
        for w, out, (world, tok_dir, vocab) in worlds:
            stage = Stage(log, out / "timings.jsonl")
            for t in r.treatments:
                run_dir = out / t / f"seed{seed}"
                run_dir.mkdir(parents=True, exist_ok=True)
                _one_model(r, stage, world, out, run_dir, t, seed, tok_dir, vocab, w)
    results = write_report(r, log)
    log(f"[ablate] results: {top / 'results.md'}" + (f", {Path(r.results_dir) / 'results.json'}" if r.results_dir else ""))
    return results


def _prepare_world(r: AblationRecipe, world_seed: int, out: Path, stage: Stage):
    """The data stages of one world: generate, tokenizer, annotation, one preprocessed copy per data name."""
    out.mkdir(parents=True, exist_ok=True)
    tag = f" (world {world_seed})" if r.world_seeds else ""

    def generate():
        w = generate_world(replace(r.world, seed=world_seed))
        write_corpus(w, r.corpus, str(out / "corpus"))
        w.save(str(out / "world.json"))  # written last: the stage's marker

    stage.run(f"generate world and corpus{tag}", (out / "world.json").is_file(), generate)
    world = World.load(str(out / "world.json"))
    tok_dir = out / "tokenizer"
    stage.run(f"train tokenizer{tag}", (tok_dir / "tokenizer.json").is_file(),
              lambda: train_word_tokenizer(world_texts(out), str(tok_dir)))
    stage.run(f"annotate (oracle){tag}", (out / "ann" / "annotations.json").is_file(), lambda: _run(
        [*_tool_cmd("annotate"), "--input", str(out / "corpus"), "--output", str(out / "ann"),
         "--tokenizer-model", str(tok_dir), *annotate_backend(r.corpus, out / "world.json"), "--no-progress"],
        str(out / "annotate.log")))
    (out / "data").mkdir(exist_ok=True)
    for t in dict.fromkeys(DATA[t] for t in r.treatments):
        stats = out / "data" / f"{t}.stats.json"
        extra = (["--rewriter", "medsafetyworld", "--rewriter-arg", f"world={out / 'world.json'}"]
                 if t == "rewrite" else [])
        stage.run(f"preprocess {t}{tag}", stats.is_file(), lambda t=t, stats=stats, extra=extra: _run(
            [*_tool_cmd("preprocess_data"), "--input", str(out / "corpus"), "--output-prefix",
             str(out / "data" / t), "--tokenizer-model", str(tok_dir), "--append-eod", "--annotations",
             str(out / "ann"), "--variant", VARIANT[t], "--no-progress", "--stats", str(stats), *extra],
            str(out / "data" / f"{t}.log")))
    vocab = Tokenizer.from_file(str(tok_dir / "tokenizer.json")).get_vocab_size(with_added_tokens=True)
    return world, tok_dir, vocab


def annotate_backend(corpus, world_json: Path) -> list[str]:
    """annotate.py's classifier flags: the oracle segments and labels the text itself; with
    ``segments_per_document > 1`` and placement ``segment`` the corpus carries its own segments (one per
    prescription or scene, each labelled by the same oracle) and the column backend passes them on."""
    if corpus.reflection_placement == "segment":
        return ["--classifier", "column", "--classifier-arg", 'taxonomy=["interaction","contraindication","overdose"]']
    return ["--classifier", "oracle", "--classifier-arg", f"world={world_json}"]


def pretrain_overrides(r: AblationRecipe, out: Path, run_dir: Path, t: str, seed: int, tok_dir: Path,
                       vocab: int) -> list[str]:
    ckpt = run_dir / "pretrain" / "checkpoints"
    return [f"data.data_path=[{out / 'data' / DATA[t]}_text_document]", "data.mock=false",
            f"data.tokenizer_model={tok_dir}", f"model.vocab_size={vocab}", f"training.seed={1234 + seed}",
            f"checkpoint.dir={ckpt}", f"logging.dir={run_dir / 'pretrain'}", "logging.tensorboard=false",
            *PRETRAIN_EXTRA.get(t, []), *r.pretrain_overrides]


def _recipe_path(r: AblationRecipe) -> Path:
    p = Path(r.pretrain_recipe)
    return p if p.is_absolute() else ROOT / p


def _pretrained_model(r, stage, out, run_dir, t, seed, tok_dir, vocab, name) -> Path:
    """Pretrain and export one model into ``run_dir`` (both skipped when done); the exported folder."""
    recipe_path = _recipe_path(r)
    ckpt = run_dir / "pretrain" / "checkpoints"
    overrides = pretrain_overrides(r, out, run_dir, t, seed, tok_dir, vocab)
    train_iters = load_recipe(recipe_path, overrides).training.train_iters

    def pretrain():
        write_json(run_dir / "provenance.json", provenance())  # the machine that trains this model
        _run([*_tool_cmd("pretrain"), str(recipe_path), *overrides], str(run_dir / "pretrain.log"))

    stage.run(f"pretrain {name}", read_tracker(str(ckpt)) == train_iters, pretrain)
    hf = run_dir / "hf"
    stage.run(f"export {name} (parity check)", (hf / "config.json").is_file(), lambda: _run(
        [*_tool_cmd("convert_to_hf"), "--checkpoint", str(ckpt), "--output", str(hf), "--tokenizer",
         str(tok_dir), "--dtype", "fp32", "--no-progress", "--overwrite"], str(run_dir / "export.log")))
    return hf


def _link_shared(run_dir: Path, base_dir: Path) -> None:
    """The arm's pretrain/ and hf/ are links to the base treatment's (relative, so OUT can move), and
    its provenance is the base's: the machine that pretrained the model."""
    for name in ("pretrain", "hf", "provenance.json"):
        link = run_dir / name
        if not link.is_symlink() and not link.exists():  # an arm pretrained on its own keeps its model
            link.symlink_to(os.path.relpath(base_dir / name, run_dir))


def _one_model(r, stage, world, out, run_dir, t, seed, tok_dir, vocab, world_seed):
    tag = f" seed {seed}" + (f" world {world_seed}" if r.world_seeds else "")
    name = t + tag
    if t in SHARED_PRETRAINING:
        base = SHARED_PRETRAINING[t]
        base_dir = out / base / f"seed{seed}"
        base_dir.mkdir(parents=True, exist_ok=True)
        _pretrained_model(r, stage, out, base_dir, base, seed, tok_dir, vocab, base + tag)
        _link_shared(run_dir, base_dir)
        hf = run_dir / "hf"
    else:
        hf = _pretrained_model(r, stage, out, run_dir, t, seed, tok_dir, vocab, name)
    e = r.eval
    base_json = run_dir / "eval_pretrained.json"

    def eval_base():
        model, tok = load_model(str(hf), e.device)
        write_json(base_json, evaluate_pretrained(model, tok, world, e.n_items, t in REFLECTION_DATA, e.test_seed,
                                                   e.batch_size))

    stage.run(f"evaluate pretrained {name}", base_json.is_file(), eval_base)
    if r.skip_posttrain:
        return
    sft_dir = run_dir / POSTTRAIN_DIR
    settings = _with_seed(r.posttrain.training, seed)
    stage.run(f"post-train {name}", (sft_dir / "final" / "config.json").is_file(), lambda: train_sft(
        str(hf), sft_examples(world, r, t in REFLECTION_SFT, seed), str(sft_dir), settings, quiet=True))
    chat_json = run_dir / "eval_chat.json"

    def eval_chat():
        model, tok = load_model(str(sft_dir / "final"), e.device)
        write_json(chat_json, evaluate_chat(model, tok, world, e.n_items, e.prefill_tokens, e.test_seed, e.batch_size))

    stage.run(f"evaluate post-trained {name}", chat_json.is_file(), eval_chat)
    for kind, sizes in (("harmful", e.finetune_harmful), ("benign", e.finetune_benign)):
        for n in sizes:
            ft_dir = run_dir / f"finetune_{kind}_{n}"
            ft_json = run_dir / f"eval_finetune_{kind}_{n}.json"

            def attack(kind=kind, n=n, ft_dir=ft_dir, ft_json=ft_json):
                final = train_sft(str(sft_dir / "final"), attack_pairs(world, n, kind == "harmful", seed), str(ft_dir),
                                  _with_seed(e.attack_training, seed), quiet=True)
                model, tok = load_model(final, e.device)
                write_json(ft_json, evaluate_chat(model, tok, world, e.n_items, [], e.test_seed, e.batch_size))

            stage.run(f"finetuning attack {kind} N={n} {name}", ft_json.is_file(), attack)


def _with_seed(s: SFTTrainingSettings, seed: int) -> SFTTrainingSettings:
    return replace(s, seed=s.seed + seed)


# --- results ---------------------------------------------------------------------------------


def expected_files(r: AblationRecipe) -> list[str]:
    """The evaluation files of a finished run."""
    if r.skip_posttrain:
        return ["eval_pretrained"]
    return ["eval_pretrained", "eval_chat"] + [f"eval_finetune_{kind}_{n}" for kind, sizes in
                                               (("harmful", r.eval.finetune_harmful), ("benign", r.eval.finetune_benign))
                                               for n in sizes]


def write_report(r: AblationRecipe, log=print) -> dict:
    """OUT/results.{json,md,png} from OUT's runs, and OUT/comparison.md (where they sit among the committed
    runs); with results_dir, the same runs merged into RESULTS_DIR/results.json (the committed file) and its
    tables and chart rebuilt from that file alone."""
    top = Path(r.out_dir).resolve()
    runs = collect_runs(top, dict(world_dirs(r)), TREATMENTS, expected_files(r))
    committed_json = committed_dir(r) / "results.json"
    committed = read_results(committed_json) if committed_json.is_file() else {}
    invoked = [x for x in runs if x["treatment"] in r.treatments and x["seed"] in r.seeds
               and x["world_seed"] in dict(world_dirs(r))]
    write_text(top / "comparison.md", compare_to_committed(committed, invoked))  # before any merge
    if r.results_dir:
        merged = merge_results(committed_json, asdict(r), runs)
        for rec in merged.get("replaced", [])[len(committed.get("replaced", [])):]:  # not silently: numbers moved
            log(f"[ablate] {committed_json}: {describe_replaced(rec)}; the old record is kept under 'replaced'")
        write_results(committed_json, merged)
        report_dir(committed_json.parent)
    else:
        merged = merge_results(top / "results.json", asdict(r), runs)
    local = {**merged, "runs": runs, "recipe": asdict(r)}
    write_results(top / "results.json", local)
    report_dir(top)
    return local
