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
    assert bad["bundle_source"] == "missing" and "heads.safetensors" in bad["notes"][0] and not bad["ok"]
    assert not (tmp_path / "bad" / "manifest.json").exists()  # never in place: the next start tries again
    assert space.init_space(str(tmp_path / "bad"), repo="me/bundle", fetch=False)["bundle_source"] == "missing"


def test_an_interrupted_download_is_resumed_and_never_opened(bundle_dir, tmp_path, monkeypatch):
    calls = []

    def interrupted(path, repo, repo_type="dataset", revision=None):
        calls.append(Path(path))
        Path(path).mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle_dir / "manifest.json", Path(path) / "manifest.json")  # the manifest lands first
        if len(calls) == 1:
            raise OSError("connection reset")
        shutil.copytree(bundle_dir, path, dirs_exist_ok=True)

    monkeypatch.setattr(space, "fetch_bundle", interrupted)
    target = tmp_path / "bundles" / "b"
    first = space.init_space(str(target), repo="me/bundle", fetch=False)
    assert not first["ok"] and first["bundle_source"] == "missing" and not target.exists()
    second = space.init_space(str(target), repo="me/bundle", fetch=False)
    assert second["ok"] and second["bundle_source"].startswith("downloaded")
    assert calls == [tmp_path / "bundles" / "b.partial"] * 2 and not calls[0].exists()
    assert space.init_space(str(target), repo="me/bundle", fetch=False)["bundle_source"] == "present"
    assert len(calls) == 2
    junk = tmp_path / "junk"
    (junk / "old").mkdir(parents=True)
    refused = space.init_space(str(junk), repo="me/bundle", fetch=False)
    assert not refused["ok"] and "exists without a manifest.json" in refused["notes"][0] and len(calls) == 2


def test_space_init_fetches_the_base_weights_only_when_asked(bundle_dir, monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(space, "fetch_weights", lambda m, p, c=None: seen.append((m, p, c)) or f"/cache/{m}-{p}.bin")
    for k in ("ARITH_BUNDLE_REPO", "ARITH_FETCH_WEIGHTS", "ARITH_OPENCLIP_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("ARITH_BUNDLE", str(bundle_dir))
    monkeypatch.setenv("ARITH_BASE_MODEL", "ViT-B-32")
    monkeypatch.setenv("ARITH_BASE_PRETRAINED", "openai")
    assert main(["space-init", "--json"]) == 0  # the app never needs them: not fetched by default
    res = json.loads(capsys.readouterr().out)
    assert res["ok"] and res["weights"] is None and "not fetched" in " ".join(res["notes"]) and seen == []
    monkeypatch.setenv("ARITH_FETCH_WEIGHTS", "1")
    assert main(["space-init", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["weights"] == "/cache/ViT-B-32-openai.bin" and seen == [("ViT-B-32", "openai", None)]
    monkeypatch.delenv("ARITH_BASE_MODEL")
    assert space.init_space(str(bundle_dir), fetch=True)["weights"] is None  # an inline tiny base: nothing to fetch
    assert len(seen) == 1


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


def test_space_prepare_takes_tracked_files_and_keeps_the_file_format_help(tmp_path, monkeypatch):
    repo = tmp_path / "repo"
    for rel, text in {"README.md": "# Repo\n\n## Task-vector files\n\nthe format\n\n## Next\n", "Dockerfile": "FROM x\n",
                      "space/README.md": "---\nsdk: docker\n---\n", "app.py": "", "precomputed/default/m.json": "{}"}.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git = ["git", "-C", str(repo), "-c", "user.email=a@b", "-c", "user.name=a"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    (repo / "precomputed" / "vit-b-32").mkdir()  # built in step 1, not committed
    (repo / "precomputed" / "vit-b-32" / "base.safetensors").write_bytes(b"big")
    (repo / "mnist-full.safetensors").write_bytes(b"an exported vector")
    res = space.prepare_space(tmp_path / "out", repo)
    got = sorted(str(p.relative_to(tmp_path / "out")) for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == ["Dockerfile", "README.md", "app.py", "docs/README.md", "precomputed/default/m.json",
                   "space/README.md"] and res["files"] == len(got)
    import ui.common

    monkeypatch.setattr(ui.common, "ROOT", tmp_path / "out")  # as the Space's app sees it: README.md is its own
    assert ui.common.readme_section("Task-vector files") == "the format"
