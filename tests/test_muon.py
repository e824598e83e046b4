"""Muon under DDP: rank i % world alone runs the i-th matrix's Newton-Schulz iterations and broadcasts the result
(train/muon.py). Checked on 2 real gloo ranks against torch.optim.Muon run in full on every rank: the same
parameters and momentum buffers bit for bit, over several steps, each rank running about half the iterations."""

import os
import subprocess
import sys

SCRIPT = r"""
import pathlib, sys
import torch, torch.distributed as dist
from torch.optim import _muon
from gptlab.train import muon as sharded

dist.init_process_group("gloo")
rank = dist.get_rank()
calls = {"n": 0}
real_ns = _muon._zeropower_via_newtonschulz
def counted(*a, **k):
    calls["n"] += 1
    return real_ns(*a, **k)
torch.manual_seed(0)
shapes = [(32, 16), (16, 48), (24, 24), (8, 40), (40, 8)]
a = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
b = [torch.nn.Parameter(p.detach().clone()) for p in a]
ref = torch.optim.Muon(a, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
new = sharded.ShardedNewtonSchulzMuon(b, lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
for step in range(4):
    g = torch.Generator().manual_seed(100 + step)   # the same gradients on every rank, as after DDP's all-reduce
    for p, q in zip(a, b):
        p.grad = torch.randn(p.shape, generator=g)
        q.grad = p.grad.clone()
    ref.step()
    _muon._zeropower_via_newtonschulz = counted
    new.step()
    _muon._zeropower_via_newtonschulz = real_ns
same = all(torch.equal(p, q) for p, q in zip(a, b))
bufs = all(torch.equal(ref.state[p]["momentum_buffer"], new.state[q]["momentum_buffer"]) for p, q in zip(a, b))
# one file per rank: two ranks printing to one pipe can interleave their lines
pathlib.Path(sys.argv[1], f"rank{rank}.txt").write_text(f"rank {rank} same={same} bufs={bufs} ns_calls={calls['n']}")
dist.destroy_process_group()
"""


def test_sharded_newton_schulz_muon_matches_torch_muon_on_two_ranks(tmp_path):
    (tmp_path / "muon_check.py").write_text(SCRIPT)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            str(tmp_path / "muon_check.py"),
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [(tmp_path / f"rank{i}.txt").read_text() for i in range(2)]
    # 5 matrices x 4 steps: rank 0 owns matrices 0, 2, 4 (12 calls), rank 1 owns 1, 3 (8 calls)
    assert lines == ["rank 0 same=True bufs=True ns_calls=12", "rank 1 same=True bufs=True ns_calls=8"]
