"""The documentation site builds as `make docs` builds it (Sphinx, every warning an error,
every cross-reference resolved), documents every public name by its public name, lists
every command-line option, and its examples run.

The build also validates the public docstrings with numpydoc (docs/conf.py: parameters
documented, a Returns section, an Examples section); the doctest examples run here on the
embedded demo data, in a temporary directory (they write example-*.zarr files).
"""

from __future__ import annotations

import argparse
import doctest
import logging
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

import rifscale

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = ["index", "api", "cli", "design", *(f"guide/{p.stem}" for p in sorted((DOCS / "guide").glob("*.md")))]
#: the public methods and properties documented beside rifscale.__all__
METHODS = {
    "Attribution": ["theta", "leverage", "if_scores", "rif_scores", "to_dataframe", "to_zarr"],
    "Session": ["attribute", "group_effects", "retrain", "close"],
    "Corpus": ["n", "d", "from_arrays"],
    "RunConfig": ["replace", "to_dict"],
    "GroupEstimate": ["size", "to_dict"],
}
PUBLIC = [*rifscale.__all__, *(f"{c}.{m}" for c, names in METHODS.items() for m in names)]
#: examples that need a cluster are code blocks, not doctests
NOT_DOCTESTS = {"ClusterError"}


def _object(name: str):
    obj = rifscale
    for part in name.split("."):
        obj = obj.__dict__[part] if isinstance(obj, type) else getattr(obj, part)  # properties as themselves
    return obj


def sphinx_build(src: Path, out: Path) -> subprocess.CompletedProcess:
    """`make docs`'s command, into ``out``."""
    return subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q", "-E",
                           str(src), str(out)], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("docs") / "html"
    done = sphinx_build(DOCS, out)
    assert done.returncode == 0, done.stderr[-6000:]
    return out


def test_the_readmes_links_to_the_guide_resolve():
    import re

    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", (ROOT / "README.md").read_text())
    local = [link for link in links if "://" not in link]
    assert {"docs/api.md", "docs/cli.md", "docs/design.md", "docs/guide/batch-jobs.md"} <= set(local)
    assert [link for link in local if not (ROOT / link).is_file()] == []


def test_make_docs_runs_this_build():
    make = (ROOT / "Makefile").read_text()
    assert "-m sphinx -b html -W --keep-going -n" in make and "docs docs/_build/html" in make
    assert "docs" in next(line for line in make.splitlines() if line.startswith(".PHONY"))


def test_the_pages_are_built(site):
    for page in PAGES:
        assert (site / f"{page}.html").is_file(), page
    design = (site / "design.html").read_text()
    assert "Error certificates" in design and "Rescaled influence function (RIF)" in design


def test_every_public_name_is_documented_by_its_public_name(site):
    api = (site / "api.html").read_text()
    missing = [name for name in PUBLIC if f'id="rifscale.{name}"' not in api]
    assert not missing, missing
    assert 'id="rifscale.corpus.' not in api and 'id="rifscale.pipeline.' not in api  # never by module path


def test_the_cli_page_has_every_command_and_option(site):
    from rifscale.cli import build_parser

    cli = (site / "cli.html").read_text()
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, command in sub.choices.items():
        assert f'id="rifscale-{name}"' in cli, name
        section = cli[cli.index(f'id="rifscale-{name}"'):]
        for action in command._actions:
            if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction):
                shown = action.option_strings[-1] if action.option_strings else action.dest
                assert shown in section, (name, shown)
    assert "--overwrite" in cli and "–overwrite" not in cli  # two hyphens, not a typographic dash


def test_the_public_docstrings_pass_the_builds_numpydoc_checks():
    """The same checks as the build's (docs/conf.py), without a build: every public name
    and method has a summary, its parameters and returns documented, and an example."""
    from numpydoc.validate import validate

    conf = runpy.run_path(str(DOCS / "conf.py"))
    checks = conf["numpydoc_validation_checks"]
    assert {"PR01", "RT01", "EX01"} <= checks
    failures = {}
    for name in PUBLIC:
        errors = [f"{code}: {msg}" for code, msg in validate(f"rifscale.{name}")["errors"] if code in checks]
        if errors:
            failures[name] = errors
    assert not failures, failures


def test_a_docstring_without_examples_fails_the_build(tmp_path):
    """The planted bug: a public docstring loses its Examples section. The -W build must
    fail naming it (numpydoc's EX01), not pass with a thinner page."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "conf.py").write_text((DOCS / "conf.py").read_text().replace(
        'Path(__file__).resolve().parent / "_ext"', f'Path({str(DOCS / "_ext")!r})'))
    (src / "thin.py").write_text('def f(x):\n    """Twice x.\n\n    Parameters\n    ----------\n    x : float\n'
                                 '        A number.\n\n    Returns\n    -------\n    float\n        2 x.\n    """\n'
                                 '    return 2 * x\n')
    (src / "index.md").write_text("# t\n\n```{eval-rst}\n.. autofunction:: thin.f\n```\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "sphinx", "-b", "html", "-W", "--keep-going", "-n", "-q", str(src),
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode != 0 and "EX01" in done.stderr and "thin.f" in done.stderr, done.stderr[-3000:]


@pytest.fixture
def quiet_logger():
    """The examples call show_progress, which adds a handler to the "rifscale" logger."""
    from rifscale import progress

    log = logging.getLogger("rifscale")
    handlers, level, bars = list(log.handlers), log.level, (progress._enabled, progress._stream)
    yield
    log.handlers[:] = handlers
    log.setLevel(level)
    progress.enable(*bars)


def test_the_examples_of_the_public_names_run(tmp_path, monkeypatch, quiet_logger):
    from threadpoolctl import threadpool_limits

    monkeypatch.chdir(tmp_path)
    finder = doctest.DocTestFinder(recurse=False)
    failures, without = [], []
    with threadpool_limits(1):  # BLAS threads on top of dask's only fight over the cores here
        for name in PUBLIC:
            tests = finder.find(_object(name), f"rifscale.{name}", globs={})
            runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
            for test in tests:
                runner.run(test, out=lambda text: failures.append(text))
            if not sum(len(t.examples) for t in tests) and name not in NOT_DOCTESTS:
                without.append(name)
    assert not failures, "\n".join(failures)[-6000:]
    assert not without, f"no doctest example: {without}"
