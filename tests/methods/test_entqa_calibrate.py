"""The calibration command on files it would read in practice: scored links as `link --scored` writes them
and gold links as `kipjax.data.aida` writes them."""
import json

import pytest

from kipjax.methods.entqa import calibrate


def write_lines(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def test_the_command_reports_the_best_threshold_and_round_ones(tmp_path, capsys):
    gold = write_lines(tmp_path / "gold.jsonl", [
        {"id": "d1", "text": "...", "links": [[0, 4, "Varn"], [10, 16, "Tolbek"]]},
        {"id": "d2", "text": "...", "links": [[3, 7, "Arvenia"]]}])
    scored = write_lines(tmp_path / "scored.jsonl", [
        {"id": "d1", "links": [[0, 4, "Varn", 0.9], [10, 16, "Tolbek FC", 0.3], [10, 16, "Tolbek", 0.08]]},
        {"id": "d2", "links": [[3, 7, "Arvenia", 0.6], [9, 12, "Varn", 0.02]]}])
    report = calibrate.main(["--scored", scored, "--gold", gold, "--json"])
    # gold: 3 links. gamma 0.6 keeps Varn (F1 0.5); 0.3 adds Arvenia (P 1, R 2/3: 0.8); 0.08 adds Tolbek FC
    # (2/3); 0.02 adds Tolbek (P 3/4, R 1: 6/7); 0 adds the last wrong one (P 3/5, R 1: 0.75)
    assert report["threshold"] == pytest.approx(0.02) and report["f1"] == pytest.approx(6 / 7)
    assert report["f1@0.05"] == pytest.approx(6 / 7) and report["f1@0.5"] == pytest.approx(0.8)
    assert report["f1@0.01"] == pytest.approx(0.75) and report["thresholds_tried"] == 6
    assert json.loads(capsys.readouterr().out)["f1"] == pytest.approx(6 / 7)


def test_bad_lines_name_the_file_and_line(tmp_path):
    gold = write_lines(tmp_path / "gold.jsonl", [{"id": "d1", "links": []}])
    scored = write_lines(tmp_path / "scored.jsonl", [{"id": "d1", "links": [[0, 4, "Varn"]]}])
    with pytest.raises(SystemExit, match=r"scored.jsonl:1: each link must be \[start, end, title, score\]"):
        calibrate.main(["--scored", scored, "--gold", gold])
    scored = write_lines(tmp_path / "scored.jsonl", [{"id": "d9", "links": []}])
    with pytest.raises(SystemExit, match=r"\['d9'\] are not in the gold file"):
        calibrate.main(["--scored", scored, "--gold", gold])
