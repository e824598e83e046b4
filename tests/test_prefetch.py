"""Tests for gptlab.data.prefetch.Prefetcher: the same batches as the synchronous loader, in step order, from any
start; the producer's exception raised in get(); the thread stopped by close() / leaving the `with` block; never
more than `depth` steps made beyond the last get()."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from gptlab.data.loader import SequenceSampler, TokenDataset
from gptlab.data.prefetch import Prefetcher

T, MB, G = 32, 4, 16  # context, micro-batch, global batch


def _sampler(small_data) -> SequenceSampler:
    return SequenceSampler(TokenDataset(small_data, "train"), T, data_seed=7)


def _maker(sampler: SequenceSampler, rank: int = 0, world: int = 1):
    accum = G // (MB * world)
    return lambda step: [sampler.batch_at(step, m, rank, world, MB, G) for m in range(accum)]


def _assert_same(got, want):
    assert len(got) == len(want)
    for (gx, gy), (wx, wy) in zip(got, want, strict=True):
        assert gx.dtype == wx.dtype and gx.shape == wx.shape
        assert torch.equal(gx, wx) and torch.equal(gy, wy)


def _wait_until(cond, timeout=5.0):
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            return False
        time.sleep(0.005)
    return True


@pytest.mark.parametrize("start,rank,world", [(0, 0, 1), (5, 0, 1), (3, 1, 2)])
def test_same_batches_as_synchronous(small_data, start, rank, world):
    sync = _maker(_sampler(small_data), rank, world)
    steps = 8
    with Prefetcher(_maker(_sampler(small_data), rank, world), start=start, depth=2) as pf:
        for step in range(start, start + steps):
            _assert_same(pf.get(step), sync(step))


def test_crosses_epochs_and_stop(small_data):
    s = _sampler(small_data)
    first = len(s) // G  # the step that reads sample n = len(s), the first of epoch 1
    calls = []

    def make(step):
        calls.append(step)
        return _maker(s)(step)

    sync = _maker(_sampler(small_data))
    start, stop = first - 2, first + 2
    with Prefetcher(make, start=start, depth=3, stop=stop) as pf:
        for step in range(start, stop):
            _assert_same(pf.get(step), sync(step))
        with pytest.raises(ValueError, match="past stop"):
            pf.get(stop)
    assert calls == list(range(start, stop))  # each step made once, in order, never at or past stop


def test_returns_the_producers_objects():
    made = {}

    def make(step):
        made[step] = [(torch.full((2, 3), step), torch.full((2, 3), -step)) for _ in range(2)]
        return made[step]

    with Prefetcher(make, start=4) as pf:
        for step in range(4, 9):
            assert pf.get(step) is made[step]


def test_generator_is_made_on_the_thread():
    where = []

    def make(step):
        def gen():
            where.append(threading.current_thread())
            yield torch.zeros(1), torch.ones(1)

        return gen()

    with Prefetcher(make) as pf:
        out = pf.get(0)
    assert isinstance(out, list) and len(out) == 1
    assert where and where[0] is not threading.main_thread()


def test_steps_in_order_only():
    with Prefetcher(lambda step: [(torch.zeros(1), torch.zeros(1))], start=2) as pf:
        with pytest.raises(ValueError, match="next step is 2"):
            pf.get(3)
        pf.get(2)
        with pytest.raises(ValueError, match="next step is 3"):
            pf.get(2)


def test_exception_propagates_after_earlier_steps():
    class ReadError(OSError):
        pass

    def make(step):
        if step == 3:
            raise ReadError("shard /data/train_0003.bin: Input/output error")
        return [(torch.full((1,), step), torch.full((1,), step))]

    pf = Prefetcher(make, start=0, depth=2)
    try:
        for step in range(3):  # the steps before the failing one still come out, in order
            assert pf.get(step)[0][0].item() == step
        with pytest.raises(ReadError, match=r"^shard /data/train_0003\.bin: Input/output error$") as info:
            pf.get(3)
        assert any(f.name == "make" for f in info.traceback)  # the producer's traceback comes along
        with pytest.raises(ReadError):  # and again on a retry: the loop does not silently go on
            pf.get(3)
    finally:
        pf.close()
    assert not pf.alive


def test_exception_at_the_first_step():
    def make(step):
        raise RuntimeError(f"no data at step {step}")

    with Prefetcher(make, start=11) as pf:
        with pytest.raises(RuntimeError, match="no data at step 11"):
            pf.get(11)


def test_close_stops_a_thread_waiting_for_room():
    pf = Prefetcher(lambda step: [(torch.zeros(4), torch.zeros(4))], depth=2)
    pf.get(0)
    assert _wait_until(lambda: len(pf._ready) == 2)  # made ahead and now waiting for the consumer
    t0 = time.monotonic()
    pf.close()
    assert not pf.alive and time.monotonic() - t0 < 1.0
    with pytest.raises(RuntimeError, match="closed"):
        pf.get(1)
    pf.close()  # idempotent


def test_close_stops_a_thread_inside_a_slow_read():
    inside = threading.Event()

    def make(step):
        inside.set()
        time.sleep(0.3)  # a cold read on network storage
        return [(torch.zeros(1), torch.zeros(1))]

    pf = Prefetcher(make, start=100)
    assert inside.wait(5)
    t0 = time.monotonic()
    pf.close()  # waits for the read in progress to return, then the thread ends
    assert not pf.alive and time.monotonic() - t0 < 1.0


def test_context_exit_on_error_stops_the_thread():
    with pytest.raises(KeyboardInterrupt):
        with Prefetcher(lambda step: [(torch.zeros(1), torch.zeros(1))], depth=3) as pf:
            pf.get(0)
            raise KeyboardInterrupt  # preemption / an error in the training step
    assert _wait_until(lambda: not pf.alive, timeout=1.0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_look_ahead_is_bounded(depth):
    calls, lock = [], threading.Lock()

    def make(step):
        with lock:
            calls.append(step)
        return [(torch.zeros(1), torch.zeros(1))]

    start = 5
    with Prefetcher(make, start=start, depth=depth) as pf:
        # before any get: steps start .. start+depth-1 at most
        assert _wait_until(lambda: len(calls) >= depth)
        time.sleep(0.05)  # time to overrun, were it able to
        assert max(calls) == start + depth - 1
        for step in range(start, start + 6):
            pf.get(step)
            assert _wait_until(lambda step=step: max(calls) >= step + depth)  # it does run ahead ...
            time.sleep(0.05)
            with lock:
                assert max(calls) == step + depth  # ... but never more than depth steps beyond the last get
                assert calls == list(range(start, step + depth + 1))


@pytest.mark.parametrize("kwargs", [{"depth": 0}, {"start": -1}, {"start": 5, "stop": 4}])
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        Prefetcher(lambda step: [], **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinning needs CUDA")
def test_pins_for_cuda(small_data):
    sync = _maker(_sampler(small_data))
    with Prefetcher(_maker(_sampler(small_data)), start=2, device=torch.device("cuda", 0)) as pf:
        for step in range(2, 5):
            got = pf.get(step)
            assert all(x.is_pinned() and y.is_pinned() for x, y in got)
            _assert_same(got, sync(step))
            x = got[0][0]
            assert x.pin_memory().data_ptr() == x.data_ptr()  # to_device's pin_memory() copies nothing more


def test_cpu_device_does_not_pin():
    x = torch.arange(6)
    with Prefetcher(lambda step: [(x, x)], device="cpu") as pf:
        assert pf.get(0)[0][0] is x
