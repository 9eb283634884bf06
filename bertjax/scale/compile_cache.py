"""Opt-in persistent compilation cache: compiled programs kept on disk for the next processes.

`forward` compiles once per (input shape, config, capture set) in each process: about half a
second to a few seconds on CPU for bert-base. `enable_compilation_cache()` points JAX's persistent
compilation cache at a folder, so that a later process running the same program (same shapes,
config, capture, JAX version and machine) loads it instead of compiling. Pad inputs to a few
lengths (`bertjax.scale.buckets`) to keep the number of programs small.

The cache is trusted code: do not point it at a folder others can write to.
"""

from __future__ import annotations

import os

import jax
from jax.experimental.compilation_cache import compilation_cache


def default_cache_dir() -> str:
    """`$BERTJAX_CACHE/jax-compilation-cache`, else `~/.cache/bertjax/jax-compilation-cache`
    (the user cache folder `bertjax.checkpoints.pretrained` uses for converted models)."""
    from bertjax.checkpoints.pretrained import cache_dir

    return os.path.join(cache_dir(), "jax-compilation-cache")


def enable_compilation_cache(path: str | os.PathLike | None = None,
                             min_compile_time_s: float = 0.1) -> str:
    """Turns on JAX's persistent compilation cache in `path` and returns the folder used.

    Args:
      path: the cache folder, created when missing; `default_cache_dir()` when None.
      min_compile_time_s: programs that compile faster are not written (JAX's default, 1 s,
        would skip most bertjax programs on CPU; 0.1 s still skips eager single ops).

    Raises:
      ValueError: a negative `min_compile_time_s`, or `path` is an existing file.
    """
    if min_compile_time_s < 0:
        raise ValueError(f"min_compile_time_s must be >= 0, got {min_compile_time_s}")
    folder = os.path.abspath(os.fspath(path) if path is not None else default_cache_dir())
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"compilation cache path {folder} exists and is not a folder")
    os.makedirs(folder, exist_ok=True)
    compilation_cache.reset_cache()  # forget a folder set earlier in this process
    compilation_cache.set_cache_dir(folder)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_time_s))
    return folder
