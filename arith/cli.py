"""``python -m arith <command>``: every number the app shows, scriptable.

Each command takes ``--json`` (machine-readable output on stdout; field names are documented in the README) and
most take ``--bundle DIR`` (default: ``$ARITH_BUNDLE`` or the embedded ``precomputed/default``).  Progress goes
to stderr as tqdm bars.  Errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shlex
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .extensions import load_extensions
from .index import EMBEDDED_DEFAULT
from .memory import keep_freed_memory
from .merge import MERGE_METHODS, canonical_method

DEFAULT_BUNDLE = EMBEDDED_DEFAULT  # precomputed/default
COMMANDS: dict[str, tuple[Callable, Callable, str]] = {}  # name -> (add_arguments, run, help)
# the core commands (arith/commands/), registered by importing them; they import no tensor library until they run
CORE = ("arith.commands.make", "arith.commands.merge", "arith.commands.diagnose")
# commands defined next to what they drive (bundle builders, importers); these may import torch
PLUGINS = ("arith.default.build", "arith.realbuild", "arith.convert", "arith.lrsweep")


def command(name: str, help: str):
    def wrap(fn):
        COMMANDS[name] = (getattr(fn, "arguments", lambda p: None), fn, help)
        return fn
    return wrap


def arguments(adder: Callable[[argparse.ArgumentParser], None]):
    def wrap(fn):
        fn.arguments = adder
        return fn
    return wrap


# -- shared helpers ---------------------------------------------------------------------------------------------------
def as_type(check: Callable[[str], str]) -> Callable[[str], str]:
    """argparse's ``type`` from a check: the value it returns, or its ValueError as an argparse error naming the
    fault (argparse prints only its own "invalid value" for any other exception)."""
    def parse(text: str) -> str:
        try:
            return check(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    parse.__name__ = check.__name__
    return parse


def check_device(name: str) -> str:
    """A ``--device`` value this machine has: ``auto``, ``cpu``, or a torch device (``cuda``, ``cuda:1``, ``mps``)
    that torch sees here; a ValueError saying which it is not.  Checked before any work, so a run does not train or
    load for minutes and then fail on the device."""
    if name in ("auto", "cpu"):
        return name
    import torch

    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {name!r} is not a device (auto, cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: torch sees no CUDA GPU on this machine (use cpu or auto)")
        if dev.index is not None and dev.index >= count:
            have = "one CUDA GPU, cuda:0" if count == 1 else f"{count} CUDA GPUs, cuda:0 to cuda:{count - 1}"
            raise ValueError(f"--device {name}: this machine has {have}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {name}: torch sees no Apple GPU (MPS) on this machine")
    return name


method_type = as_type(canonical_method)  # a merge-method spec, as its canonical form
device_type = as_type(check_device)  # a --device this machine has


def _method_arg(p: argparse.ArgumentParser, help: str) -> None:
    """``--method NAME[:OPTION=VALUE,…]``: a merge method of ``arith.merge``'s registry, with its options."""
    known = "; ".join(m.name + (" (" + ", ".join(o.describe() for o in m.options) + ")" if m.options else "")
                      for m in MERGE_METHODS.values())
    p.add_argument("--method", default="task_arithmetic", type=method_type, metavar="NAME[:OPTION=VALUE,…]",
                   help=f"{help}; methods and options: {known}; e.g. ties:density=0.5,scope=vector")


def _bundle_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", default=os.environ.get("ARITH_BUNDLE", str(DEFAULT_BUNDLE)),
                   help="bundle directory (default: $ARITH_BUNDLE or precomputed/default)")


def _mode_arg(p: argparse.ArgumentParser, default: str = "attn") -> None:
    p.add_argument("--mode", default=default, help=f"fine-tuning mode (default {default})")


def _explorer(args, max_per_task=None):
    """The bundle's explorer: answers what its precomputed results hold without loading (or importing) torch."""
    from .explore import Explorer

    return Explorer.open(args.bundle, max_per_task=max_per_task)


def _config_arg(text: str) -> dict:
    """``--config``: inline JSON (open_clip model-config format) or the path of a JSON file."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"--config: not valid JSON ({e})") from None
    try:
        return json.loads(Path(text).read_text())
    except OSError as e:
        raise ValueError(f"--config: neither inline JSON nor a readable file ({e.strerror}: {text[:80]})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--config: {text} is not valid JSON ({e})") from None


def _bar(desc: str):
    """A progress callback ``(done, total, *_)`` drawing a tqdm bar on stderr (rate-limited like any tqdm bar)."""
    from tqdm import tqdm

    state = {}

    def update(done: int, total: int, *_):
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True,
                                mininterval=0.5)
        bar = state["bar"]
        bar.update(done - bar.n)
        if done >= total:
            bar.close()
    return update


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}"


def _table(rows: list[dict]) -> str:
    import pandas as pd

    return pd.DataFrame(rows).to_string(index=False)


def _detach_stdout() -> None:
    """Point stdout at /dev/null once writing to it has failed, so that Python's flush at exit does not fail again
    with a second traceback (the recipe of Python's ``signal`` docs for SIGPIPE)."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):  # no real file descriptor (a captured stdout): nothing is flushed at exit
        pass


def _emit(args, result: dict, text: Callable[[dict], str]) -> None:
    print(json.dumps(result, indent=1, sort_keys=True) if args.json else text(result))


def _parse_coefs(items: list[str]) -> dict[str, float]:
    coefs = {}
    for item in items or []:
        name, sep, value = item.rpartition("=")
        if not sep or not name:
            raise ValueError(f"--coef expects task=value, got {item!r}")
        if name in coefs:
            raise ValueError(f"--coef {name} is given twice ({coefs[name]:g} and {value})")
        try:
            coefs[name] = float(value)
        except ValueError:
            raise ValueError(f"--coef {item!r}: {value!r} is not a number") from None
        if not math.isfinite(coefs[name]):
            raise ValueError(f"--coef {item!r}: not a finite number")
    return coefs


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _vectors_arg(p, named_for: str = "--coef"):
    """``--vector [NAME=]FILE``; ``named_for``: the options that take a vector's name in this command."""
    p.add_argument("--vector", action="append", default=[], metavar="[NAME=]FILE",
                   help=f"extra task-vector file (validated), named NAME for {named_for}, or after its task (then it "
                        "replaces the bundle's vector of that task)")


def missing_flags(e: Exception, file: str | None = None) -> str:
    """For a file lacking metadata (:class:`arith.taskvec.MissingMetadata`), what ``validate`` takes to fill it in:
    `` (--task T, --mode M)`` for validate's own errors, or, given the ``file``, the validate command line that writes
    a copy holding it ('' for any other error)."""
    from .specs import Meta

    flags = {Meta.TASK: "--task T", Meta.MODE: "--mode M", Meta.BASE: "--assume-base"}
    keys = getattr(e, "keys", ())  # MissingMetadata's fields
    asks = [flags[k] for k in keys if k in flags] if isinstance(keys, tuple) else []
    if not asks:
        return ""
    if file is None:
        return f" ({', '.join(asks)})"
    return (f" (if it is a task vector for this bundle's base, `python -m arith validate {shlex.quote(file)} "
            f"{' '.join(asks)} --out FIXED.safetensors` writes a copy holding that metadata)")


def _load_extra(ex, files: list[str], mode: str | None = None) -> dict:
    """Task-vector files given on the command line, checked against the bundle's base (loads its tensors) and, with
    ``mode``, against it: a file of another mode would join nothing the command looks at (a view, ``full@attn``,
    takes its source mode's files and cuts them)."""
    if not files:
        return {}
    from .modes import source_of
    from .taskvec import load_task_vector

    base = getattr(ex, "bundle", ex).base  # an Explorer's bundle, or a Bundle itself (evaluate-full)
    out = {}
    for item in files:
        name, f = _named_file(item)
        try:
            tv = load_task_vector(f, base)
        except ValueError as e:  # name the file: a command may be given several
            raise ValueError((str(e) if f in str(e) else f"{f}: {e}") + missing_flags(e, f)) from None
        if mode is not None and tv.mode != source_of(mode):
            raise ValueError(f"{f}: a {tv.mode} task vector, but --mode {mode} uses {source_of(mode)} vectors "
                             f"(pass --mode {tv.mode} to use it)")
        name = name or tv.task
        if name in out:
            raise ValueError(f"--vector: two vectors named {name!r} (name one of them: --vector NAME=FILE)")
        out[name] = tv
    return out


def _named_file(item: str) -> tuple[str | None, str]:
    """``NAME=FILE`` -> (NAME, FILE); a plain path (one that exists, even with '=' in it) -> (None, path).  A name
    may hold '=' too (``lr=1e-3=lr-1e-3.safetensors``): the split is at the first '=' after which a file exists,
    else at the last one (the Export page's file names hold none)."""
    if "=" not in item or Path(item).expanduser().exists():
        return None, item
    cuts = [i for i, c in enumerate(item) if c == "=" and i > 0]
    at = next((i for i in cuts if Path(item[i + 1:]).expanduser().exists()), cuts[-1] if cuts else None)
    return (None, item) if at is None else (item[:at], item[at + 1:])


# -- entry point ------------------------------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors (an unknown flag, a bad --method) also print ``{"ok": false, "error"}``
    on stdout under ``--json``, as every other error does."""

    def error(self, message: str):
        if "--json" in _ARGV:
            print(json.dumps({"ok": False, "error": f"{self.prog}: {message}"}))
        super().error(message)


_ARGV: list[str] = []  # the arguments main() parses (tests call main(argv) without sys.argv)


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    """The CLI's parser: the core commands, and with ``plugins`` those defined next to what they drive."""
    from . import __version__

    _load(CORE)
    parser = _Parser(prog="python -m arith", description="Task Arithmetic Explorer engine")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    if plugins:
        _load(PLUGINS, optional=True)
    for name, (add, _, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)  # of the parser's class: _Parser
        add(p)
        p.add_argument("--json", action="store_true", help="print JSON on stdout")
        p.set_defaults(_parser=p)  # its own usage for an unknown flag (main), not the top level's
    return parser


def _load(modules: tuple[str, ...], optional: bool = False) -> None:
    """Import command modules (each registers its commands on import).  ``optional``: a module that is not there
    is skipped (a missing dependency *inside* one still raises)."""
    import importlib

    for mod in modules:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:
            if not (optional and e.name and mod.startswith(e.name)):
                raise


def _one_line(msg: str) -> str:
    """An error raised in a DataLoader worker arrives with the worker's traceback in its message ("Caught OSError in
    DataLoader worker process 0. Original Traceback ..."): its last line is the error itself."""
    if "Original Traceback" in msg:
        last = [line for line in msg.splitlines() if line.strip()][-1]
        return re.sub(r"^\w+(\.\w+)*: ", "", last.strip())
    return msg


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the core commands need no plugin: without them, one that the bundle's precomputed results answer (table,
    # addition, ...) runs without importing torch
    command_name = next((a for a in argv if not a.startswith("-")), None)
    _load(CORE)
    try:  # one's own modes, merge methods and tasks ($ARITH_EXTENSIONS): before the help texts list them
        load_extensions()
    except ValueError as e:
        if "--json" in argv:
            print(json.dumps({"ok": False, "error": str(e)}))
        print(f"error: {e}", file=sys.stderr)
        return 2
    _ARGV[:] = argv
    # torch's forward-mode AD scripts its own decompositions on first use and warns that torch.jit.script is
    # deprecated: torch's business, not the user's (the command-line program sets this, not the library)
    warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
    args, unknown = build_parser(plugins=command_name not in COMMANDS).parse_known_args(argv)
    if unknown:  # the subcommand's usage and name, as argparse gives for its other usage errors
        args._parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    keep_freed_memory()
    _, run, _ = COMMANDS[args.command]
    try:
        code = int(run(args) or 0)
        sys.stdout.flush()  # here, not at exit: a reader that went away is handled below
        return code
    except BrokenPipeError:  # the reader stopped reading (`| head`): nothing more to say, and nowhere to say it
        _detach_stdout()
        return 0
    except KeyboardInterrupt:  # Ctrl-C: one line, not torch's and the DataLoader's tracebacks
        if os.environ.get("ARITH_DEBUG"):
            raise
        again = (" (files already written are kept: the same command resumes)"
                 if args.command in ("build-bundle", "build-default") else "")
        print(f"\ninterrupted{again}", file=sys.stderr)
        return 130  # the shell's code for a command stopped by SIGINT
    except (ValueError, KeyError, OSError, RuntimeError) as e:  # OSError: a missing file, a directory, no permission
        # RuntimeError: torch's and open_clip's (no GPU driver, weights that cannot be downloaded, a model config
        # open_clip cannot build); $ARITH_DEBUG=1 re-raises it with its traceback, for a bug report
        if isinstance(e, RuntimeError) and os.environ.get("ARITH_DEBUG"):
            raise
        msg = _one_line(e.args[0] if isinstance(e, KeyError) and e.args else str(e))
        if isinstance(e, RuntimeError):  # torch's messages run over several lines: the first says what happened
            msg = next((line.strip() for line in msg.splitlines() if line.strip()), type(e).__name__)
            msg += " (ARITH_DEBUG=1 shows the traceback)"
        if getattr(args, "json", False):
            try:
                print(json.dumps({"ok": False, "error": msg}), flush=True)
            except OSError:  # stdout itself failed (a full disk): the message still goes to stderr
                _detach_stdout()
        print(f"error: {msg}", file=sys.stderr)
        return 2
