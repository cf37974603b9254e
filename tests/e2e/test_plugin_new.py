"""`sluice-agent plugin new` scaffolds connectors that build and pass `plugin check` as
generated, in each language."""

import os
import shutil
import subprocess
import sys

import pytest

from harness import REPO


def run(args, cwd, env=None):
    r = subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, f"{args}:\n{r.stdout}\n{r.stderr}"
    return r.stdout


@pytest.mark.parametrize("lang", ["rust", "python", "js"])
def test_scaffold_builds_and_passes_check(bins, workdir, lang):
    name = f"my-{lang}-source"
    out = run([str(bins.agent), "plugin", "new", "--lang", lang, name, "--dir", str(workdir)], workdir)
    root = workdir / name
    assert str(root) in out
    env = dict(os.environ)
    if lang == "rust":
        # Share compiled dependencies with the repository's plugins.
        env.setdefault("CARGO_TARGET_DIR", str(REPO / "plugins" / "target"))
        run(["cargo", "build", "--release", "--target", "wasm32-wasip2"], root, env)
        target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "plugins" / "target"))
        wasm = f"{target}/wasm32-wasip2/release/{name.replace('-', '_')}.wasm"
    elif lang == "python":
        componentize = shutil.which("componentize-py") or os.path.join(os.path.dirname(sys.executable), "componentize-py")
        run([componentize, "-d", "wit", "-w", "source", "componentize", "app", "-o", f"{name}.wasm"], root)
        wasm = str(root / f"{name}.wasm")
    else:
        run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error"], root)
        run(["npm", "run", "build"], root)
        wasm = str(root / f"{name}.wasm")
    report = run([str(bins.agent), "plugin", "check", wasm, "--config", '{"total": 3}'], root)
    assert "implements sluice:plugin/source@0.3.0" in report
    assert "n: Int64 not null" in report and "message: Utf8 not null" in report

    # A second scaffold with the same name is refused, and bad names are refused.
    r = subprocess.run([str(bins.agent), "plugin", "new", "--lang", lang, name, "--dir", str(workdir)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "already exists" in r.stderr
    r = subprocess.run([str(bins.agent), "plugin", "new", "--lang", lang, "Bad Name", "--dir", str(workdir)],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "lowercase" in r.stderr
