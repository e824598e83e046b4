"""Dynamic batching for `gptlab serve`: one worker thread owns the model; requests wait on a queue; the worker
takes everything waiting (up to max_batch, after waiting up to batch_wait_ms for more to arrive) and decodes it
as one KV-cached batch (`Generator.decode_together`), each row with its own max_tokens, sampling and stop
strings. Each row's text deltas are handed to its request's asyncio loop as they are produced. A row that ends
leaves the batch; the others decode on. A request that arrives while a batch runs waits for the next batch.

A row gets the tokens it would get alone (generate.py: its positions count its own tokens, padding is masked,
a seeded row samples from its own generator), so batching changes throughput, not answers.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Sequence

from gptlab.posttrain.generate import Generator, Sampling, TextStream

log = logging.getLogger("gptlab.posttrain.serve")


class Job:
    """One request's generation. Made on the request's event loop; the worker reports to it with `emit`, the
    request reads with `next()`: ("delta", text) zero or more times (only when `stream`), then ("done", tail,
    TextStream) or ("error", exception). Setting `cancelled` (the client left) drops the row at its next token."""

    def __init__(
        self, prompt_ids: Sequence[int], max_tokens: int, sampling: Sampling, stop: Sequence[str], stream: bool = False
    ):
        self.prompt_ids, self.max_tokens, self.sampling, self.stop = list(prompt_ids), max_tokens, sampling, stop
        self.stream = stream
        self.cancelled = False
        self._loop = asyncio.get_running_loop()
        self._events: asyncio.Queue = asyncio.Queue()

    def emit(self, event: tuple) -> None:
        """From the worker thread: hand an event to the request's loop."""
        try:
            self._loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the server stopped, nobody is listening
            self.cancelled = True

    async def next(self) -> tuple:
        return await self._events.get()


class Batcher:
    """The worker thread and its queue. `lock` is held while a batch is formed and decoded (hold it to pause
    generation). `batch_sizes` counts the batches decoded by their number of rows; `cancelled_rows` counts rows
    dropped because their client left."""

    def __init__(self, generator: Generator, max_batch: int, batch_wait_ms: float):
        self.generator, self.max_batch, self.batch_wait = generator, max_batch, batch_wait_ms / 1000
        self.lock = threading.Lock()
        self.batch_sizes: Counter[int] = Counter()
        self.cancelled_rows = 0
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="gptlab-serve-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        self._queue.put(job)

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def _run(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            with self.lock:
                batch, stop = self._gather(job)
                batch = [j for j in batch if not j.cancelled]
                if batch:
                    self._decode(batch)
            if stop:
                return

    def _gather(self, first: Job) -> tuple[list[Job], bool]:
        """`first` and whatever else is waiting (up to max_batch), waiting up to batch_wait for more."""
        batch, deadline = [first], time.monotonic() + self.batch_wait
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=left) if left > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return batch, True
            batch.append(job)
        return batch, False

    def _decode(self, batch: list[Job]) -> None:
        self.batch_sizes[len(batch)] += 1
        outs: list[TextStream] = [self.generator.stream(j.prompt_ids, j.max_tokens, j.sampling, j.stop) for j in batch]
        cancelled: set[int] = set()
        finished: set[int] = set()
        try:
            for events in self.generator.decode_together(outs, cancelled):
                for row, delta, ended in events:
                    if ended:
                        finished.add(row)
                        batch[row].emit(("done", delta, outs[row]))
                    elif delta and batch[row].stream:
                        batch[row].emit(("delta", delta))
                for row, job in enumerate(batch):
                    if job.cancelled and row not in cancelled and row not in finished:
                        cancelled.add(row)
                        self.cancelled_rows += 1
        except Exception as e:  # a bug must not kill the worker: fail this batch's requests
            log.exception("generation failed for a batch of %d", len(batch))
            for row, job in enumerate(batch):
                if row not in finished:
                    job.emit(("error", e))
            return
        for row, job in enumerate(batch):  # rows that decoded no token (max_tokens 0 never reaches here)
            if row not in finished and row not in cancelled:
                job.emit(("done", outs[row].finish(), outs[row]))
