"""Configuration: one `[accel]` table in a TOML file, overridden by environment variables.

Keys (all optional):
  backend        "auto" | "cpu" | "opencl" | "cuda"   env ACCEL_BACKEND   default "auto"
  threads        C fallback threads, 0 = all cores   env ACCEL_THREADS   default 0
  opencl_device  substring of the OpenCL device name env ACCEL_OPENCL_DEVICE default "" (first GPU, else first)
  cuda_device    CUDA device index                   env ACCEL_CUDA_DEVICE   default 0
  gpu_fallback   rerun on the C fallback when a GPU  env ACCEL_GPU_FALLBACK  default true
                 backend fails mid-batch (logged)
  gpu_min_batch  batches smaller than this stay on   env ACCEL_GPU_MIN_BATCH default -1: per kernel,
                 the C fallback when the configured        the crossovers measured on an H100
                 backend is a GPU (0: always the GPU)      (accel/dispatch.py, bench/RESULTS.md)
The file is $ACCEL_CONFIG, else ./accel.toml if present.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path

BACKENDS = ("auto", "cpu", "opencl", "cuda")


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class AccelConfig:
    backend: str = "auto"
    threads: int = 0
    opencl_device: str = ""
    cuda_device: int = 0
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
        if self.threads < 0:
            raise ConfigError(f"threads must be >= 0 (0 = all cores), not {self.threads}")
        if self.gpu_min_batch < -1:
            raise ConfigError(f"gpu_min_batch must be >= 0 (or -1 for the measured defaults), not {self.gpu_min_batch}")
        if self.cuda_device < 0:
            raise ConfigError(f"cuda_device must be >= 0, not {self.cuda_device}")


def _parse_bool(key: str, text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{key} must be true or false, not {text!r}")


def load(path: str | os.PathLike | None = None, env: dict | None = None) -> AccelConfig:
    env = os.environ if env is None else env
    path = path or env.get("ACCEL_CONFIG") or ("accel.toml" if Path("accel.toml").exists() else None)
    values: dict = {}
    if path:
        try:
            with open(path, "rb") as fh:
                table = tomllib.load(fh).get("accel", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read config {path}: {exc}") from exc
        known = {f.name for f in fields(AccelConfig)}
        unknown = set(table) - known
        if unknown:
            raise ConfigError(f"{path}: unknown [accel] keys {sorted(unknown)}; known: {sorted(known)}")
        values.update(table)
    for f in fields(AccelConfig):
        raw = env.get("ACCEL_" + f.name.upper())
        if raw is None or raw == "":
            continue
        if f.type == "bool":
            values[f.name] = _parse_bool("ACCEL_" + f.name.upper(), raw)
        elif f.type == "int":
            try:
                values[f.name] = int(raw)
            except ValueError:
                raise ConfigError(f"ACCEL_{f.name.upper()} must be an integer, not {raw!r}") from None
        else:
            values[f.name] = raw
    return AccelConfig(**values)
