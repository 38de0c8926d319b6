"""Hosting on a Hugging Face Space (Docker SDK): start-up (``space-init``) and the Space repository (``space-prepare``).

Start-up (``space/start.sh`` runs ``python -m arith space-init`` before ``streamlit run app.py``):

1. the configured bundle (``$ARITH_BUNDLE``, e.g. ``/data/bundles/vit-b-32`` on the Space's persistent storage)
   is used when it has a manifest; otherwise, when ``$ARITH_BUNDLE_REPO`` names a Hub repository (a dataset repo by
   default, ``$ARITH_BUNDLE_REPO_TYPE``, at ``$ARITH_BUNDLE_REVISION``; a private one needs the ``HF_TOKEN``
   secret), it is downloaded once into ``<ARITH_BUNDLE>.partial``, verified (sha256 of every file) and only then
   renamed into place, so an interrupted or damaged download is never opened and the next start resumes it.  A
   bundle in place is not downloaded again: to take a new revision, remove the directory (or point
   ``$ARITH_BUNDLE`` at a new one);
2. only when ``ARITH_FETCH_WEIGHTS=1``: the base model's open_clip weights (the bundle's base spec, or
   ``$ARITH_BASE_MODEL`` / ``$ARITH_BASE_PRETRAINED``) are fetched into open_clip's cache (``$ARITH_OPENCLIP_CACHE``,
   else the Hugging Face cache under ``HF_HOME``), for ``python -m arith`` commands run on the Space that build
   models from tagged weights.  The app never needs them: θ0 and the heads come from the bundle.

Nothing here fails the start: problems are reported and the app opens on the embedded default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .cli import _emit, arguments, command

ROOT = Path(__file__).resolve().parent.parent
SPACE_DIR = ROOT / "space"
# what a Space image does not need
EXCLUDE_PREFIXES = ("tests/", ".ci/", "bench/", "assets/screenshots/", ".github/")


def _has_manifest(path: Path) -> bool:
    return (path / "manifest.json").is_file()


def fetch_bundle(path: Path, repo: str, repo_type: str = "dataset", revision: str | None = None) -> Path:
    """Download a bundle from the Hub into ``path`` (snapshot of the repository; HF_TOKEN for private ones)."""
    from huggingface_hub import snapshot_download

    path.mkdir(parents=True, exist_ok=True)
    snapshot_download(repo_id=repo, repo_type=repo_type, revision=revision, local_dir=str(path))
    return path


def install_bundle(path: Path, repo: str, repo_type: str = "dataset", revision: str | None = None) -> None:
    """Download into ``<path>.partial`` (resuming an earlier attempt), verify every file, then rename it to
    ``path``: ``path`` gets a manifest only once the whole bundle is there and checks out."""
    from .bundle import load_bundle

    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise FileExistsError(f"{path} exists without a manifest.json; remove it (or set ARITH_BUNDLE elsewhere) and "
                              "restart to download the bundle")
    partial = path.with_name(path.name + ".partial")
    fetch_bundle(partial, repo, repo_type, revision)
    load_bundle(partial)  # verifies every file's checksum; a failure leaves it to be resumed or replaced
    if path.exists():
        path.rmdir()  # empty
    os.replace(partial, path)


def fetch_weights(name: str, pretrained: str, cache_dir: str | None = None) -> str:
    """open_clip's pretrained weights for (name, tag), downloaded into its cache once; returns the file path."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(name, pretrained)
    if not cfg:
        if Path(pretrained).is_file():
            return pretrained
        raise ValueError(f"open_clip has no pretrained tag {pretrained!r} for {name!r}")
    return download_pretrained(cfg, cache_dir=cache_dir)


def init_space(bundle: str | None = None, repo: str | None = None, repo_type: str = "dataset",
               revision: str | None = None, model: str | None = None, pretrained: str | None = None,
               fetch: bool = False, cache_dir: str | None = None) -> dict:
    """Make the configured bundle and the base weights available; a report, never an exception."""
    out: dict = {"bundle": bundle, "bundle_source": None, "weights": None, "notes": []}
    path = Path(bundle) if bundle else None
    if path is None:
        out["bundle_source"] = "none"
        out["notes"].append("ARITH_BUNDLE is not set: the app opens the bundles under precomputed/")
    elif _has_manifest(path):
        out["bundle_source"] = "present"
        from .index import read_manifest, require_core_files, verify_files

        try:  # every listed file there, at its size (the app checks the hashes as it opens the bundle)
            manifest = read_manifest(path)
            require_core_files(manifest)
            verify_files(path, manifest, hashes=False)
        except Exception as e:
            out["bundle_source"] = "damaged"
            out["notes"].append(f"{path} is incomplete or damaged: {e}")
    elif repo:
        try:
            install_bundle(path, repo, repo_type, revision)
            out["bundle_source"] = f"downloaded from {repo_type} repo {repo}"
        except Exception as e:  # network, permissions, a damaged bundle: report, start anyway
            out["bundle_source"] = "missing"
            out["notes"].append(f"could not fetch the bundle from {repo}: {e}")
    else:
        out["bundle_source"] = "missing"
        out["notes"].append(f"{path} has no manifest.json and ARITH_BUNDLE_REPO is not set: build one with "
                            "`python -m arith build-bundle ... --out` on a GPU machine and upload it (README, "
                            "'Deploying on a Hugging Face Space')")
    out["ok"] = bool(path and _has_manifest(path)) and out["bundle_source"] != "damaged"
    if not (model and pretrained) and out["ok"]:
        import json

        spec = json.loads((path / "manifest.json").read_text()).get("base", {}).get("spec", {})
        model, pretrained = spec.get("name"), spec.get("pretrained")
    if not fetch:
        out["notes"].append("open_clip weights not fetched (the app does not need them; ARITH_FETCH_WEIGHTS=1 does)")
    elif model and pretrained:
        try:
            out["weights"] = fetch_weights(model, pretrained, cache_dir)
        except Exception as e:
            out["notes"].append(f"could not fetch the {model}/{pretrained} weights: {e}")
    else:
        out["notes"].append("no open_clip model with pretrained weights configured; nothing to fetch")
    return out


def _init_args(p):
    env = os.environ.get
    p.add_argument("--bundle", default=env("ARITH_BUNDLE"), help="bundle directory (default $ARITH_BUNDLE)")
    p.add_argument("--bundle-repo", default=env("ARITH_BUNDLE_REPO"), help="Hub repo to fetch it from ($ARITH_BUNDLE_REPO)")
    p.add_argument("--repo-type", default=env("ARITH_BUNDLE_REPO_TYPE", "dataset"), choices=["dataset", "model", "space"],
                   help="the Hub repo's type ($ARITH_BUNDLE_REPO_TYPE, default dataset)")
    p.add_argument("--revision", default=env("ARITH_BUNDLE_REVISION"), help="branch, tag or commit ($ARITH_BUNDLE_REVISION)")
    p.add_argument("--model", default=env("ARITH_BASE_MODEL"), help="open_clip model whose weights to cache")
    p.add_argument("--pretrained", default=env("ARITH_BASE_PRETRAINED"), help="its pretrained tag, e.g. openai")
    p.add_argument("--weights", action="store_true", default=env("ARITH_FETCH_WEIGHTS", "0") == "1",
                   help="also fetch the base's open_clip weights, for CLI commands on the Space ($ARITH_FETCH_WEIGHTS=1)")
    p.add_argument("--cache-dir", default=env("ARITH_OPENCLIP_CACHE"), help="open_clip cache (default: the HF cache)")


@command("space-init", "Space start-up: fetch and verify the configured bundle (ARITH_BUNDLE_REPO) once")
@arguments(_init_args)
def cmd_space_init(args):
    res = init_space(args.bundle, args.bundle_repo, args.repo_type, args.revision, args.model, args.pretrained,
                     fetch=args.weights, cache_dir=args.cache_dir)
    _emit(args, res, lambda r: "\n".join([f"bundle: {r['bundle']} ({r['bundle_source']})",
                                          f"weights: {r['weights'] or '-'}", *r["notes"]]))


def _listed_files(repo: Path) -> list[str]:
    """The files git tracks (as they are in the working tree), else every file outside caches and environments.
    Untracked files stay out: a real bundle built under precomputed/ (gigabytes; the Space downloads it from the
    Hub) or an exported vector in the repository root must not end up in the Space's image."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "--cached"],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        return [f for f in out if (repo / f).is_file()]
    except (OSError, subprocess.CalledProcessError):
        skip = {".git", ".venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".cache"}
        return [str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and not skip & set(p.parts)]


def prepare_space(out: str | Path, repo: str | Path = ROOT, exclude: tuple[str, ...] = ()) -> dict:
    """Assemble a Space repository in ``out``: the app, the engine, the bundles, the Dockerfile, and
    ``space/README.md`` (with the Space's YAML front matter) as its README.md.  ``exclude``: more path prefixes
    to leave out (e.g. ``precomputed/other-bundle/``)."""
    repo, out = Path(repo), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty")
    readme = repo / "space" / "README.md"
    if not readme.is_file() or not (repo / "Dockerfile").is_file():
        raise FileNotFoundError(f"{repo} lacks space/README.md or Dockerfile")
    skip = EXCLUDE_PREFIXES + tuple(exclude)
    files = [f for f in _listed_files(repo) if not f.startswith(skip) and f != "README.md"]
    for f in files:
        dst = out / f
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo / f, dst)
    shutil.copy2(readme, out / "README.md")
    if (repo / "README.md").is_file():  # the Upload page shows the file format from it (ui.common.readme_section)
        (out / "docs").mkdir(exist_ok=True)
        shutil.copy2(repo / "README.md", out / "docs" / "README.md")
        files.append("docs/README.md")
    size = sum((out / f).stat().st_size for f in files)
    return {"out": str(out), "files": len(files) + 1, "bytes": size, "readme": "space/README.md"}


def _prepare_args(p):
    p.add_argument("--out", required=True, help="an empty directory: the Space repository to push")
    p.add_argument("--exclude", action="append", default=[], metavar="PREFIX",
                   help="leave out paths starting with PREFIX (repeatable), e.g. precomputed/old-bundle/")


@command("space-prepare", "assemble the files of a Hugging Face Space (Docker) from this repository")
@arguments(_prepare_args)
def cmd_space_prepare(args):
    res = prepare_space(args.out, exclude=tuple(args.exclude))
    _emit(args, res, lambda r: f"{r['files']} files ({r['bytes'] / 2**20:.1f} MiB) in {r['out']}; push it with "
                               f"`hf upload --repo-type space OWNER/NAME {r['out']} .`")
