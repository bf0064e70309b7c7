"""report.html, `transferkit report` and `compare`, --quiet and --json: what the files and the console hold."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest

from transferkit.cli import main


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def assert_self_contained(page: Path) -> list[dict]:
    """No script, stylesheet link, frame or address outside the page; every picture a data URI. Returns the imgs."""
    html = page.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(html)
    names = {t for t, _ in parser.tags}
    assert not names & {"script", "link", "iframe", "object", "embed"}
    images = [a for t, a in parser.tags if t == "img"]
    assert images and all(a["src"].startswith(("data:image/png;base64,", "data:image/svg+xml;base64,")) for a in images)
    # "://" cannot occur inside base64, so this catches any http(s)/file address in markup, styles or text.
    assert "://" not in html and "@import" not in html and "@font-face" not in html
    return images


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "transferkit", *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_run_records_what_the_report_needs(split_run):
    results = json.loads((split_run / "results.json").read_text())
    for name, phase in results["phases"].items():
        k = len(phase["classes"])
        matrix = phase["confusion_matrix"]
        assert len(matrix) == k and all(len(row) == k for row in matrix)
        assert sum(map(sum, matrix)) == phase["test_samples"]
        # the diagonal is what evaluation counted as right
        assert sum(matrix[i][i] for i in range(k)) / phase["test_samples"] == pytest.approx(phase["test_accuracy"],
                                                                                           abs=1 / phase["test_samples"])
        assert sum(r["params"] for r in phase["layers"]) == phase["params"]["total"]
        trainable = sum(r["params"] for r in phase["layers"] if r["trainable"])
        assert trainable == phase["params"]["trainable"], name
    assert (split_run / "misclassified.png").stat().st_size > 1000


def test_split_report(split_run):
    html = (split_run / "report.html").read_text(encoding="utf-8")
    images = assert_self_contained(split_run / "report.html")
    assert len(images) == 10 and all(a["alt"] for a in images)
    for anchor in ("summary", "curves", "time", "samples", "phase-source", "phase-transfer", "phase-scratch",
                   "misclassified", "config", "environment"):
        assert f'id="{anchor}"' in html
    assert '<span class="badge complete"' in html
    assert "features.conv1 (Conv2d)" in html and "(None, 32, 26, 26)" in html and "9,568" in html
    assert "adadelta" in html and json.loads((split_run / "results.json").read_text())["environment"]["torch"] in html


def test_finetune_report(finetune_run):
    html = (finetune_run / "report.html").read_text(encoding="utf-8")
    assert len(assert_self_contained(finetune_run / "report.html")) == 7
    assert "resnet18 fine-tuned on photos" in html and "random weights" in html
    assert 'id="phase-frozen"' in html and 'id="phase-unfrozen"' in html
    assert "features.layer1.0.conv1 (Conv2d)" in html  # the backbone's layers in the parameter summary
    assert "amber" in html and "teal" in html
    assert (finetune_run / "samples.png").is_file() and (finetune_run / "misclassified.png").is_file()


def test_report_is_written_after_each_phase(tmp_path):
    """A long run can be watched: report.html shows the finished phases while the next one trains."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transferkit", "run", "mnist", "--limit", "300", "--epochs", "1",
                             "--no-scratch", "--quiet", "--out", str(out)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    first = None
    deadline = time.monotonic() + 240
    while first is None and proc.poll() is None and time.monotonic() < deadline:
        if (out / "report.html").is_file():
            first = (out / "report.html").read_text(encoding="utf-8")
        time.sleep(0.01)
    assert proc.wait(timeout=240) == 0, proc.stderr.read()
    assert first is not None, "report.html appeared only once the run had ended"
    assert 'data-phase="source"' in first and 'data-phase="transfer"' not in first
    assert '<span class="badge running"' in first
    final = (out / "report.html").read_text(encoding="utf-8")
    assert 'data-phase="transfer"' in final and '<span class="badge complete"' in final


def _old(run: Path, tmp_path: Path) -> Path:
    """The run as a transferkit without reports left it: no report, per-phase summaries or matrices, fewer PNGs."""
    old = tmp_path / run.name
    shutil.copytree(run, old)
    results = json.loads((old / "results.json").read_text())
    for phase in results["phases"].values():
        del phase["layers"], phase["confusion_matrix"]
    (old / "results.json").write_text(json.dumps(results))
    for name in ("report.html", "misclassified.png", "samples.png"):
        (old / name).unlink(missing_ok=True)
    return old


def test_report_rebuilds_a_run_made_before_reports(split_run, tmp_path, capsys):
    old = _old(split_run, tmp_path)
    main(["report", str(old)])
    assert capsys.readouterr().out.strip() == f"report: {old / 'report.html'}"
    html = (old / "report.html").read_text(encoding="utf-8")
    assert len(assert_self_contained(old / "report.html")) == 5  # curves and time bars, drawn from results.json
    assert 'id="phase-transfer"' in html and "9,568" in html  # parameter counts were always recorded
    assert "Parameter summary" not in html and 'id="misclassified"' not in html and 'id="samples"' not in html


def test_report_rebuilds_an_old_finetune_run(finetune_run, tmp_path):
    old = _old(finetune_run, tmp_path)
    main(["report", str(old)])
    images = assert_self_contained(old / "report.html")
    # the run-level matrix older finetune runs recorded stands for the last stage
    assert [a["alt"] for a in images if "confusion" in a["alt"]] == ["final model: confusion matrix (validation)"]


@pytest.mark.parametrize("setup, fragment", [
    (lambda d: None, "no such run folder"),
    (lambda d: d.mkdir(), "not a transferkit run folder (no results.json)"),
    (lambda d: (d.mkdir(), (d / "results.json").write_text("{broken")), "results.json: cannot be read"),
])
def test_report_of_a_bad_folder_is_one_line(tmp_path, setup, fragment, capsys):
    run = tmp_path / "run"
    setup(run)
    assert fragment in _error_line(["report", str(run)], capsys)


def _error_line(args: list[str], capsys) -> str:
    """The command fails as users see it: exit status 2 and one line on stderr."""
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1, err
    return err.strip()


def test_open_hands_the_page_to_the_browser(split_run, tmp_path):
    opened = tmp_path / "opened.txt"
    # $BROWSER is what webbrowser runs; this one writes down the address it was given.
    browser = f"{sys.executable} -c \"import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])\" {opened} %s"
    done = _cli("report", str(split_run), "--open", env={"BROWSER": browser})
    assert done.returncode == 0, done.stderr
    assert opened.read_text() == (split_run / "report.html").resolve().as_uri()


def test_compare(split_run, finetune_run, tmp_path, capsys):
    main(["compare", str(split_run), str(finetune_run), "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "Runs compared" in out and "mnist-run" in out and "finetune-run" in out
    assert "Configuration differences" in out and "backbone" in out
    assert out.strip().endswith(f"comparison: {tmp_path / 'compare.html'}")
    html = (tmp_path / "compare.html").read_text(encoding="utf-8")
    assert len(assert_self_contained(tmp_path / "compare.html")) == 10
    assert "resnet18" in html and "adadelta" in html


def test_compare_of_identical_settings_says_so(split_run, tmp_path, capsys):
    twin = tmp_path / "twin"
    shutil.copytree(split_run, twin)
    main(["compare", str(split_run), str(twin), "--out", str(tmp_path / "same.html")])
    out = capsys.readouterr().out
    assert "Configuration differences" not in out and "+0.00 pts" in out
    assert "The runs share every setting" in (tmp_path / "same.html").read_text(encoding="utf-8")


@pytest.mark.parametrize("args, fragment", [
    (["only-one"], "compare needs at least two run folders"),
    (["/nonexistent/a", "/nonexistent/b"], "/nonexistent/a: no such run folder"),
])
def test_compare_bad_input(args, fragment, capsys):
    assert fragment in _error_line(["compare", *args], capsys)


def test_quiet_prints_the_final_table_only(tmp_path, capsys):
    main(["run", "mnist", "--limit", "100", "--epochs", "1", "--no-scratch", "--quiet", "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "Results" in out and "transfer" in out and "0,1,2,3,4" in out
    assert "epoch 1/1" not in out and "Total params" not in out and "run folder" not in out
    assert (tmp_path / "r" / "report.html").is_file()


def test_json_prints_results_json(photos, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    out = tmp_path / "ft"
    main(["finetune", str(photos), "--backbone", "resnet18", "--weights", "none", "--image-size", "32",
          "--epochs", "1", "--batch-size", "8", "--json", "--out", str(out)])
    assert json.loads(capsys.readouterr().out) == json.loads((out / "results.json").read_text())


def test_transfer_verdict_says_faster_or_slower():
    from transferkit.reporting.console import transfer_verdict

    def phases(transfer_s, scratch_s):
        return {name: {"classes": ["a", "b"], "test_accuracy": acc, "train_seconds": s}
                for name, acc, s in (("transfer", 0.9, transfer_s), ("scratch", 0.8, scratch_s))}

    assert transfer_verdict(phases(10.0, 50.0)).endswith("time 10.0 s vs 50.0 s (5.0x faster)")
    assert "+10.00 points" in transfer_verdict(phases(10.0, 50.0))
    assert transfer_verdict(phases(7.2, 2.8)).endswith("(2.6x slower)")  # a backbone's pass on few images
    assert transfer_verdict({"transfer": phases(1, 1)["transfer"]}) is None


def test_report_says_slower_when_transfer_took_longer(split_run, tmp_path):
    from transferkit.reporting.report import write_report

    run = tmp_path / "run"
    shutil.copytree(split_run, run)
    results = json.loads((run / "results.json").read_text())
    results["phases"]["transfer"]["train_seconds"] = 4 * results["phases"]["scratch"]["train_seconds"]
    (run / "results.json").write_text(json.dumps(results))
    write_report(run)
    assert "4.0x</span> slower than scratch" in (run / "report.html").read_text()
