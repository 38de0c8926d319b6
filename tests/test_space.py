"""Hugging Face Space deployment: front matter, Dockerfile, start-up script and ``space-init`` / ``space-prepare``.
Docker itself is not run here (no engine on the test machines); the start script runs with stand-in commands."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from arith import space
from arith.cli import main

ROOT = Path(__file__).resolve().parent.parent


def front_matter(text: str) -> dict:
    lines = text.splitlines()
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return dict((k.strip(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:end]))


def test_space_readme_front_matter():
    fm = front_matter((ROOT / "space" / "README.md").read_text())
    assert fm["sdk"] == "docker" and fm["app_port"] == "7860"
    assert fm["suggested_hardware"] in {"t4-small", "t4-medium", "l4x1", "a10g-small", "a10g-large"}
    assert fm["suggested_storage"] in {"small", "medium", "large"} and len(fm["short_description"]) <= 60
    assert (ROOT / "README.md").read_text().startswith("# Task Arithmetic Explorer\n"), "the repo README keeps its head"


def test_dockerfile():
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines() if line.strip()
             and not line.startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    assert any("--uid 1000" in line for line in lines) and "USER user" in lines
    assert "EXPOSE 7860" in lines and lines[-1] == 'CMD ["sh", "space/start.sh"]'
    i_req = next(i for i, line in enumerate(lines) if line.startswith("COPY --chown=user requirements.txt"))
    i_all = next(i for i, line in enumerate(lines) if line.startswith("COPY --chown=user . ."))
    assert i_req < next(i for i, line in enumerate(lines) if "pip install" in line) < i_all


def _fake_bin(tmp_path: Path) -> Path:
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for name in ("python", "streamlit"):
        script = bin_ / name
        script.write_text(f'#!/bin/sh\necho "{name} $*" >> "{tmp_path}/calls"\n'
                          f'echo "{name} ARITH_BUNDLE=${{ARITH_BUNDLE:-unset}} HF_HOME=$HF_HOME" >> "{tmp_path}/calls"\n')
        script.chmod(0o755)
    return bin_


@pytest.mark.parametrize("present", [False, True])
def test_start_script(tmp_path, present):
    bundle = tmp_path / "bundle"
    if present:
        bundle.mkdir()
        (bundle / "manifest.json").write_text("{}")
    env = {"PATH": f"{_fake_bin(tmp_path)}:/usr/bin:/bin", "HOME": str(tmp_path), "ARITH_BUNDLE": str(bundle)}
    proc = subprocess.run(["sh", str(ROOT / "space" / "start.sh")], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[0] == "python -m arith space-init"
    assert calls[2] == ("streamlit run app.py --server.port 7860 --server.address 0.0.0.0 "
                        "--server.enableXsrfProtection false")
    expected = str(bundle) if present else "unset"
    assert calls[3] == f"streamlit ARITH_BUNDLE={expected} HF_HOME={tmp_path}/.cache/huggingface"
    assert ("no bundle at" in proc.stderr) != present


def test_space_init_with_and_without_a_bundle(bundle_dir, tmp_path, monkeypatch):
    ok = space.init_space(str(bundle_dir), fetch=False)
    assert ok["ok"] and ok["bundle_source"] == "present"
    missing = space.init_space(str(tmp_path / "none"), fetch=False)
    assert not missing["ok"] and "ARITH_BUNDLE_REPO is not set" in missing["notes"][0]

    def fake_fetch(path, repo, repo_type="dataset", revision=None):
        assert (repo, repo_type) == ("me/bundle", "dataset")
        shutil.copytree(bundle_dir, path, dirs_exist_ok=True)
        return path

    monkeypatch.setattr(space, "fetch_bundle", fake_fetch)
    got = space.init_space(str(tmp_path / "dl"), repo="me/bundle", fetch=False)
    assert got["ok"] and got["bundle_source"] == "downloaded from dataset repo me/bundle"

    def broken_fetch(path, *a, **k):
        fake_fetch(path, "me/bundle")
        (Path(path) / "heads.safetensors").write_bytes(b"tampered")

    monkeypatch.setattr(space, "fetch_bundle", broken_fetch)
    bad = space.init_space(str(tmp_path / "bad"), repo="me/bundle", fetch=False)
    assert bad["bundle_source"] == "missing" and "heads.safetensors" in bad["notes"][0]


def test_space_init_fetches_the_base_weights_once(bundle_dir, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(space, "fetch_weights", lambda m, p, c=None: seen.append((m, p, c)) or f"/cache/{m}-{p}.bin")
    for k in ("ARITH_BUNDLE_REPO", "ARITH_FETCH_WEIGHTS", "ARITH_OPENCLIP_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARITH_BUNDLE", str(bundle_dir))
    monkeypatch.setenv("ARITH_BASE_MODEL", "ViT-B-32")
    monkeypatch.setenv("ARITH_BASE_PRETRAINED", "openai")
    assert main(["space-init", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["weights"] == "/cache/ViT-B-32-openai.bin" and seen == [("ViT-B-32", "openai", None)]
    monkeypatch.delenv("ARITH_BASE_MODEL")
    assert space.init_space(str(bundle_dir))["weights"] is None  # an inline tiny base: nothing to fetch
    monkeypatch.setenv("ARITH_FETCH_WEIGHTS", "0")
    assert main(["space-init", "--model", "ViT-B-32", "--pretrained", "openai", "--json"]) == 0
    assert "not fetched" in " ".join(json.loads(capsys.readouterr().out)["notes"]) and len(seen) == 1


def test_space_prepare(tmp_path, capsys):
    out = tmp_path / "space-repo"
    assert main(["space-prepare", "--out", str(out), "--exclude", "precomputed/", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["files"] > 20
    assert front_matter((out / "README.md").read_text())["sdk"] == "docker"
    for f in ("Dockerfile", "space/start.sh", "app.py", "arith/cli.py", "requirements.txt", ".streamlit/config.toml"):
        assert (out / f).is_file(), f
    assert not (out / "tests").exists() and not (out / ".ci").exists() and not (out / "precomputed").exists()
    assert os.access(out / "space" / "start.sh", os.X_OK)
    assert main(["space-prepare", "--out", str(out)]) == 2  # not empty: refused
