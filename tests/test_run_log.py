"""Progress of long loops: plain periodic lines in a log, a tqdm bar on a terminal, silence off the primary host."""
import io

import numpy as np

from kipjax import run_log
from kipjax.data.padding import fixed_size_batches


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_give_rows_rate_and_eta_and_always_the_last(monkeypatch):
    clock = iter(range(100))
    monkeypatch.setattr(run_log.time, "perf_counter", lambda: float(next(clock)))
    out = io.StringIO()
    items = list(run_log.track(range(5), total=10, desc="encode entities", rows_per_item=2, every_s=2, stream=out))
    assert items == list(range(5))
    lines = out.getvalue().splitlines()
    # One line each 2 s of the fake clock (one tick per item) and one at the end, never past the total.
    assert lines[0].startswith("encode entities: 4/10 rows (") and "rows/s, ETA " in lines[0]
    assert lines[-1].startswith("encode entities: 10/10 rows (") and "ETA" not in lines[-1]


def test_a_terminal_gets_a_bar_that_stops_at_the_total():
    out = Terminal()
    list(run_log.track(range(3), total=10, desc="retrieve", rows_per_item=4, stream=out))  # 3 batches of 4
    assert "retrieve: 100%" in out.getvalue() and "10/10" in out.getvalue()


def test_other_hosts_print_nothing(monkeypatch):
    monkeypatch.setattr(run_log.jax, "process_index", lambda: 1)
    out = io.StringIO()
    assert list(run_log.track(range(3), total=3, desc="x", stream=out)) == [0, 1, 2]
    assert out.getvalue() == ""


def test_batches_with_a_description_are_tracked(capsys):
    batches = list(fixed_size_batches(4, np.arange(10), desc="decode segments"))
    assert [len(b[0]) for b in batches] == [4, 4, 4]
    captured = capsys.readouterr()
    assert "decode segments: 10/10 rows" in captured.err and captured.out == ""  # stdout stays for JSON
