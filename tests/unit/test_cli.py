import pandas as pd
import yaml

from groundflow.cli import ROOT, main, stage_status
from groundflow.io import rejects_frame, write_table


def test_status_prints_counts_and_grouped_reasons(tmp_path):
    method = tmp_path / "cvc"
    method.mkdir()
    pd.DataFrame({"stage": ["ingest", "grounding"], "in": [5, 3], "out": [4, 1], "rejected": [1, 2]}).to_csv(
        method / "stage_counts.tsv", sep="\t", index=False)
    write_table(rejects_frame("grounding", [("a-dog", "no box scoring >= 0.6 for 'dog' in a.jpg"),
                                            ("b-cat", "no box scoring >= 0.6 for 'cat' in b.jpg")])
                .pipe(lambda r: pd.concat([r, rejects_frame("ingest", [("line:3", "line 3: empty caption")])])),
                method / "rejects.parquet")
    text = stage_status(tmp_path)
    rows = [line.split() for line in text.splitlines()]
    assert ["grounding", "3", "1", "2"] in rows and ["ingest", "5", "4", "1"] in rows
    assert "2 x no box scoring >= # for '…' in <file>" in text
    assert "1 x line #: empty caption" in text


def test_status_without_results_fails_clearly(tmp_path, capsys):
    assert main(["status", str(tmp_path)]) == 1
    assert "no */stage_counts.tsv" in capsys.readouterr().err


def test_init_writes_the_chosen_config_once(tmp_path, capsys):
    assert main(["init", str(tmp_path / "run"), "--preset", "cvc-paper"]) == 0
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert config == yaml.safe_load((ROOT / "configs" / "cvc-paper.yaml").read_text())
