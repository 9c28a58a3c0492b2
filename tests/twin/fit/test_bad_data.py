"""Bad data and bad fit specs: one line naming the file and row (or key), exit 2, nothing written."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from hil.cli import main
from tests.twin.fit.batches import FIT_SPEC

SIDECAR = "inputs = { t = [0.0, 48.0], F = [0.0, 0.002], T = [36.5, 36.5] }\nsample_volume = 0.002\n"
GOOD = ["t,Xv,Glc,mAb", "0,3.0e8,30.0,0.0", "24,5.1e8,28.0,15.0", "48,8.4e8,25.1,41.0"]


def _run(tmp_path: Path, csv_lines: list[str], capsys: pytest.CaptureFixture[str], sidecar: str | None = SIDECAR,
         spec: str = FIT_SPEC) -> tuple[int, str, Path]:
    (tmp_path / "spec.toml").write_text(spec, encoding="utf-8")
    data = tmp_path / "batch.csv"
    data.write_text("\n".join(csv_lines) + "\n", encoding="utf-8")
    if sidecar is not None:
        data.with_suffix(".toml").write_text(sidecar, encoding="utf-8")
    out = tmp_path / "out"
    code = main(["fit", str(tmp_path / "spec.toml"), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    return code, err, out


@pytest.mark.parametrize(
    ("lines", "row", "words"),
    [
        ([*GOOD[:2], "48,8.4e8,25.1,41.0", "24,5.1e8,28.0,15.0"], 4, "time must increase"),
        ([*GOOD[:2], "24,5.1e8,-2.0,15.0", *GOOD[3:]], 3, "negative Glc"),
        (["t,Xv,Glucose,mAb", *GOOD[1:]], 1, "unknown signal 'Glucose'"),
        ([*GOOD[:2], "24,5.1e8,abc,15.0", *GOOD[3:]], 3, "not a number"),
        ([*GOOD[:2], "24,5.1e8,28.0", *GOOD[3:]], 3, "expected 4 cells"),
    ],
)
def test_bad_csv_row_is_one_line_naming_file_and_row(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], lines: list[str], row: int, words: str
) -> None:
    code, err, out = _run(tmp_path, lines, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bioimp: error: ")
    assert f"{tmp_path / 'batch.csv'}:{row}:" in err
    assert words in err
    assert not out.exists()


def test_batch_without_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, out = _run(tmp_path, ["t,Xv,Glc,mAb", "0,,,", "24,,,"], capsys)
    assert code == 2 and err.count("\n") == 1
    assert str(tmp_path / "batch.csv") in err and "no data for any fitted signal" in err
    assert not out.exists()


def test_batch_with_one_sample_time(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = _run(tmp_path, GOOD[:2], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "batch.csv: every sample is at one time" in err


def test_missing_inputs_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err, _ = _run(tmp_path, GOOD, capsys, sidecar=None)
    assert code == 2 and err.count("\n") == 1
    assert "batch.csv (header comments): no inputs" in err


def test_header_comments_instead_of_a_sidecar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The sidecar's TOML may sit in the CSV's leading comments; a bad row there is still named."""
    header = ["# " + line for line in SIDECAR.splitlines()]
    code, err, _ = _run(tmp_path, [*header, *GOOD[:2], "24,5.1e8,-1.0,15.0"], capsys, sidecar=None)
    assert code == 2
    assert f"{tmp_path / 'batch.csv'}:5: negative Glc" in err


def test_bad_fit_spec_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = FIT_SPEC.replace("mu_m = { bounds = [0.01, 0.06] }", "mu_max = { bounds = [0.01, 0.06] }")
    code, err, out = _run(tmp_path, GOOD, capsys, spec=spec)
    assert code == 2 and err.count("\n") == 1
    assert "spec.toml: estimate.mu_max: model 'cho_fedbatch' has no parameter 'mu_max'" in err
    assert not out.exists()


def test_bad_record_sample_names_the_record_row(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A record whose sample is negative (written by an instrument fault): the row's rec is named."""
    from tests.twin.fit.batches import simulate, truth

    batch = simulate("b1", tmp_path / "run", truth(3), noise_seed=5, days=2)
    db = batch.directory / "record.sqlite"
    # Copy the record and corrupt one glucose sample in the copy (the record itself is append-only).
    copy = tmp_path / "bad" / "run"
    copy.mkdir(parents=True)
    src, dst = sqlite3.connect(db), sqlite3.connect(copy / "record.sqlite")
    src.backup(dst)
    src.close()
    for (name,) in dst.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        dst.execute(f"DROP TRIGGER {name}")
    rec = dst.execute("SELECT rec FROM samples WHERE device='Glc_assay' AND quality='good' ORDER BY rec").fetchone()[0]
    dst.execute("UPDATE samples SET value = -3.0 WHERE rec = ?", (rec,))
    dst.commit()
    dst.close()
    (tmp_path / "spec.toml").write_text(FIT_SPEC, encoding="utf-8")
    code = main(["fit", str(tmp_path / "spec.toml"), "--data", str(copy), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert f"{copy / 'record.sqlite'}: samples rec {rec} (Glc_assay): negative Glc" in err


def test_not_a_batch(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "spec.toml").write_text(FIT_SPEC, encoding="utf-8")
    empty = tmp_path / "empty"
    empty.mkdir()
    code = main(["fit", str(tmp_path / "spec.toml"), "--data", str(empty), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and f"{empty}: no batch records" in err
