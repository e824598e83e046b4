"""Reading the next optimizer steps' micro-batches on a background thread while the current step computes.

`Prefetcher(make, start, depth=2, stop=None, device=None)` calls `make(step)` (the CPU (x, y) micro-batches of one
optimizer step, e.g. the pretraining loop's `SequenceSampler.batch_at` calls + id mapping) for steps start,
start+1, ... on one daemon thread, at most `depth` steps beyond the last step handed out, and `get(step)` hands
them out in step order: exactly what `make(step)` returned (the same tensor objects; pinned copies with the same
values when pinning), so training is bit-identical with and without it. An exception in `make(step)` is raised
by `get(step)` (the same exception object: type, message and the producer's traceback), after the steps before
it were handed out, as the synchronous loop would raise it. `close()` (or leaving the `with` block) stops the
thread wherever the consumer stopped (resume, preemption, error); a resumed run makes a new one at its step.
Use it as a context manager (or close it in a `finally`): the thread holds a reference to the prefetcher, so an
unclosed one is never collected (its thread idles, holding up to `depth` steps, until the process ends).

Why a thread and not worker processes: the time to hide is waiting on storage (a cold page of a memory-mapped
shard faulting in from network storage), and that wait happens inside numpy's copy of the window out of the
memmap, which runs without the GIL (numpy drops it for plain-dtype copies of more than a few hundred elements; a
training window is T+1 = 1025 tokens), as does pin_memory's copy. The Python work per step is a loop over
micro_batch x accum rows, small next to a GPU step, and the consumer mostly waits on CUDA without the GIL. A
process would add pickling or shared memory for every batch, its own copy of the sampler's state, and a second
place for errors to hide, for no gain here.

Pinning (when `device` is a CUDA device) happens on the thread too, after `torch.cuda.set_device(device)` there,
so a rank's thread does not create a context on GPU 0. `to_device` (gptlab.train.distributed) then finds the
tensors pinned: `Tensor.pin_memory()` returns an already pinned tensor itself, so its copy is no extra work.

`make` runs on the thread: it must not share unsynchronised state with the main thread while it runs (the
sampler's permutation cache is touched only by `make` during training; evaluation reads its own datasets).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable, Sequence
from typing import Any

import torch

Batch = tuple[torch.Tensor, torch.Tensor]

_POLL_S = 0.1  # how often a waiting get() checks that the thread is still alive


class Prefetcher:
    """Background producer of per-step micro-batch lists, `depth` steps ahead, handed out in step order.

        with Prefetcher(make, start=step0, depth=2, stop=total_steps, device=device) as pf:
            for step in range(step0, total_steps):
                micro_batches = pf.get(step)   # == make(step)

    make:   step -> list of (x, y) CPU tensors (any iterable; it is made a list on the thread)
    start:  the first step (a resumed run starts where its checkpoint is)
    depth:  how many steps may be ready (or being made) beyond the last step handed out; >= 1
    stop:   make is never called for step >= stop (None: no end)
    device: where the batches go; when CUDA, the tensors are pinned on the thread (pin_memory())
    join_timeout_s: how long close() waits for a `make` call in progress to return
    """

    def __init__(
        self,
        make: Callable[[int], Sequence[Batch]],
        start: int = 0,
        depth: int = 2,
        stop: int | None = None,
        device: torch.device | str | None = None,
        join_timeout_s: float = 10.0,
    ):
        if int(depth) < 1:
            raise ValueError(f"Prefetcher: depth = {depth}; expected >= 1")
        if int(start) < 0 or (stop is not None and int(stop) < int(start)):
            raise ValueError(f"Prefetcher: start = {start}, stop = {stop}; expected 0 <= start <= stop")
        self._make, self._depth = make, int(depth)
        self._stop = None if stop is None else int(stop)
        dev = None if device is None else torch.device(device)
        self._pin_device = dev if dev is not None and dev.type == "cuda" else None
        self._join_timeout_s = float(join_timeout_s)
        self._cond = threading.Condition()
        self._ready: collections.deque = collections.deque()  # made steps not yet handed out, in order
        self._next = int(start)  # the step the next get() hands out
        self._error: BaseException | None = None  # raised by make() for step self._next + len(self._ready)
        self._closed = False
        self._thread = threading.Thread(target=self._run, args=(int(start),), name="gptlab-prefetch", daemon=True)
        self._thread.start()

    # ---- producer (the thread) -----------------------------------------------------------------

    def _run(self, step: int) -> None:
        try:
            if self._pin_device is not None and self._pin_device.index is not None:
                torch.cuda.set_device(self._pin_device)
            while self._stop is None or step < self._stop:
                with self._cond:
                    while not self._closed and step >= self._next + self._depth:
                        self._cond.wait()
                    if self._closed:
                        return
                out = self._make(step)
                if not isinstance(out, list):
                    out = list(out)
                if self._pin_device is not None:
                    out = [tuple(t.pin_memory() for t in pair) for pair in out]
                with self._cond:
                    if self._closed:
                        return
                    self._ready.append(out)
                    self._cond.notify_all()
                step += 1
        except BaseException as e:  # handed to the consumer, raised in get()
            with self._cond:
                self._error = e
                self._cond.notify_all()

    # ---- consumer ------------------------------------------------------------------------------

    def get(self, step: int) -> list[Any]:
        """The micro-batches of `step` (the step after the previous get's, or `start` first): what make(step)
        returned. Raises make(step)'s exception if it raised one."""
        with self._cond:
            if self._closed:
                raise RuntimeError("Prefetcher.get: the prefetcher is closed")
            if step != self._next:
                raise ValueError(
                    f"Prefetcher.get: step {step} requested, but the next step is {self._next} "
                    "(steps are handed out in order; make a new Prefetcher to start elsewhere)"
                )
            if self._stop is not None and step >= self._stop:
                raise ValueError(f"Prefetcher.get: step {step} is at or past stop = {self._stop}")
            while not self._ready:
                if self._error is not None:
                    raise self._error
                if not self._thread.is_alive():  # cannot happen unless the thread was killed
                    raise RuntimeError(f"Prefetcher.get: the producer thread ended before step {step}")
                self._cond.wait(_POLL_S)
            out = self._ready.popleft()
            self._next += 1
            self._cond.notify_all()  # room for one more step
            return out

    def close(self) -> None:
        """Stop the thread (it finishes a make() call in progress, waiting at most join_timeout_s for it) and drop
        the steps made ahead. Idempotent."""
        with self._cond:
            self._closed = True
            self._ready.clear()
            self._cond.notify_all()
        if self._thread is not threading.current_thread():
            self._thread.join(self._join_timeout_s)

    @property
    def alive(self) -> bool:
        """Whether the producer thread is still running."""
        return self._thread.is_alive()

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
