"""The sweep CLI: grid parsing and expansion, grid files (and TACO's Table B.3 / B.4 sweeps), run names, dry-run
lines, clear errors, a real sequential sweep through a stand-in training module (no JAX) with one run failing,
and runs that start from a base run's finished stages (`--reuse_stages`), with stand-ins and (slow) for real."""
import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kipjax import sweep

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------------------- value splitting


@pytest.mark.parametrize("text, expected", [
    ("5e-5,2e-5,1e-5", ["5e-5", "2e-5", "1e-5"]),
    ("'dual','som'", ["'dual'", "'som'"]),
    (" 1 , 2 ", ["1", "2"]),
    ("'a,b',\"c,d\"", ["'a,b'", '"c,d"']),
    ("(1, 8, 64),(1, 8)", ["(1, 8, 64)", "(1, 8)"]),
    ("[1, [2, 3]],{'k': (4, 5)}", ["[1, [2, 3]]", "{'k': (4, 5)}"]),
    ("'it\\'s, ok',2", ["'it\\'s, ok'", "2"]),
    ("'(',')'", ["'('", "')'"]),
    ("@foo(),%BAR", ["@foo()", "%BAR"]),
    ("None", ["None"]),
])
def test_split_values_keeps_quoted_and_bracketed_commas(text, expected):
    assert sweep.split_values(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "empty value list"),
    ("  ", "empty value list"),
    ("1,,2", "empty value"),
    ("1,", "empty value"),
    ("'abc", "unterminated string"),
    ("(1, 2", "missing ')'"),
    ("1)", "unbalanced"),
    ("[1, 2)", "unbalanced"),
])
def test_split_values_rejects_malformed_lists(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.split_values(text)


# ---------------------------------------------------------------------------------------- grid expansion


def test_grid_product_order_is_first_axis_slowest():
    grid = sweep.parse_grid(["A.x=1,2", "B.y='p','q','r'"])
    assert grid == {"A.x": ["1", "2"], "B.y": ["'p'", "'q'", "'r'"]}
    points = sweep.expand_grid(grid)
    assert [(p["A.x"], p["B.y"]) for p in points] == [
        ("1", "'p'"), ("1", "'q'"), ("1", "'r'"), ("2", "'p'"), ("2", "'q'"), ("2", "'r'")]


def test_run_names_are_readable():
    points = sweep.expand_grid(sweep.parse_grid(
        ["learning_rate_schedule.peak_value=5e-5,1e-5", "HardNCERetrieval.score_kind='dual'"]))
    assert sweep.run_names(points) == ["peak_value=5e-5__score_kind=dual", "peak_value=1e-5__score_kind=dual"]


def test_run_names_are_unique_and_filesystem_safe(tmp_path):
    grid = sweep.parse_grid([
        "A.lr=1,-1,(1,),'1', '1 '",                       # collide once reduced to path characters
        "B.lr='a/b','a b','A B','../x','',\"\\\\\"",          # clashing short keys, slashes, case, empty
    ])
    points = sweep.expand_grid(grid)
    names = sweep.run_names(points)
    assert len(names) == len(points) == 30
    assert len({n.lower() for n in names}) == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+=-]+", name), name
        assert name.startswith("A.lr=") and "__B.lr=" in name  # full keys because both end in `lr`
        assert (tmp_path / name).resolve().parent == tmp_path.resolve()
        (tmp_path / name).mkdir()
    assert len(os.listdir(tmp_path)) == len(names)


def test_long_run_names_are_shortened_but_stay_unique():
    values = ",".join(repr("x" * 80 + str(i)) for i in range(3))
    names = sweep.run_names(sweep.expand_grid(sweep.parse_grid([f"A.b={values}"])))
    assert len(set(names)) == 3 and all(len(n) <= 100 for n in names)


# ------------------------------------------------------------------------------------------- dry run


def _dry_run(capsys, *argv):
    assert sweep.main([*argv, "--dry_run"]) == 0
    return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _flag(command, name):
    values = [a.split("=", 1)[1] for a in command if a.startswith(name + "=")]
    assert len(values) == 1, (name, command)
    return values[0]


def test_dry_run_prints_one_parseable_command_per_run(tmp_path, capsys):
    root = tmp_path / "my sweep"  # a space: the lines must still split back correctly
    commands = _dry_run(capsys, "--gin_file=gin_configs/quickstart.gin", "--gin_file=gin_configs/runs/cpu_tiny.gin",
                        "--grid", "learning_rate_schedule.peak_value=5e-5,2e-5,1e-5",
                        "--grid", "HardNCERetrieval.score_kind='dual','som'",
                        "--gin.TRAIN_STEPS=10", "--gin.MODEL_DIR='/ignored'", f"--model_dir_root={root}")
    assert len(commands) == 6
    model_dirs = []
    for command in commands:
        assert command[:3] == [sys.executable, "-m", "kipjax.train"]
        assert [a for a in command if a.startswith("--gin_file=")] == [
            "--gin_file=gin_configs/quickstart.gin", "--gin_file=gin_configs/runs/cpu_tiny.gin"]
        assert _flag(command, "--gin.TRAIN_STEPS") == "10"
        assert command[-1].startswith("--gin.MODEL_DIR=")  # last, so it wins over the gin files
        model_dir = ast.literal_eval(_flag(command, "--gin.MODEL_DIR"))
        assert Path(model_dir).parent == root
        lr = _flag(command, "--gin.learning_rate_schedule.peak_value")
        kind = _flag(command, "--gin.HardNCERetrieval.score_kind")
        assert Path(model_dir).name == f"peak_value={lr}__score_kind={ast.literal_eval(kind)}"
        model_dirs.append(model_dir)
    assert [(_flag(c, "--gin.learning_rate_schedule.peak_value"), _flag(c, "--gin.HardNCERetrieval.score_kind"))
            for c in commands] == [(lr, k) for lr in ("5e-5", "2e-5", "1e-5") for k in ("'dual'", "'som'")]
    assert len(set(model_dirs)) == 6
    assert not root.exists()  # a dry run writes nothing


def test_dry_run_passes_module_bindings_and_tuples_through(tmp_path, capsys):
    [command] = _dry_run(capsys, "--gin_file=a.gin", "--gin_bindings=Trainer.batch_size = 8",
                         "--grid", "HardNCERetrieval.eval_ks=(1, 8, 64)", "--gin.Trainer.log_every", "5",
                         "--module", "my.trainer", f"--model_dir_root={tmp_path}")
    assert command[:3] == [sys.executable, "-m", "my.trainer"]
    assert "--gin_bindings=Trainer.batch_size = 8" in command
    assert _flag(command, "--gin.Trainer.log_every") == "5"
    assert _flag(command, "--gin.HardNCERetrieval.eval_ks") == "(1, 8, 64)"
    assert ast.literal_eval(_flag(command, "--gin.MODEL_DIR")) == str(tmp_path / "eval_ks=1-8-64")


def test_command_line_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kipjax.sweep", "--gin_file=x.gin", "--grid", "A.b=1,2",
                          f"--model_dir_root={tmp_path}", "--dry_run"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert [shlex.split(line)[-1] for line in out.splitlines()] == [
        f"--gin.MODEL_DIR={str(tmp_path / 'b=1')!r}", f"--gin.MODEL_DIR={str(tmp_path / 'b=2')!r}"]


# ------------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("argv, message", [
    (["--grid", "A.b"], "expected KEY=V1,V2,... (no '=')"),
    (["--grid", "A.b="], "empty value list"),
    (["--grid", "A.b= , "], "empty value list"),
    (["--grid", "A.b=1,,2"], "empty value"),
    (["--grid", "A.b=1,2,1"], "given more than once"),
    (["--grid", "A.b=1", "--grid", "A.b=2"], "A.b is swept twice (--grid 'A.b=1' and --grid 'A.b=2')"),
    (["--grid", "A.b=1,2", "--gin.A.b=3"], "both swept (--grid) and fixed"),
    (["--grid", "A.b=1", "--gin_bindings=A.b = 3"], "both swept (--grid) and fixed"),
    (["--grid", "not a key=1"], "is not a gin binding key"),
    (["--grid", "A.b='open"], "unterminated string"),
    (["--grid", "A.b=1 2"], "is not a gin binding"),
    (["--grid", "MODEL_DIR='/x','/y'"], "use --model_dir_root"),
    (["--grid", "A.b=1", "--module", "not/a/module"], "is not a module name"),
    (["--grid", "A.b=1", "--model_dir_root=gs://bucket/x"], "must be a filesystem path"),
    ([], "--grid"),
])
def test_malformed_arguments_are_argparse_errors(tmp_path, capsys, argv, message):
    if not any(a.startswith("--model_dir_root") for a in argv):
        argv = [*argv, f"--model_dir_root={tmp_path}"]
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([*argv, "--dry_run"])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_gin_file_fails_before_any_run(tmp_path, capsys):
    with pytest.raises(SystemExit):
        sweep.main(["--gin_file=nope.gin", "--grid", "A.b=1", f"--model_dir_root={tmp_path}"])
    assert "gin file 'nope.gin' does not exist" in capsys.readouterr().err
    assert not (tmp_path / "b=1").exists()


# ----------------------------------------------------------------------------------------- final metrics


def test_final_metrics_takes_last_loss_line_and_last_eval(tmp_path):
    lines = [{"step": 0, "eval/recall@1": 0.1}, {"step": 5, "loss": 2.0, "learning_rate": 1e-3},
             {"step": 10, "loss": 1.0, "eval/recall@1": 0.4, "eval/mrr": 0.5}, {"step": 12, "loss": 0.5}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + '\n{"step": 13, "lo')
    assert sweep.final_metrics(str(tmp_path)) == {"step": 12, "loss": 0.5, "eval/recall@1": 0.4, "eval/mrr": 0.5}
    assert sweep.final_metrics(str(tmp_path / "absent")) == {}


# ------------------------------------------------------------------------------------- a real sweep

FAKE_TRAIN = textwrap.dedent('''
    """Stand-in for kipjax.train: reads --gin.KEY=VALUE, writes MODEL_DIR/metrics.jsonl; 'som' fails."""
    import ast, json, os, sys
    bindings = dict(a[len("--gin."):].split("=", 1) for a in sys.argv[1:] if a.startswith("--gin."))
    assert any(a == "--gin_file=base.gin" for a in sys.argv), sys.argv
    model_dir = ast.literal_eval(bindings["MODEL_DIR"])
    print("fake training in", model_dir, flush=True)
    if ast.literal_eval(bindings["Method.kind"]) == "som":
        sys.exit(3)
    lr = float(bindings["lr_schedule.peak"])
    steps = int(bindings["TRAIN_STEPS"])
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": 0, "eval/recall@1": 0.0}) + "\\n")
        f.write(json.dumps({"step": steps, "loss": lr, "eval/recall@1": 10 * lr}) + "\\n")
''')


def test_sequential_sweep_records_metrics_and_failures(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "base.gin").write_text("TRAIN_STEPS = 1\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    root = tmp_path / "sweep"
    code = sweep.main(["--gin_file=base.gin", "--grid", "lr_schedule.peak=0.1,0.2",
                       "--grid", "Method.kind='dual','som'", "--gin.TRAIN_STEPS=7",
                       f"--model_dir_root={root}", "--module", "fake_train"])
    assert code == 1  # one kind of run failed; the others still ran
    record = json.loads((root / "sweep.json").read_text())
    assert record["grid"] == {"lr_schedule.peak": ["0.1", "0.2"], "Method.kind": ["'dual'", "'som'"]}
    runs = {r["name"]: r for r in record["runs"]}
    assert list(runs) == ["peak=0.1__kind=dual", "peak=0.1__kind=som", "peak=0.2__kind=dual", "peak=0.2__kind=som"]
    for name, run in runs.items():
        assert run["model_dir"] == str(root / name)
        assert run["bindings"]["lr_schedule.peak"] in ("0.1", "0.2")
        if run["bindings"]["Method.kind"] == "'som'":
            assert run["exit_code"] == 3 and run["metrics"] == {}
        else:
            lr = float(run["bindings"]["lr_schedule.peak"])
            assert run["exit_code"] == 0
            assert run["metrics"] == {"step": 7, "loss": lr, "eval/recall@1": pytest.approx(10 * lr)}
    assert not [p for p in os.listdir(root) if ".tmp" in p]  # the atomic write left no temporary file
    captured = capsys.readouterr()
    assert "peak=0.2__kind=dual  0     7     0.2   2" in captured.out  # the summary table
    assert "2 of 4 runs failed" in captured.err


def test_all_runs_succeeding_exits_zero(tmp_path, monkeypatch, capsys):
    (tmp_path / "fake_train.py").write_text(FAKE_TRAIN)
    (tmp_path / "base.gin").write_text("")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    assert sweep.main(["--gin_file=base.gin", "--grid", "lr_schedule.peak=0.5", "--grid", "Method.kind='dual'",
                       "--gin.TRAIN_STEPS=1", f"--model_dir_root={tmp_path / 'out'}", "--module=fake_train"]) == 0
    [run] = json.loads((tmp_path / "out" / "sweep.json").read_text())["runs"]
    assert run["exit_code"] == 0 and run["metrics"]["loss"] == 0.5


# ---------------------------------------------------------------------------------------------- grid files


def test_grid_file_lines_keep_quoted_commas_and_skip_comments(tmp_path):
    path = tmp_path / "axes.grid"
    path.write_text(textwrap.dedent('''\
        # which axes, and why

        A.x = 1, 2   # a trailing comment
        B.y='a,b', "c#d" , ('e', 'f')
          # an indented comment
        C.z=@f(), %M#no space before it
    '''))
    axes = sweep.read_grid_file(str(path))
    assert [origin for origin, _ in axes] == [f"{path}:3", f"{path}:4", f"{path}:6"]
    assert sweep.parse_grid(axes) == {"A.x": ["1", "2"], "B.y": ["'a,b'", '"c#d"', "('e', 'f')"],
                                      "C.z": ["@f()", "%M"]}


@pytest.mark.parametrize("line, message", [
    ("A.x", "expected KEY=V1,V2,... (no '=')"),
    ("A.x=1,,2  # two commas", "empty value"),
    ("A.x='open  # the comment is inside the string", "unterminated string"),
    ("A.x=(1, 2  # c", "missing ')'"),
    ("A.x=1 2", "A.x=1 2 is not a gin binding"),
    ("A.x=1,1", "value(s) 1 given more than once"),
    ("MODEL_DIR='/a','/b'", "use --model_dir_root"),
    ("not a key=1", "is not a gin binding key"),
])
def test_a_bad_grid_file_line_is_an_error_naming_file_and_line(tmp_path, capsys, line, message):
    path = tmp_path / "bad.grid"
    path.write_text(f"# first a good axis\nB.y=1,2\n{line}\n")
    with pytest.raises(SystemExit) as exit_info:
        sweep.main([f"--grid_file={path}", f"--model_dir_root={tmp_path}", "--dry_run"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"error: {path}:3: " in err and message in err


@pytest.mark.parametrize("content, message", [
    (None, "No such file or directory"),
    ("# only a comment\n\n", "has no KEY=V1,V2,... line"),
    ("A.x=1,2\n", "A.x is swept twice ({path}:1 and --grid 'A.x=3')"),
])
def test_grid_file_errors(tmp_path, capsys, content, message):
    path = tmp_path / "axes.grid"
    if content is not None:
        path.write_text(content)
    with pytest.raises(SystemExit):
        sweep.main([f"--grid_file={path}", "--grid", "A.x=3", f"--model_dir_root={tmp_path}", "--dry_run"])
    assert message.format(path=path) in capsys.readouterr().err


def test_grid_and_grid_file_axes_keep_their_command_line_order(tmp_path, capsys):
    (tmp_path / "x.grid").write_text("A.x=1,2\n")
    commands = _dry_run(capsys, "--grid", "B.y='p','q'", f"--grid_file={tmp_path / 'x.grid'}", "--grid", "C.z=0",
                        f"--model_dir_root={tmp_path}")
    assert [Path(ast.literal_eval(_flag(c, "--gin.MODEL_DIR"))).name for c in commands] == [
        "y=p__x=1__z=0", "y=p__x=2__z=0", "y=q__x=1__z=0", "y=q__x=2__z=0"]


# Dissertation Tables B.3 and B.4: the swept values, as printed there.
TABLE_B3_TAU = (0.1, 1, 2, 5, 10, 100)
TABLE_B4_BETA = (0, 0.6, 0.7, 0.8, 0.9, 0.999)
TACO_SWEEPS = REPO / "gin_configs" / "taco" / "sweeps"


@pytest.mark.parametrize("grid_file, key, table", [
    ("tau.grid", "task_sensitivity_combiner.tau", TABLE_B3_TAU),
    ("beta.grid", "task_sensitivity_combiner.beta", TABLE_B4_BETA),
])
def test_taco_table_sweeps_list_one_run_per_table_value(tmp_path, capsys, monkeypatch, grid_file, key, table):
    monkeypatch.chdir(REPO)
    base_config = "gin_configs/taco/kilt_t5_base.gin"
    assert re.search(rf"^{re.escape(key)} = ", (REPO / base_config).read_text(), re.M)  # a key the config binds
    commands = _dry_run(capsys, f"--gin_file={base_config}", f"--grid_file={TACO_SWEEPS / grid_file}",
                        f"--model_dir_root={tmp_path}")
    assert len(commands) == len(table) == 6
    values = [_flag(c, f"--gin.{key}") for c in commands]
    assert [float(v) for v in values] == [float(v) for v in table]
    for command, value in zip(commands, values):
        assert [a for a in command if a.startswith("--gin.")] == [  # the one swept binding, then MODEL_DIR
            f"--gin.{key}={value}", f"--gin.MODEL_DIR={str(tmp_path / (key.split('.')[-1] + '=' + value))!r}"]
        assert f"--gin_file={base_config}" in command


def _documented_command(grid_file: Path) -> list[str]:
    """The sweep command line in a grid file's comments (backslash-continued lines)."""
    lines = [line.lstrip("#").strip() for line in grid_file.read_text().splitlines() if line.startswith("#")]
    start = next(i for i, line in enumerate(lines) if line.startswith("python -m kipjax.sweep"))
    text = ""
    for line in lines[start:]:
        text += line.rstrip("\\") + " "
        if not line.endswith("\\"):
            return shlex.split(text)
    raise AssertionError(f"{grid_file}: unterminated command")


@pytest.mark.parametrize("grid_file", ["tau.grid", "beta.grid"])
def test_taco_table_sweeps_document_a_working_reuse_command(tmp_path, capsys, monkeypatch, grid_file):
    monkeypatch.chdir(REPO)
    command = _documented_command(TACO_SWEEPS / grid_file)
    assert command[:3] == ["python", "-m", "kipjax.sweep"]
    argv = command[3:]
    assert argv[argv.index("--reuse_stages") + 1] == "/runs/taco_kilt"
    assert argv[argv.index("--through") + 1] == "episode_7"
    assert f"--grid_file=gin_configs/taco/sweeps/{grid_file}" in argv
    base = make_base(tmp_path / "taco_kilt", ["warmup", *(f"episode_{i}" for i in range(1, 9))])
    argv[argv.index("--reuse_stages") + 1] = str(base)
    argv = [a for a in argv if not a.startswith("--model_dir_root=")] + [f"--model_dir_root={tmp_path / 'sweep'}"]
    commands = _dry_run(capsys, *argv)
    assert len(commands) == 6 and all(_flag(c, "--gin.TacoRetrieval.guess_dir") == "None" for c in commands)
    assert not (tmp_path / "sweep").exists()


# ---------------------------------------------------------------------------------------- reused stages


def make_base(model_dir: Path, names, statuses=None) -> Path:
    """A fake finished staged run: stages.json and, per stage, a checkpoint file, metrics.jsonl and events."""
    statuses = statuses or ["done"] * len(names)
    for name in names:
        (model_dir / name / "checkpoints" / "3" / "state").mkdir(parents=True)
        (model_dir / name / "checkpoints" / "3" / "state" / "params").write_bytes(name.encode() * 100)
        (model_dir / name / "metrics.jsonl").write_text(json.dumps({"step": 3, "loss": 9.0}) + "\n")
        (model_dir / name / "tb").mkdir()
        (model_dir / name / "tb" / "events.out.tfevents.1").write_bytes(b"\0" + name.encode())
    current = next((n for n, s in zip(names, statuses) if s != "done"), None)
    (model_dir / "stages.json").write_text(json.dumps(
        {"current": current, "stages": [{"name": n, "status": s, "checkpoint_step": 3}
                                         for n, s in zip(names, statuses)]}))
    return model_dir


def tree(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


FAKE_STAGED_TRAIN = textwrap.dedent('''
    """Stand-in for a staged kipjax.train: notes which stage directories MODEL_DIR held at launch, 'trains' the
    others (a metrics.jsonl each; the last one's loss is Method.lr) and writes stages.json, as run_stages does."""
    import ast, json, os, sys
    bindings = dict(a[len("--gin."):].split("=", 1) for a in sys.argv[1:] if a.startswith("--gin."))
    model_dir = ast.literal_eval(bindings["MODEL_DIR"])
    stages = ["warmup", "episode_1", "episode_2"]
    present = [n for n in stages if os.path.isdir(os.path.join(model_dir, n))]
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "at_launch.json"), "w") as f:
        json.dump(present, f)
    for name in stages:
        if name in present:
            print(f"stage {name} already done", flush=True)
            continue
        os.makedirs(os.path.join(model_dir, name))
        with open(os.path.join(model_dir, name, "metrics.jsonl"), "w") as f:
            f.write(json.dumps({"step": 5, "loss": float(bindings["Method.lr"]), "eval/acc": 0.5}) + "\\n")
    with open(os.path.join(model_dir, "stages.json"), "w") as f:
        json.dump({"current": None, "stages": [{"name": n, "status": "done"} for n in stages]}, f)
''')


@pytest.fixture
def staged_sweep(tmp_path, monkeypatch):
    """A base run done through episode_2 of three stages and a stand-in staged trainer; returns a function
    running the sweep over Method.lr=0.1,0.2 with --reuse_stages BASE --through episode_1."""
    (tmp_path / "fake_staged_train.py").write_text(FAKE_STAGED_TRAIN)
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    base = make_base(tmp_path / "base", ["warmup", "episode_1", "episode_2"])
    root = tmp_path / "sweep"

    def run(*extra):
        return sweep.main(["--grid", "Method.lr=0.1,0.2", f"--model_dir_root={root}", "--module=fake_staged_train",
                           "--reuse_stages", str(base), "--through", "episode_1", *extra])
    return base, root, run


def test_each_run_gets_the_base_stages_through_the_named_one_before_launch(staged_sweep, capfd):
    base, root, run = staged_sweep
    before = tree(base)
    assert run() == 0
    record = json.loads((root / "sweep.json").read_text())
    assert record["reuse_stages"] == {"base_model_dir": str(base), "through": "episode_1",
                                      "stages": ["warmup", "episode_1"]}
    for name, lr in (("lr=0.1", 0.1), ("lr=0.2", 0.2)):
        run_dir = root / name
        assert json.loads((run_dir / "at_launch.json").read_text()) == ["warmup", "episode_1"]
        for stage in ("warmup", "episode_1"):
            assert tree(run_dir / stage) == tree(base / stage)  # everything, and nothing else
            assert os.path.samefile(run_dir / stage / "checkpoints" / "3" / "state" / "params",
                                    base / stage / "checkpoints" / "3" / "state" / "params")  # hard links
        assert not [p for p in os.listdir(run_dir) if p.endswith(".partial")]
        [entry] = [r for r in record["runs"] if r["name"] == name]
        assert entry["reused_stages"] == {"warmup": "filled", "episode_1": "filled"}
        assert entry["metrics"] == {"step": 5, "loss": lr, "eval/acc": 0.5}  # from the last stage's metrics.jsonl
    assert tree(base) == before
    out = capfd.readouterr().out
    assert out.count("stage warmup already done") == out.count("stage episode_1 already done") == 2
    assert f"reused stages of {base}: warmup (filled), episode_1 (filled)" in out


def test_stage_files_are_copied_where_they_cannot_be_linked(tmp_path, monkeypatch):
    base = make_base(tmp_path / "base", ["warmup", "episode_1"])
    reuse = sweep.stage_reuse(str(base), "warmup")

    def no_links(src, dst):
        raise OSError(18, "Invalid cross-device link")
    monkeypatch.setattr(os, "link", no_links)
    assert sweep.fill_stages(str(tmp_path / "run"), reuse) == {"warmup": "filled"}
    assert sorted(os.listdir(tmp_path / "run")) == ["warmup"]
    assert tree(tmp_path / "run" / "warmup") == tree(base / "warmup")
    assert not os.path.samefile(tmp_path / "run" / "warmup" / "metrics.jsonl", base / "warmup" / "metrics.jsonl")


def test_existing_run_dirs_are_left_alone(staged_sweep, capfd):
    base, root, run = staged_sweep
    mine = root / "lr=0.1" / "warmup"
    mine.mkdir(parents=True)
    (mine / "mine.txt").write_text("trained here")
    (root / "lr=0.1" / ".episode_1.partial").mkdir()  # a fill cut short by an earlier, killed sweep
    (root / "lr=0.1" / ".episode_1.partial" / "half").write_text("")
    assert run() == 0
    assert tree(mine) == {"mine.txt": b"trained here"}
    assert tree(root / "lr=0.1" / "episode_1") == tree(base / "episode_1")
    assert not (root / "lr=0.1" / ".episode_1.partial").exists()
    runs = {r["name"]: r for r in json.loads((root / "sweep.json").read_text())["runs"]}
    assert runs["lr=0.1"]["reused_stages"] == {"warmup": "kept", "episode_1": "filled"}
    assert runs["lr=0.2"]["reused_stages"] == {"warmup": "filled", "episode_1": "filled"}
    # The sweep launched again: every run keeps what it has, its trained stages included.
    (root / "lr=0.2" / "episode_1" / "note").write_text("added after the fill")
    trained = {name: tree(root / name) for name in ("lr=0.1", "lr=0.2")}
    assert run() == 0
    for name in ("lr=0.1", "lr=0.2"):
        after = tree(root / name)
        assert {k: v for k, v in after.items() if k != "at_launch.json"} == {
            k: v for k, v in trained[name].items() if k != "at_launch.json"}
        assert json.loads(after["at_launch.json"]) == ["warmup", "episode_1", "episode_2"]
    runs = {r["name"]: r for r in json.loads((root / "sweep.json").read_text())["runs"]}
    assert all(r["reused_stages"] == {"warmup": "kept", "episode_1": "kept"} for r in runs.values())


@pytest.mark.parametrize("setup, through, message", [
    (None, "episode_9", "lists no such stage (it lists warmup, episode_1, episode_2)"),
    (None, "episode_2", "stage 'episode_2' of the base run is not done ({base}/stages.json: stages[2].status is "
                        "'running')"),
    ("rmdir", "episode_1", "says stage 'episode_1' is done, but {base}/episode_1 is not a directory"),
    ("no stages.json", "warmup", "{base}/stages.json does not exist: {base} is not the MODEL_DIR of a staged run"),
    ("bad json", "warmup", "{base}/stages.json: cannot read it as JSON"),
    ("no stages", "warmup", "{base}/stages.json: field 'stages' must be a non-empty list"),
    ("nameless", "warmup", "{base}/stages.json: stages[0] has no 'name'"),
])
def test_reuse_refuses_stages_that_are_missing_or_not_done(tmp_path, capsys, setup, through, message):
    base = make_base(tmp_path / "base", ["warmup", "episode_1", "episode_2"], ["done", "done", "running"])
    if setup == "rmdir":
        shutil.rmtree(base / "episode_1")
    elif setup == "no stages.json":
        (base / "stages.json").unlink()
    elif setup == "bad json":
        (base / "stages.json").write_text('{"stages": [')
    elif setup == "no stages":
        (base / "stages.json").write_text('{"stages": []}')
    elif setup == "nameless":
        (base / "stages.json").write_text('{"stages": [{"status": "done"}]}')
    root = tmp_path / "sweep"
    for dry_run in ([], ["--dry_run"]):  # checked before anything runs, in a dry run too
        with pytest.raises(SystemExit) as exit_info:
            sweep.main(["--grid", "A.b=1", f"--model_dir_root={root}", "--reuse_stages", str(base),
                        "--through", through, *dry_run])
        assert exit_info.value.code == 2
        assert message.format(base=base) in capsys.readouterr().err
    assert not root.exists()


@pytest.mark.parametrize("flags", [["--reuse_stages", "/x"], ["--through", "warmup"]])
def test_reuse_stages_and_through_go_together(tmp_path, capsys, flags):
    with pytest.raises(SystemExit):
        sweep.main(["--grid", "A.b=1", f"--model_dir_root={tmp_path}", *flags, "--dry_run"])
    assert "--reuse_stages BASE_MODEL_DIR and --through STAGE_NAME go together" in capsys.readouterr().err


def test_a_dry_run_with_reuse_fills_in_nothing(tmp_path, capsys):
    base = make_base(tmp_path / "base", ["warmup", "episode_1"])
    commands = _dry_run(capsys, "--grid", "A.b=1,2", f"--model_dir_root={tmp_path / 'sweep'}",
                        "--reuse_stages", str(base), "--through", "warmup")
    assert len(commands) == 2 and not (tmp_path / "sweep").exists()


def test_final_metrics_of_a_staged_run_are_its_last_stages(tmp_path):
    make_base(tmp_path, ["warmup", "episode_1"])
    (tmp_path / "episode_1" / "metrics.jsonl").write_text(
        json.dumps({"step": 3, "loss": 0.5}) + "\n" + json.dumps({"step": 3, "eval/rprec_avg": 0.7}) + "\n")
    assert sweep.final_metrics(str(tmp_path)) == {"step": 3, "loss": 0.5, "eval/rprec_avg": 0.7}


TOY_STAGED_TRAIN = textwrap.dedent('''
    """kipjax.train for the staged toy method of tests/test_stages.py and its gin, plus --gin.KEY=VALUE."""
    import ast, sys
    import gin
    import test_stages
    from kipjax import runner
    test_stages.configure()
    bindings = dict(a[len("--gin."):].split("=", 1) for a in sys.argv[1:] if a.startswith("--gin."))
    model_dir = ast.literal_eval(bindings.pop("MODEL_DIR"))
    for key, value in bindings.items():
        gin.parse_config(f"{key} = {value}")
    runner.train(method=test_stages.StagedToyMethod(), model_dir=model_dir)
''')


def _stage_files(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file with its size, mtime and bytes: what a write into the directory would change."""
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def _trail(path: Path) -> list[dict]:
    """A metrics.jsonl without its timing fields."""
    return [{k: v for k, v in json.loads(line).items() if "per_second" not in k} for line in path.open()]


@pytest.mark.slow
def test_a_real_staged_sweep_trains_only_the_stages_after_the_reused_ones(tmp_path, monkeypatch, capfd):
    from kipjax.stages import STAGES_FILE
    assert sweep._STAGES_FILE == STAGES_FILE
    (tmp_path / "toy_staged_train.py").write_text(TOY_STAGED_TRAIN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(REPO / "tests"), str(REPO)]))
    monkeypatch.chdir(tmp_path)
    base = tmp_path / "base"
    subprocess.run([sys.executable, "-m", "toy_staged_train", f"--gin.MODEL_DIR={str(base)!r}"], check=True)
    reused = ("warmup", "episode_1")
    before = {stage: _stage_files(base / stage) for stage in reused}
    assert all(any(f.startswith("checkpoints/") for f in before[stage]) for stage in reused)
    capfd.readouterr()
    # beta=0.5 is the base run's own value (test_stages.configure); episode_2 is the stage that uses it.
    root = tmp_path / "sweep"
    assert sweep.main(["--grid", "task_sensitivity_combiner.beta=0.5,0.9", f"--model_dir_root={root}",
                       "--module=toy_staged_train", "--reuse_stages", str(base), "--through", "episode_1"]) == 0
    out = capfd.readouterr().out
    assert out.count("stage 1/3 warmup already done") == out.count("stage 2/3 episode_1 already done") == 2
    assert out.count("stage 3/3 episode_2 done") == 2
    for name in ("beta=0.5", "beta=0.9"):
        for stage in reused:  # the run only read them: same files, none added, none changed
            assert _stage_files(root / name / stage) == before[stage]
        assert _trail(root / name / "episode_2" / "metrics.jsonl")[-1]["step"] == 3
    for stage in reused:
        assert _stage_files(base / stage) == before[stage]
    # Starting from the reused stages ends where training straight through does.
    assert _trail(root / "beta=0.5" / "episode_2" / "metrics.jsonl") == _trail(base / "episode_2" / "metrics.jsonl")
    assert _trail(root / "beta=0.9" / "episode_2" / "metrics.jsonl") != _trail(base / "episode_2" / "metrics.jsonl")
    runs = {r["name"]: r for r in json.loads((root / "sweep.json").read_text())["runs"]}
    assert runs["beta=0.5"]["metrics"]["eval/accuracy"] == _trail(base / "episode_2" / "metrics.jsonl")[-1][
        "eval/accuracy"]
