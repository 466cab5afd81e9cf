"""The sweep CLI: grid parsing and expansion, run names, dry-run lines, clear errors, and a real sequential
sweep through a stand-in training module (no JAX), with one run failing."""
import ast
import json
import os
import re
import shlex
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
    (["--grid", "A.b=1", "--grid", "A.b=2"], "--grid A.b is given more than once"),
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
