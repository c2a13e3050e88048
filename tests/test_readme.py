"""README.md stays true: its console examples print what the committed run's outputs print,
and (with docs/) its statements about what an edit reruns match dvc.yaml and every
benchmarks/RESULTS.md section it cites exists.

The examples are compared with the committed outputs, not the workspace's: `dvc metrics
show` runs on the metrics files of HEAD in a scratch folder, and the query examples run
only when the workspace's model is HEAD's (they are skipped, saying why, after a `dvc repro`
that trained another model, such as one on another CPU)."""

import hashlib
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
# The prose that README.md's claims moved to: checked for reruns and citations as README is.
PROSE = README + "".join(path.read_text() for path in sorted((ROOT / "docs").glob("*.md")))
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]

# What the query examples read: pipeline outputs, git-ignored, made by `dvc repro`.
QUERY_NEEDS = (
    "models/model.pt",
    "data/embeddings",
    "data/catalog/prepared",
    "data/raw.parquet",
    "data/catalog/image_hashes.parquet",
    "reports/audit.json",
)


def git_show(path: str) -> str:
    """The file as HEAD has it."""
    return subprocess.run(
        ["git", "show", f"HEAD:./{path}"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout


def why_not_the_committed_outputs() -> str | None:
    """Why the workspace cannot show the README's numbers: outputs missing, or not the
    committed run's (another experiment's model, or a `dvc repro` on a CPU that trains to
    other bits); None when they are. HEAD's dvc.lock decides, not the workspace's, which a
    `dvc repro` rewrites."""
    missing = [p for p in QUERY_NEEDS if not (ROOT / p).exists()]
    if missing:
        return f"no {', '.join(missing)}: run `dvc repro` to check this example"
    lock = yaml.safe_load(git_show("dvc.lock"))["stages"]
    for stage, path in (("fetch", "data/raw.parquet"), ("train", "models/model.pt")):
        committed = next(o["md5"] for o in lock[stage]["outs"] if o["path"] == path)
        if hashlib.md5((ROOT / path).read_bytes()).hexdigest() != committed:
            return f"{path} is not the committed run's: `dvc checkout` to check this example"
    return None


@dataclass(frozen=True)
class Example:
    command: str
    expected: str


def console_examples(markdown: str) -> list[Example]:
    """Every `$ command` line of a fenced block, with the lines up to the next one as output."""
    examples = []
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL):
        command, output = None, []
        for line in [*block.splitlines(), "$ "]:
            if line.startswith("$ "):
                if command is not None:
                    examples.append(Example(command, normalise("\n".join(output))))
                command, output = line[2:].strip(), []
            elif command is not None:
                output.append(line)
    return [e for e in examples if e.command]


def normalise(text: str) -> str:
    """Trailing whitespace off every line and trailing blank lines (the gap between examples)."""
    return "\n".join(line.rstrip() for line in text.splitlines()).rstrip("\n")


EXAMPLES = console_examples(README)


def is_query(example: Example) -> bool:
    return example.command.startswith("python -m imgrec ")


def setup_commands(markdown: str) -> list[str]:
    """The README's `python -c` lines of bash blocks: they write the query images."""
    blocks = re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.MULTILINE | re.DOTALL)
    return [
        line for block in blocks for line in block.splitlines() if line.startswith("python -c ")
    ]


def make_committed_folder(folder: Path) -> None:
    """A DVC project holding HEAD's dvc.yaml and metrics files: what `dvc metrics show`
    prints for the committed run, whatever a later `dvc repro` left in the workspace."""
    subprocess.run([*argv("dvc init --no-scm -q")], cwd=folder, check=True)
    pipeline = git_show("dvc.yaml")
    (folder / "dvc.yaml").write_text(pipeline)
    for stage in yaml.safe_load(pipeline)["stages"].values():
        for entry in stage.get("metrics", []):
            name = entry if isinstance(entry, str) else next(iter(entry))
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text(git_show(name))


def argv(command: str) -> list[str]:
    words = shlex.split(command)
    program = {"python": sys.executable, "dvc": str(Path(sys.executable).with_name("dvc"))}
    assert words[0] in program, f"README example {command!r}: this test runs only python and dvc"
    return [program[words[0]], *words[1:]]


def make_query_folder(folder: Path, env: dict) -> None:
    """A folder the query command takes for the repository, holding the README's input files,
    written by the README's own commands."""
    # The CLI finds its default paths from the nearest dvc.yaml above the cwd, so links to
    # dvc.yaml and the outputs make the README's relative names (digit.png, similar.png) work
    # without writing anything into the repository.
    for name in ("dvc.yaml", "data", "models", "reports"):
        (folder / name).symlink_to(ROOT / name)
    for command in setup_commands(README):
        done = subprocess.run(argv(command), cwd=folder, env=env, capture_output=True, text=True)
        assert done.returncode == 0, f"README: {command}: {done.stderr}"


def run_examples(workdir: Path) -> dict[str, subprocess.CompletedProcess]:
    """Each runnable example's combined stdout and stderr; all start at once to save time."""
    not_committed = why_not_the_committed_outputs()
    query_folder, committed_folder = workdir / "query", workdir / "committed"
    query_folder.mkdir()
    committed_folder.mkdir()
    env = dict(os.environ)
    # The README's numbers are the committed CPU run's, with portable kernels: a visible GPU
    # (the CLI's --device auto) or IMGREC_KERNELS=native may change their last digits.
    env["CUDA_VISIBLE_DEVICES"] = ""
    env.pop("IMGREC_KERNELS", None)
    env["COLUMNS"] = "120"
    if not not_committed:
        make_query_folder(query_folder, env)
    make_committed_folder(committed_folder)
    running = {}
    for example in EXAMPLES:
        if is_query(example) and not_committed:
            continue
        running[example.command] = subprocess.Popen(
            argv(example.command),
            cwd=query_folder if is_query(example) else committed_folder,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # what the reader's console shows, warnings included
            text=True,
        )
    done = {}
    for command, process in running.items():
        stdout, _ = process.communicate(timeout=300)
        done[command] = subprocess.CompletedProcess(process.args, process.returncode, stdout)
    return done


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    return run_examples(tmp_path_factory.mktemp("readme"))


def rewritten(markdown: str, outputs: dict[str, subprocess.CompletedProcess]) -> str:
    """The README with each example's output replaced by what it printed now."""

    def block(match: re.Match) -> str:
        lines, command = [], None
        for line in match["body"].splitlines():
            if line.startswith("$ "):
                command = line[2:].strip()
                lines.append(line)
                if command in outputs:
                    lines.append(normalise(outputs[command].stdout))
                    lines.append("")
            elif command not in outputs:
                lines.append(line)
        body = "\n".join(lines).rstrip("\n") + "\n"
        return f"{match['fence']}{body}```"

    pattern = r"^(?P<fence>```console\n)(?P<body>.*?)^```"
    return re.sub(pattern, block, markdown, flags=re.MULTILINE | re.DOTALL)


def test_readme_shows_the_query_command_and_dvc_metrics_show():
    commands = [e.command for e in EXAMPLES]
    assert any(is_query(e) for e in EXAMPLES), commands
    assert "dvc metrics show" in commands, commands


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.command for e in EXAMPLES])
def test_readme_example_prints_what_the_readme_shows(example: Example, outputs):
    not_committed = why_not_the_committed_outputs()
    if is_query(example) and not_committed:
        pytest.skip(not_committed)
    run = outputs[example.command]
    assert run.returncode == 0, run.stdout
    # A mismatch with the committed run's outputs in place means the README (or the code) is
    # wrong; with other outputs (`dvc status` not clean), rerun `dvc repro` first.
    assert normalise(run.stdout) == example.expected


def test_rewriting_the_examples_changes_only_their_outputs():
    same = {e.command: subprocess.CompletedProcess([], 0, e.expected) for e in EXAMPLES}
    assert rewritten(README, same) == README
    other = same | {"dvc metrics show": subprocess.CompletedProcess([], 0, "other numbers")}
    changed = rewritten(README, other)
    assert "other numbers" in changed and changed.count("```") == README.count("```")

    def others(examples):
        return [e for e in examples if e.command != "dvc metrics show"]

    assert others(console_examples(changed)) == others(EXAMPLES)


# "editing `FILE` reruns A (why) and B, and C only if B's output changed;" up to ; or .
RERUN = re.compile(r"editing\s+`(?P<file>[^`]+)`\s+reruns\s+(?P<stages>(?:\([^()]*\)|[^;.()])*)")
DOWNSTREAM = re.compile(r"(?P<stage>\w+) only if (?P<upstream>\w+)'s output changed")


def rerun_statements(markdown: str) -> list[tuple[str, str]]:
    return [(m["file"], " ".join(m["stages"].split())) for m in RERUN.finditer(markdown)]


def paths(entries: list) -> set[str]:
    """The paths of a deps or outs list, whose entries are strings or {path: options}."""
    return {e if isinstance(e, str) else next(iter(e)) for e in entries}


def test_readme_states_what_an_edit_reruns():
    assert rerun_statements(PROSE), "no 'editing `FILE` reruns ...' sentence in README.md or docs/"


@pytest.mark.parametrize(
    ("file", "named"), rerun_statements(PROSE), ids=[f for f, _ in rerun_statements(PROSE)]
)
def test_rerun_statement_names_the_stages_that_depend_on_the_file(file: str, named: str):
    """The stages named outright are those whose dvc.yaml `deps` list the file; a stage named as
    "C only if B's output changed" reruns downstream, not on the edit, so it is no direct dep:
    it must instead depend on one of B's outputs, B being named outright."""
    direct, downstream = set(), {}
    for item in re.split(r",\s*(?:and\s+)?|\s+and\s+", re.sub(r"\([^()]*\)", "", named)):
        item = item.strip().removeprefix("only ")
        if match := DOWNSTREAM.fullmatch(item):
            downstream[match["stage"]] = match["upstream"]
        else:
            assert item in STAGES, f"README: {named!r}: {item!r} is no stage of dvc.yaml"
            direct.add(item)
    depending = {name for name, stage in STAGES.items() if file in paths(stage.get("deps", []))}
    assert depending, f"README names {file}, but no stage in dvc.yaml depends on it"
    assert direct == depending, f"README: editing {file} reruns {named!r}"
    for stage, upstream in downstream.items():
        assert stage in STAGES and stage not in depending, (stage, named)
        assert upstream in direct, f"README: {stage} reruns after {upstream}, which is not named"
        upstream_outs = paths(STAGES[upstream].get("outs", []))
        assert paths(STAGES[stage].get("deps", [])) & upstream_outs, (
            f"README: {stage} reruns if {upstream}'s output changed, but reads none of it"
        )


def cited_sections(markdown: str) -> list[str]:
    found = re.findall(r"`?benchmarks/RESULTS\.md`?,\s+\"([^\"]+)\"", markdown)
    return sorted({" ".join(title.split()) for title in found})


def headings(markdown: str) -> list[str]:
    prose = re.sub(r"^```.*?^```", "", markdown, flags=re.MULTILINE | re.DOTALL)
    return [m.strip() for m in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", prose, flags=re.MULTILINE)]


def test_readme_cites_benchmark_sections():
    assert cited_sections(PROSE), 'no `benchmarks/RESULTS.md, "Section"` citation in README or docs'


@pytest.mark.parametrize("title", cited_sections(PROSE))
def test_cited_benchmark_section_exists(title: str):
    results = headings((ROOT / "benchmarks" / "RESULTS.md").read_text())
    # A heading's name may go on with what was measured: "Portable vs native kernels (2,000-row
    # catalog, ...)" or "Nearest neighbours at scale: 1,000,000 vectors ..."; the README cites
    # the name, so a heading matches when the title is all of it or all before ":" or " (".
    assert any(h == title or h.startswith((f"{title}:", f"{title} (")) for h in results), (
        f'README.md or docs/ cite benchmarks/RESULTS.md, "{title}", which has no such heading'
    )


if __name__ == "__main__":
    # After committing a new run: `python tests/test_readme.py` rewrites the README's example
    # outputs from the committed outputs (the query examples need HEAD's model in place).
    import tempfile

    if reason := why_not_the_committed_outputs():
        sys.exit(f"the query examples cannot run: {reason}")
    with tempfile.TemporaryDirectory() as scratch:
        done = run_examples(Path(scratch))
    failed = [command for command, run in done.items() if run.returncode]
    if failed:
        sys.exit(f"failed: {failed}")
    (ROOT / "README.md").write_text(rewritten(README, done))
