"""preprocess.sbatch as a real job array (fake Slurm): annotate, then tokenize the srp variant, each as
two array tasks plus the finishing job the first task submits; the output equals a single process's."""

from pathlib import Path

from tests.fixtures import SAFE_SENTENCES, UNSAFE_SENTENCES, labelled_corpus, train_bpe_tokenizer, write_jsonl
from tests.slurm.fake_slurm import calls, job_env, run_script


def run_array(tmp_path, tool: str, args: list[str], tasks: int = 2, job: int = 900):
    array = dict(SLURM_ARRAY_JOB_ID=job, SLURM_ARRAY_TASK_MIN=0, SLURM_ARRAY_TASK_MAX=tasks - 1,
                 SLURM_ARRAY_TASK_COUNT=tasks)
    before = len(calls(job_env(tmp_path), "sbatch"))
    for i in range(tasks):
        env = job_env(tmp_path, job_id=job + 1 + i, SLURM_ARRAY_TASK_ID=i, **array)
        p = run_script("preprocess.sbatch", [tool, *args], env)
        assert p.returncode == 0, p.stderr
    submitted = calls(env, "sbatch")[before:]
    assert len(submitted) == 1, submitted  # by the first task only
    sub = submitted[0]
    assert f"--dependency=afterok:{job}" in sub["argv"]
    # The finishing job is submitted without the array task's SLURM_* variables.
    assert sub["slurm_env"] == [] and sub["srp_step"] is None
    # Run it as Slurm would: the script and its arguments, with SRP_STEP=finish.
    script = next(i for i, a in enumerate(sub["argv"]) if a.endswith("slurm/preprocess.sbatch"))
    assert "--export=ALL,SRP_STEP=finish" in sub["argv"][:script]
    p = run_script("preprocess.sbatch", sub["argv"][script + 1:], job_env(tmp_path, job_id=job + 99, SRP_STEP="finish"))
    assert p.returncode == 0, p.stderr
    return p


def test_annotate_and_preprocess_arrays_equal_a_single_process(tmp_path):
    for i in range(3):
        write_jsonl(tmp_path / "corpus" / f"shard_{i}.jsonl", labelled_corpus(30, seed=i))
    tok = train_bpe_tokenizer(tmp_path / "tok", SAFE_SENTENCES * 20 + UNSAFE_SENTENCES * 20)
    ann = tmp_path / "ann"
    run_array(tmp_path, "annotate", ["--input", str(tmp_path / "corpus"), "--output", str(ann),
                                     "--tokenizer-model", str(tok), "--classifier", "column"])
    assert (ann / "annotations.json").is_file()
    assert len(list(ann.glob("*.annotations.parquet"))) == 3

    common = ["--input", str(tmp_path / "corpus"), "--tokenizer-model", str(tok), "--append-eod",
              "--annotations", str(ann), "--variant", "srp"]
    run_array(tmp_path, "preprocess", ["--output-prefix", str(tmp_path / "array" / "fwe"), *common], job=950)

    from megatron_srp.data import preprocess as preprocess_tool

    assert preprocess_tool.main(["--output-prefix", str(tmp_path / "single" / "fwe"), *common, "--no-progress"]) == 0
    outputs = sorted(p.name for p in (tmp_path / "single").iterdir())
    assert "fwe_text_document.roles.bin" in outputs
    assert sorted(p.name for p in (tmp_path / "array").iterdir()) == outputs
    for name in outputs:
        assert (tmp_path / "array" / name).read_bytes() == Path(tmp_path / "single" / name).read_bytes(), name
