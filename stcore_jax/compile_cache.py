"""JAX's persistent compilation cache, on by default: running the same recipe again compiles nothing.

XLA programs compiled once are written to a directory and loaded, instead of compiled, by any later
process that builds the same program (JAX keys an entry on the program, the compile options, the devices
and its own version, so a hit is the same executable). Where the cache goes, first match wins:

1. the user's own setting: ``JAX_COMPILATION_CACHE_DIR`` or ``jax.config.update("jax_compilation_cache_dir",
   ...)`` (``jax_enable_compilation_cache=False`` turns it off), never overridden here;
2. the ``path`` argument (the ``compilation_cache_dir`` training argument): a directory, or ``"off"``;
3. the environment variable ``STCORE_JAX_COMPILATION_CACHE``: a directory, or ``0``/``off``/``false``/``no``;
4. ``$XDG_CACHE_HOME/stcore_jax/xla`` (``~/.cache/stcore_jax/xla``).

Programs that compile in under :data:`MIN_COMPILE_SECS` are not written (JAX's default, 1 s, would leave out
the train and eval steps of small models on accelerators; writing every 10 ms program would fill the
directory with entries that cost more to read than to compile). Multi-process runs need nothing more: each
process reads the entries it finds and writes those it compiled (JAX keys an entry on its devices too, and takes
a file lock around writes), so a per-host or a shared directory both work.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)

ENV = "STCORE_JAX_COMPILATION_CACHE"
OFF = ("0", "off", "false", "no", "none", "")
MIN_COMPILE_SECS = 0.1  # jax_persistent_cache_min_compile_time_secs where the user has not set it

_set_by_us: list = [None]  # the directory this module set, so that a later call may move or drop it (not the user's)


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/stcore_jax/xla``, or ``~/.cache/stcore_jax/xla``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stcore_jax", "xla")


def resolve_cache_dir(path: str | None = None, environ=None) -> str | None:
    """The directory stcore_jax would use (``None``: off) from ``path`` (the argument; ``None``: not given),
    then ``STCORE_JAX_COMPILATION_CACHE`` in ``environ`` (default ``os.environ``), then the default. Ignores
    the user's own JAX settings (:func:`enable_compilation_cache` checks those)."""
    environ = os.environ if environ is None else environ
    value = path if path is not None else environ.get(ENV)
    if value is None:
        return default_cache_dir()
    value = os.fspath(value)
    if value.strip().lower() in OFF:
        return None
    return os.path.abspath(os.path.expanduser(value))


def user_cache_setting() -> bool:
    """Whether the user configured JAX's cache themselves (a directory not set by this module, or the cache
    turned off with ``jax_enable_compilation_cache``): then this module leaves it alone."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    return (current is not None and current != _set_by_us[0]) or not jax.config.jax_enable_compilation_cache


def enable_compilation_cache(path: str | None = None) -> str | None:
    """Turn on the persistent compilation cache (module docstring for where) and return its directory
    (``None``: off). Idempotent; called when a trainer is built and by the CLI before the model loads (the
    earlier the better: programs compiled before the cache is set are not written)."""
    import jax

    if user_cache_setting():
        return jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None
    want = resolve_cache_dir(path)
    if want == _set_by_us[0]:
        return want
    if _set_by_us[0] is not None:  # moving or dropping our own directory: JAX opened the old one once
        from jax.experimental.compilation_cache import compilation_cache

        compilation_cache.reset_cache()
    if want is not None:
        os.makedirs(want, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", want)
    _set_by_us[0] = want
    if want is not None and "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ \
            and jax.config.jax_persistent_cache_min_compile_time_secs == 1.0:  # JAX's default: not the user's
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECS)
    logger.debug("persistent compilation cache: %s", want or "off")
    return want


# -- ahead-of-time compilation of the train step's shapes -----------------------------------------


def signature(fn, inputs) -> tuple:
    """What picks a compiled program of ``fn`` for ``inputs`` (arrays or ``ShapeDtypeStruct``\\ s): ``fn``, the
    pytree structure and every leaf's shape and dtype."""
    import jax
    import numpy as np

    leaves, treedef = jax.tree_util.tree_flatten(inputs)
    return id(fn), treedef, tuple((tuple(x.shape), np.dtype(x.dtype)) for x in leaves)


def abstract_state(state):
    """Shapes, dtypes, weak types and shardings of the train ``state`` (what the step is lowered for)."""
    import jax

    return jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding, weak_type=x.weak_type), state)


def _trace_context():
    """JAX's thread-local configuration (a ``with jax.default_matmul_precision(...)`` block is per thread): a
    step lowered in another thread under another context would be another program."""
    from jax._src import config

    return config.trace_context()


class BackgroundCompiler:
    """Compiles ``jitted(state, inputs)`` for each new input geometry of ``jobs`` in a background thread while
    the loop runs the steps already compiled (XLA compiles without the GIL), in the order the loop needs them.

    ``jobs``: one item per step of the run, in the loop's order: ``None`` (nothing new at this step) or
    ``(jitted, abstract inputs)``; the generator runs in the thread. ``executable(jitted, inputs, index)``
    (the loop, at its ``index``-th step) waits until the thread has passed step ``index``, then returns the
    compiled program for ``inputs`` (after its compilation ends; a compile error is raised here), or
    ``jitted`` itself for a geometry the jobs did not reach (e.g. a later epoch's). The program is the one
    ``jitted`` would compile for the same arguments (``jitted.lower(...).compile()``), so the results are the
    same bits. ``close()`` stops at the next step and waits for a compile in flight (at most one)."""

    def __init__(self, state, jobs):
        import threading

        self._state = abstract_state(state)
        self._futures: dict = {}
        self._walked = 0  # steps of ``jobs`` the thread has passed
        self._done = self._stop = False
        self._cond = threading.Condition()
        self.compile_seconds = 0.0  # in the thread: lowering and compiling
        self.compiled = 0
        self._thread = threading.Thread(target=self._run, args=(jobs, _trace_context()), name="stcore-jax-aot")
        self._thread.start()

    def _run(self, jobs, context):
        import time
        from concurrent.futures import Future

        try:
            if _trace_context() != context:
                logger.info("ahead-of-time compilation skipped: train() runs under a thread-local JAX setting")
                return
            for job in jobs:
                if self._stop:
                    return
                if job is not None:
                    fn, inputs = job
                    key = signature(fn, inputs)
                    if key not in self._futures:
                        fut = Future()
                        with self._cond:
                            self._futures[key] = fut
                        t0 = time.perf_counter()
                        try:
                            fut.set_result(fn.lower(self._state, inputs).compile())
                        except Exception as e:  # noqa: BLE001 -- raised to the loop when it reaches this step
                            fut.set_exception(e)
                            return
                        self.compile_seconds += time.perf_counter() - t0
                        self.compiled += 1
                with self._cond:
                    self._walked += 1
                    self._cond.notify_all()
        except Exception:  # collating ahead failed: the loop collates the same rows and reports it itself
            logger.debug("ahead-of-time compilation stopped", exc_info=True)
        finally:
            with self._cond:
                self._done = True
                self._cond.notify_all()

    def executable(self, jitted, inputs, index: int):
        """``(callable for jitted(state, inputs), seconds waited for its compilation)``."""
        import time

        key, t0 = signature(jitted, inputs), time.perf_counter()
        with self._cond:
            while key not in self._futures and self._walked <= index and not self._done:
                self._cond.wait()
            fut = self._futures.get(key)
        if fut is None:
            return jitted, 0.0
        compiled = fut.result()
        return compiled, time.perf_counter() - t0

    def close(self):
        self._stop = True
        self._thread.join()
        self._futures = {}  # the executables: the loop is done with them (a later train() compiles its own)
