"""Generation speed (new tokens/s), side by side in one process: gptlab's Generator (KV cache, batched) vs
gptlab's previous uncached loop vs Hugging Face `generate` on the same weights exported to GPT2LMHeadModel.

    python benchmarks/generate.py                                    # tiny and gpt2-small, batch 1 and 8, 256 tokens
    python benchmarks/generate.py --sizes tiny --new-tokens 256 --repeats 5

Every engine decodes greedily from the same random-init weights (`--seed`) and the same random prompts
(`--prompt-len` tokens, equal lengths, so no engine pads), producing exactly `--new-tokens` tokens per row:
the <|endoftext|> row of the output layer is zeroed, so its logit is 0 and never the argmax. The engines:

  cached    gptlab Generator: KV cache, the batch decoded together (what generate/serve/judge use now)
  uncached  the loop the Generator ran before the KV cache: the last context_length tokens through
            GPTModel.forward for every new token (batched here by stacking the equal-length prompts)
  hf        transformers GPT2LMHeadModel.generate(do_sample=False, use_cache=True) on interop.hf's export

`tiny` is the nano preset (2 layers, 64-dim, 4 heads) with context_length raised to prompt + new tokens, since
HF GPT-2 cannot generate past n_positions; `tiny-ctx64` keeps the preset's 64-token context, so gptlab's
window slides (recomputed each step past the context, as before), HF is left out. `gpt2-small` is the book's
GPT-2 small shape (context 1024). Rounds run the engines in turn and report medians, so the machine's load
weighs on each engine alike (each engine first decodes 8 tokens untimed, to warm up). Each line also says
whether the engine's tokens equal the cached engine's. `--threads` sets torch's intra-op threads (default 1:
on a shared, loaded machine two threads per process measured far slower than one).
Not a test: numbers depend on the machine. Record results in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

from gptlab.config import PRESETS, ModelConfig
from gptlab.data.tokenizer import EOT_ID
from gptlab.model import GPTModel, count_params
from gptlab.posttrain.generate import Generator, Sampling


def build(size: str, new_tokens: int, prompt_len: int, seed: int) -> GPTModel:
    preset = {"tiny": "nano", "tiny-ctx64": "nano", "gpt2-small": "gpt2-small"}[size]
    kw = dict(PRESETS[preset])
    if size == "tiny":
        kw["context_length"] = max(kw["context_length"], prompt_len + new_tokens)
    torch.manual_seed(seed)
    model = GPTModel(ModelConfig(**kw)).eval()
    with torch.no_grad():
        model.out_head.weight[EOT_ID].zero_()  # logit 0: never the argmax, so every row runs to new_tokens
    return model


def hf_model(model: GPTModel):
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptlab.interop.hf import hf_config_dict, to_hf_state_dict

    hf = GPT2LMHeadModel(GPT2Config(**hf_config_dict(model.cfg)))
    hf.load_state_dict(to_hf_state_dict(model), strict=False)  # lm_head.weight given; attn.bias buffers absent
    return hf.eval()


def run_cached(model: GPTModel, prompts: torch.Tensor, n: int) -> list[list[int]]:
    outs = Generator(model).complete_batch(prompts.tolist(), n, Sampling(0.0), batch_size=len(prompts))
    return [o.tokens for o in outs]


@torch.no_grad()
def run_uncached(model: GPTModel, prompts: torch.Tensor, n: int) -> list[list[int]]:
    idx, ctx = prompts, model.cfg.context_length
    for _ in range(n):
        nxt = model(idx[:, -ctx:])[:, -1, :].float().argmax(dim=-1, keepdim=True)
        idx = torch.cat([idx, nxt], dim=1)
    return idx[:, prompts.shape[1] :].tolist()


@torch.no_grad()
def run_hf(hf, prompts: torch.Tensor, n: int) -> list[list[int]]:
    out = hf.generate(
        prompts,
        attention_mask=torch.ones_like(prompts),
        max_new_tokens=n,
        do_sample=False,
        use_cache=True,
        pad_token_id=EOT_ID,
    )
    return out[:, prompts.shape[1] :].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", nargs="+", default=["tiny", "tiny-ctx64", "gpt2-small"], choices=["tiny", "tiny-ctx64", "gpt2-small"]
    )
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per engine")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engines", nargs="+", default=["cached", "uncached", "hf"], choices=["cached", "uncached", "hf"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    import transformers

    torch.set_num_threads(a.threads)
    print(
        f"# benchmarks/generate.py  torch {torch.__version__}  transformers {transformers.__version__}  "
        f"{platform.processor() or platform.machine()}  {torch.get_num_threads()} threads  "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(f"# greedy, {a.new_tokens} new tokens per row, prompts of {a.prompt_len} random tokens, fp32, CPU")
    rows = []
    for size in a.sizes:
        model = build(size, a.new_tokens, a.prompt_len, a.seed)
        engines = {
            "cached": lambda p, n, model=model: run_cached(model, p, n),
            "uncached": lambda p, n, model=model: run_uncached(model, p, n),
        }
        if "hf" in a.engines and size != "tiny-ctx64":
            hf = hf_model(model)
            engines["hf"] = lambda p, n, hf=hf: run_hf(hf, p, n)
        engines = {k: v for k, v in engines.items() if k in a.engines}
        for batch in a.batches:
            prompts = torch.randint(0, EOT_ID, (batch, a.prompt_len), generator=torch.Generator().manual_seed(1))
            times: dict[str, list[float]] = {k: [] for k in engines}
            tokens: dict[str, list[list[int]]] = {}
            for fn in engines.values():
                fn(prompts, min(8, a.new_tokens))
            for _ in range(a.repeats):
                for name, fn in engines.items():
                    t0 = time.perf_counter()
                    tokens[name] = fn(prompts, a.new_tokens)
                    times[name].append(time.perf_counter() - t0)
            tps = {k: batch * a.new_tokens / statistics.median(v) for k, v in times.items()}
            ref = tokens.get("cached")
            for name in engines:
                same = "-" if name == "cached" or ref is None else ("yes" if tokens[name] == ref else "NO")
                print(
                    f"{size:<11} params {count_params(model):>11,}  ctx {model.cfg.context_length:>4}  "
                    f"batch {batch:>2}  {name:<8} {tps[name]:>9,.1f} new tokens/s  "
                    f"(median of {a.repeats}: {statistics.median(times[name]):.2f} s)  same tokens as cached: {same}"
                )
            rows.append((size, batch, tps))
    print("\n| size | batch | cached tok/s | uncached tok/s | HF tok/s | cached / uncached | cached / HF |")
    print("|---|---|---|---|---|---|---|")
    for size, batch, tps in rows:

        def f(k, tps=tps):
            return f"{tps[k]:,.1f}" if k in tps else "-"

        def ratio(k, tps=tps):
            return f"{tps['cached'] / tps[k]:.2f}x" if "cached" in tps and k in tps else "-"

        print(
            f"| {size} | {batch} | {f('cached')} | {f('uncached')} | {f('hf')} | {ratio('uncached')} | {ratio('hf')} |"
        )
    print(f"# finished, load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
