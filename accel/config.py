"""Configuration: one `[accel]` table in a TOML file, overridden by environment variables, read
once per process (get(); reload() reads again, so a file edited mid-run cannot switch half the
settings).

Keys (all optional):
  backend        "auto" | "cpu" | "opencl" | "cuda"   env ACCEL_BACKEND   default "auto"
  threads        C fallback threads, 0 = all cores   env ACCEL_THREADS   default 0
  opencl_device  substring of the OpenCL device name env ACCEL_OPENCL_DEVICE default "" (first GPU, else first);
                 "gpu" requires a GPU device
  cuda_device    CUDA device index                   env ACCEL_CUDA_DEVICE   default 0
  cuda_cubin_dir where `accel build-cuda` put the      env ACCEL_CUDA_CUBIN_DIR default "": its own
                 prebuilt CUDA modules (a module not         default, ~/.cache/accel-verify/cubin
                 found there is compiled by NVRTC; ~ is      ($XDG_CACHE_HOME if set)
                 the home directory; relative: in a file, to the file's directory, in the
                 variable, to the working directory)
  gpu_fallback   rerun on the C fallback when a GPU  env ACCEL_GPU_FALLBACK  default true
                 backend fails mid-batch (logged)
  gpu_min_batch  batches smaller than this stay on   env ACCEL_GPU_MIN_BATCH default -1: per kernel,
                 the C fallback when the configured        the crossovers measured on an H100
                 backend is a GPU (0: always the GPU)      (accel/dispatch.py, bench/RESULTS.md)
A variable set to the empty string counts as unset (the file's value, else the default, stays);
a variable that looks like a setting and is none (ACCEL_BACKNED, ACCEL_THREAD, accel_backend) is an
error naming the setting meant.
The file is $ACCEL_CONFIG, else ./accel.toml if present. Anything else in the file (another table,
a key outside [accel], a misspelt key) is an error naming the file and line; every error names
where the value came from, the file's line or the environment variable.

A program with its own TOML file (a validator: consensus/node.py) reads its configuration with
for_file() and installs the result with use(): the file's [accel] table, which stands in for
accel.toml / $ACCEL_CONFIG; without one, $ACCEL_CONFIG, else the accel.toml beside that file (not
the working directory's). ACCEL_* variables override either, as they override any file.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import stat
import threading
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

BACKENDS = ("auto", "cpu", "opencl", "cuda")
MAX_THREADS = 4096      # C fallback threads
MAX_CUDA_DEVICE = 1023  # a CUDA device index
log = logging.getLogger("accel")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AccelConfig:
    backend: str = "auto"
    threads: int = 0
    opencl_device: str = ""
    cuda_device: int = 0
    cuda_cubin_dir: str = ""
    gpu_fallback: bool = True
    gpu_min_batch: int = -1

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            want, noun = {"str": (str, "a string"), "int": (int, "an integer"), "bool": (bool, "true or false")}[f.type]
            if not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"{f.name} must be {noun}, not {value!r}")
        if self.backend not in BACKENDS:
            raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, not {self.backend!r}")
        # upper bounds: the C side takes these as C ints (a larger value was an OverflowError
        # traceback at the first batch, not a configuration error)
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), not {self.threads}")
        if self.threads > MAX_THREADS:
            raise ConfigError(f"threads must be at most {MAX_THREADS} (0 = all cores), not {self.threads}")
        if self.gpu_min_batch < -1:
            raise ConfigError(f"gpu_min_batch must be >= 0 (or -1 for the measured defaults), not {self.gpu_min_batch}")
        if self.gpu_min_batch > 2**31 - 1:
            raise ConfigError(f"gpu_min_batch must be at most {2**31 - 1}, not {self.gpu_min_batch}")
        if self.cuda_device < 0:
            raise ConfigError(f"cuda_device must be >= 0, not {self.cuda_device}")
        if self.cuda_device > MAX_CUDA_DEVICE:
            raise ConfigError(f"cuda_device must be at most {MAX_CUDA_DEVICE}, not {self.cuda_device}")
        for name in ("opencl_device", "cuda_cubin_dir"):
            value = getattr(self, name)
            if "\0" in value:
                raise ConfigError(f"{name} must not contain a NUL character")
            if value != value.strip():
                raise ConfigError(f"{name} must not begin or end with whitespace (a blank value would match or "
                                  f"name something else than meant), not {value!r}")


KEYS = {f.name: f.type for f in fields(AccelConfig)}


def _env_value(name: str, kind: str, raw: str):
    """An environment value read as strictly as its TOML spelling would be."""
    if kind == "bool":
        if raw not in ("true", "false"):
            raise ConfigError(f"{name} must be true or false, not {raw!r}")
        return raw == "true"
    if kind == "int":
        if not re.fullmatch(r"[+-]?[0-9]+", raw):  # \d took any script's digits: "٣" was 3, "１２" 12
            raise ConfigError(f"{name} must be an integer, not {raw!r}")
        return int(raw)
    return raw


SETTINGS = tuple("ACCEL_" + key.upper() for key in KEYS)
VARIABLES = SETTINGS + ("ACCEL_CONFIG",)  # what a variable that looks like one is taken for a typo of


def _misspelt(env) -> None:
    """ConfigError for a variable that looks like a setting and is none: a name within a typo of
    one (ACCEL_BACKNED, ACCEL_THREAD) or a setting's name in other case (accel_backend; a name
    in lower case within a typo of one is another program's, left alone). A misspelt key in a
    file is an error;
    a misspelt variable was ignored, and the file's or the default value ran (ACCEL_BACKNED=cpu
    left the GPU in use; ACCEL_CONFG=gpu.toml, every default). Other ACCEL_* names (the tests'
    own) are not settings."""
    for name in env:
        upper = name.upper()
        if not upper.startswith("ACCEL_") or name in VARIABLES:
            continue
        if upper in VARIABLES:  # a setting's name in other case
            meant = upper
        elif name == upper:  # within a typo of one
            meant = next(iter(difflib.get_close_matches(upper, VARIABLES, n=1, cutoff=0.85)), None)
        else:  # a lower-case name within a typo of one: another program's variable (accel_gpu_fallbacks,
            meant = None  # Prometheus' metric names in a script), not a typo of ours
        if meant:
            raise ConfigError(f"environment variable {name} is not a setting; did you mean {meant}? "
                              f"(settings: {', '.join(SETTINGS)})")


def line_of(text: str, table: str | None, key: str | None) -> int:
    """Line (1-based) of `[table]` (key None) or of `key = ...` inside `table` (None: top level),
    where `key` may also be given as a dotted key (`key.x = ...`) or a sub-table (`[table.key]`),
    and a top-level table as a dotted key (`table.key = ...`) or an inline table (`table = {`)."""
    current = None
    nested = key if table is None else f"{table}.{key}"
    name = r"\s*[\"']?{}[\"']?\s*"
    top = None if table is None or "." in table else re.compile(
        name.format(re.escape(table)) + ("=" if key is None else rf"(=\s*\{{|\.{name.format(re.escape(key))}[=.])"))
    for no, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[+\s*([^\]]+?)\s*\]+", line)
        if header:
            current = header.group(1)
            if key is None and current == table or key is not None and (current + ".").startswith(nested + "."):
                return no
            continue
        if key is not None and current == table and re.match(name.format(re.escape(key)) + "[=.]", line):
            return no
        if current is None and top is not None and top.match(line):
            return no
    return 0


MAX_FILE_BYTES = 64 << 20  # a configuration file (a validator's with 65,535 keys is about 10 MB)


def read_toml(path) -> tuple[str, dict]:
    """(text, parsed) of a TOML file; ConfigError if it cannot be read or parsed, is not a regular
    file or is larger than MAX_FILE_BYTES: a FIFO with no writer held the program at start for
    ever, and /dev/zero (or a log given by mistake) was read until memory ran out."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, to be refused
        if not stat.S_ISREG(os.fstat(fd).st_mode):  # (before fdopen: a directory's error named the fd)
            os.close(fd)
            raise ConfigError(f"cannot read config {path}: not a regular file")
        with os.fdopen(fd, "rb") as fh:
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"cannot read config {path}: larger than {MAX_FILE_BYTES >> 20} MiB")
        text = data.decode()
        return text, tomllib.loads(text)
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc


def _from_file(path, shared: bool = False) -> dict:
    """{key: (value, where)} from the [accel] table of a TOML file; shared: the other tables are
    another program's (it checks them), not errors."""
    text, data = read_toml(path)
    for name, value in data.items():
        if (name == "accel" or shared) and isinstance(value, dict):
            continue
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{path}:{line_of(text, name, None)}: [[{name}]] is an array of tables; "
                              f"write one [{name}] table")
        if isinstance(value, dict):
            raise ConfigError(f"{path}:{line_of(text, name, None)}: unknown table [{name}]; settings go in [accel]")
        raise ConfigError(f"{path}:{line_of(text, None, name)}: {name!r} is outside any table; put it under [accel]")
    out = {}
    for key, value in data.get("accel", {}).items():
        where = f"{path}:{line_of(text, 'accel', key)}"
        if key not in KEYS:
            raise ConfigError(f"{where}: unknown [accel] key {key!r}; known: {sorted(KEYS)}")
        if key == "cuda_cubin_dir" and isinstance(value, str) and value and value == value.strip() \
                and "\0" not in value:
            try:
                value = _file_path(path, value)
            except ValueError as exc:  # ~user of no such user: one line naming the file and line
                raise ConfigError(f"{where}: cuda_cubin_dir: {exc}") from None
        out[key] = (value, where)
    return out


def _file_path(path, value: str) -> str:
    """A path written in a file: ~ expanded, a relative one read from the file's own directory
    (its links resolved), as a validator's file reads [node] data_dir. A relative cuda_cubin_dir
    was taken from the working directory: a validator started by systemd (in /) looked for its
    prebuilt modules in /cubin, found none and compiled each with NVRTC (a minute a module)."""
    return str(Path(os.path.realpath(path)).parent / _home(value))


def _home(value: str) -> Path:
    """Path(value) with a leading ~ or ~user expanded; ValueError (not Path's RuntimeError, a
    traceback out of `accel node` and `accel info`) when there is no such user or home."""
    try:
        return Path(value).expanduser()
    except RuntimeError:
        raise ValueError(f"{value!r}: {value.split('/')[0]} names no user's home directory") from None


def load(path: str | os.PathLike | None = None, env: dict | None = None, shared: bool = False,
         default: str | os.PathLike = "accel.toml") -> AccelConfig:
    """Read the configuration now (get() is the cached one). shared: `path` is another program's
    TOML file; only its [accel] table is read. Without path: $ACCEL_CONFIG, else default if it
    exists."""
    env = os.environ if env is None else env
    path = path or env.get("ACCEL_CONFIG") or (default if Path(default).exists() else None)
    values = _from_file(path, shared) if path else {}
    _misspelt(env)
    for key, kind in KEYS.items():
        name = "ACCEL_" + key.upper()
        raw = env.get(name)
        if raw:
            value = _env_value(name, kind, raw)
            if key == "cuda_cubin_dir" and value.startswith("~"):
                # as in a file (a systemd Environment= line has no shell to expand it: the backend
                # looked in /~/cubin); a relative value stays the working directory's
                try:
                    value = str(_home(value))
                except ValueError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
            values[key] = (value, name)
    for key, (value, where) in values.items():  # one key at a time, so the error names its source
        try:
            AccelConfig(**{key: value})
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
    cfg = AccelConfig(**{key: value for key, (value, _) in values.items()})
    cores = os.cpu_count() or 1
    if cfg.threads > cores:
        log.warning("%s: threads = %d but this machine has %d cores; the C fallback will oversubscribe them",
                    values["threads"][1], cfg.threads, cores)
    return cfg


def for_file(path, data: dict, env: dict | None = None) -> AccelConfig:
    """The configuration of a program with its own TOML file (a validator's, parsed as data): its
    [accel] table; without one, $ACCEL_CONFIG, else the accel.toml beside the file (not of the
    working directory: `accel check --config /etc/accel/validator.toml` run from a shell elsewhere
    read another accel.toml than the node under systemd, said "ready" on the C fallback, and the
    node ran backend = "cuda"; review s23); ACCEL_* variables over either. Beside the path as
    given, a link not followed: /etc/accel/validator.toml linked into a configuration store keeps
    /etc/accel/accel.toml (the second review); a stream's (/dev/stdin) beside the file it reads."""
    if "accel" in data:
        return load(path, env, shared=True)
    beside = Path(os.path.abspath(path)).parent
    if str(beside).startswith(("/dev", "/proc")):  # a stream (--config /dev/stdin < file): its file's
        beside = Path(os.path.realpath(path)).parent  # directory, where data_dir is read from too
    return load(None, env, default=beside / "accel.toml")


_lock = threading.Lock()
_current: AccelConfig | None = None


def _after_fork_in_child() -> None:
    # a child forked while another thread held the lock (reading the config) would wait on it for ever
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def get() -> AccelConfig:
    """The process's configuration, read on first use."""
    global _current
    if _current is None:
        with _lock:
            if _current is None:
                _current = load()
    return _current


def use(cfg: AccelConfig) -> AccelConfig:
    """Make cfg the process's configuration (until reload()). Call it before the first backend is
    created: backends keep the settings they started with (accel.backends.reset() forgets them)."""
    global _current
    with _lock:
        _current = cfg
    return cfg


def reload() -> AccelConfig:
    """Read the file and the environment again; later calls use the new settings."""
    global _current
    with _lock:
        _current = load()
    return _current
