"""A producer-only install (`pip install .`, no extras): a command that needs an extra ends
with one line naming it and exit 4 (a configuration problem), never a traceback.

The extra's package is hidden (None in sys.modules, as Python's own import machinery
honours), along with the project modules that had already imported it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from producer.cli.exit_codes import ExitCode
from shared.config import Settings
from shared.db.engine import create_db_engine, ensure_schema
from shared.errors import ConfigurationError
from shared.extras import REPORTS, WORKER, installed
from shared.synthetic import make_exam_set
from tests.helpers.cli import invoke_cli
from tests.helpers.seed_results import seed_results

# Project modules that import reportlab, matplotlib or python-bidi when they are loaded.
REPORT_MODULES = ("batch_pdf", "exam_pdf", "pdf_parts", "pdf_text", "charts", "batch_html")


def _uninstall(monkeypatch: pytest.MonkeyPatch, package: str) -> None:
    """Make ``package`` (and every submodule) unimportable for this test, and forget the
    project's report modules that already hold it."""
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)
    for module in REPORT_MODULES:
        monkeypatch.delitem(sys.modules, f"shared.reports.{module}", raising=False)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'results.db'}"
    engine = create_db_engine(Settings(database_url=url, _env_file=None))  # type: ignore[call-arg]
    ensure_schema(engine)
    seed_results(engine, 8, n_batches=1)
    engine.dispose()
    return url


def _one_line_refusal(code: int, out: str, extra: str, package: str) -> None:
    assert code == ExitCode.CONFIG, out
    assert "Traceback" not in out and "ModuleNotFoundError" not in out
    [line] = [line for line in out.splitlines() if line.startswith("error:")]
    assert f"the '{extra}' extra" in line and f'pip install ".[{extra}]"' in line
    assert f"no module named '{package}'" in line


@pytest.mark.parametrize(("args", "package"), [
    (["report", "batch", "1", "--format", "pdf"], "reportlab"),
    (["report", "batch", "1", "--format", "html"], "matplotlib"),
    (["report", "exam", "1.2.3.1", "--format", "pdf"], "reportlab"),
    # An install from before the PDFs drew right-to-left text (python-bidi, the reports').
    (["report", "batch", "1", "--format", "pdf"], "bidi"),
])
def test_a_report_without_the_reports_extra_names_it(
        args: list[str], package: str, database_url: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _uninstall(monkeypatch, package)
    code, out = invoke_cli([*args, "-o", str(tmp_path / "out" / "report")], monkeypatch,
                           tmp_path, database_url=database_url)
    _one_line_refusal(code, out, "reports", package)
    # What needs no extra still works: the CSV of the same batch.
    code, out = invoke_cli(["report", "batch", "1", "--format", "csv", "-o",
                            str(tmp_path / "batch.csv")], monkeypatch, tmp_path,
                           database_url=database_url)
    assert code == ExitCode.OK, out
    assert (tmp_path / "batch.csv").is_file()


def test_run_without_the_worker_extra_names_it_and_queues_nothing(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _uninstall(monkeypatch, "tensorflow")
    [image, *_] = make_exam_set(tmp_path / "exams", n_exams=1, seed=3, fmt="png")
    env = {"database_url": f"sqlite:///{tmp_path / 'r.db'}", "model": str(tiny_model_dir)}
    code, out = invoke_cli(["run", str(image)], monkeypatch, tmp_path, **env)
    _one_line_refusal(code, out, "worker", "tensorflow")
    assert '".[gpu]"' in out
    code, out = invoke_cli(["results", "--format", "json"], monkeypatch, tmp_path, **env)
    assert code == ExitCode.OK and out.strip() == "[]", out


def test_only_the_extras_own_modules_are_translated(monkeypatch: pytest.MonkeyPatch) -> None:
    # Installed, but a module inside it missing (a broken install, a path moved between
    # versions): a pip line would not fix it, so the traceback stays.
    with (pytest.raises(ModuleNotFoundError) as broken,
          installed(WORKER, needed_for="Classifying images")):
        raise ModuleNotFoundError("No module named 'keras.src.gone'", name="keras.src.gone")
    assert broken.value.name == "keras.src.gone"
    _uninstall(monkeypatch, "keras")
    with (pytest.raises(ConfigurationError, match=r"'worker' extra.*named 'keras'"),
          installed(WORKER, needed_for="Classifying images")):
        raise ModuleNotFoundError("No module named 'keras.src'", name="keras.src")
    # Another missing module is a broken install or a bug: passed on as it is.
    with (pytest.raises(ModuleNotFoundError) as unrelated,
          installed(REPORTS, needed_for="A PDF report")):
        raise ModuleNotFoundError("No module named 'shared.gone'", name="shared.gone")
    assert unrelated.value.name == "shared.gone"


def test_a_worker_without_the_worker_extra_names_it_before_forking(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its parent never imports TensorFlow (fork safety): each pool child died on the import.
    _uninstall(monkeypatch, "tensorflow")
    code, out = invoke_cli(["worker"], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 'w.db'}",
                           broker_url="redis://127.0.0.1:1/0", model=str(tiny_model_dir))
    _one_line_refusal(code, out, "worker", "tensorflow")


def test_training_without_the_worker_extra_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `mammo train` imports Keras when it starts: a ModuleNotFoundError traceback before.
    _uninstall(monkeypatch, "keras")
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    # Enough images for its checks to pass: Keras is imported once training starts.
    images = make_exam_set(tmp_path / "exams", n_exams=5, seed=3, fmt="png")
    for index, image in enumerate(images):
        folder = tmp_path / "data" / ("benign", "malignant", *["normal"] * 8)[index % 10]
        folder.mkdir(parents=True, exist_ok=True)
        image.rename(folder / image.name)
    args = ["train", str(tmp_path / "data"), "--version", "0.0.1-t", "--folds", "2"]
    code, out = invoke_cli(args, monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 't.db'}")
    _one_line_refusal(code, out, "worker", "keras")


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_train_and_evaluate_without_scikit_learn_name_the_worker_extra(
        command: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # scikit-learn (splits, metrics, the baseline) comes with the worker extra: without it
    # `mammo train` read the whole data set, then ended with a traceback and exit 1.
    _uninstall(monkeypatch, "sklearn")
    for name in [n for n in sys.modules if n == "models" or n.startswith("models.")]:
        monkeypatch.delitem(sys.modules, name)
    (tmp_path / "data" / "normal").mkdir(parents=True)
    code, out = invoke_cli([command, str(tmp_path / "data")], monkeypatch, tmp_path,
                           database_url=f"sqlite:///{tmp_path / 't.db'}")
    _one_line_refusal(code, out, "worker", "sklearn")


def test_watch_and_demo_without_the_worker_extra_name_it_before_anything_is_written(
        tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Without a broker the watcher's in-process worker classifies the files: it started,
    # queued each file, logged a traceback per chunk and the images stayed queued for ever.
    _uninstall(monkeypatch, "tensorflow")
    (tmp_path / "drop").mkdir()
    env = {"database_url": f"sqlite:///{tmp_path / 'w.db'}", "model": str(tiny_model_dir)}
    code, out = invoke_cli(["watch", str(tmp_path / "drop")], monkeypatch, tmp_path, **env)
    _one_line_refusal(code, out, "worker", "tensorflow")
    assert "`mammo watch` without MAMMO_BROKER_URL" in out
    code, out = invoke_cli(["demo", "--dir", str(tmp_path / "demo")], monkeypatch, tmp_path,
                           **env)
    _one_line_refusal(code, out, "worker", "tensorflow")
    assert not (tmp_path / "demo").exists()
