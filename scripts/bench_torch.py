"""Training-throughput baseline: a nanoGPT-equivalent GPT in PyTorch eager mode on the CPU.

The model is written out below, matching nanoGPT's `model.py` and decodex's default GPT: token +
position embedding, pre-LN blocks, causal self-attention through F.scaled_dot_product_attention
(is_causal=True), a 4x MLP with tanh GELU (decodex's default "gelu_new"; `--activation gelu` for
erf), final LayerNorm, LM head tied to the token embedding, biases on, dropout 0. One step is
nanoGPT `train.py`'s (gradient accumulation 1): zero_grad, forward, loss, backward,
clip_grad_norm_(1.0), optimizer.step() with torch.optim.AdamW (PyTorch's defaults: not fused).

Batches are nanoGPT's: B random windows of T+1 tokens from Tiny Shakespeare as character ids
($DECODEX_DATA/lm/tinyshakespeare/input.txt, default DECODEX_DATA=../shared/data), vocabulary =
the file's characters; random tokens when the file is missing or `--data random`.

The shape comes from a decodex TOML config (`[model]` n_layer, n_head, n_embd, block_size, dropout,
bias, activation, vocab_size; `[train]` batch_size, learning_rate, weight_decay, beta1, beta2) and/or
explicit flags, which win. Prints one JSON object: tokens_per_sec (median over the timed steps of
B*T / step time), step_ms_median, peak_rss_mb (ru_maxrss, whole process incl. the Python runtime),
threads, config, torch_version.

    python3 scripts/bench_torch.py --config configs/char.toml --iters 50 --threads 2 --json
    python3 scripts/bench_torch.py --n-layer 6 --n-head 6 --n-embd 384 --block-size 256 \\
        --batch-size 8 --dtype bf16
"""

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
import tomllib

import torch
import torch.nn as nn
import torch.nn.functional as F

# nanoGPT's shakespeare_char preset: what the flags default to when neither config nor flag says.
DEFAULTS = dict(n_layer=4, n_head=4, n_embd=128, block_size=64, batch_size=12, vocab_size=None,
                bias=True, activation="gelu_new", learning_rate=1e-3, weight_decay=0.1,
                beta1=0.9, beta2=0.99, grad_clip=1.0)


# ----------------------------------------------------------------------------- model (nanoGPT)

class CausalSelfAttention(nn.Module):
    def __init__(self, n_embd, n_head, bias):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.c_proj(y)


class MLP(nn.Module):
    def __init__(self, n_embd, bias, activation):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        # "gelu_new" is GPT-2's tanh approximation; "gelu" the exact erf form.
        self.approximate = "tanh" if activation == "gelu_new" else "none"

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate=self.approximate))


class Block(nn.Module):
    def __init__(self, n_embd, n_head, bias, activation):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, bias)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias, activation)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, vocab_size, block_size, n_layer, n_head, n_embd, bias, activation):
        super().__init__()
        self.block_size = block_size
        self.wte = nn.Embedding(vocab_size, n_embd)
        self.wpe = nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([Block(n_embd, n_head, bias, activation) for _ in range(n_layer)])
        self.ln_f = nn.LayerNorm(n_embd, bias=bias)
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        # nanoGPT's init: N(0, 0.02), residual projections scaled by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * n_layer))
            elif p.dim() >= 2:
                nn.init.normal_(p, 0.0, 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.size()
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def configure_optimizer(model, lr, weight_decay, betas):
    """decodex's rule: decay 2-D matmul weights, not biases, norms or the embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():  # the tied wte/lm_head is listed once
        is_embedding = name.startswith(("wte.", "wpe.", "lm_head."))
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas)


# ----------------------------------------------------------------------------- config and data

def read_toml(path):
    """The decodex training config; unknown tables and keys are ignored, missing ones default."""
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    model, train = doc.get("model", {}) or {}, doc.get("train", {}) or {}
    out = {}
    for key in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "activation",
                "dropout"):
        if key in model:
            out[key] = model[key]
    for key in ("batch_size", "learning_rate", "weight_decay", "beta1", "beta2", "grad_clip"):
        if key in train:
            out[key] = train[key]
    if "lr" in train and "learning_rate" not in out:
        out["learning_rate"] = train["lr"]
    if "betas" in train and isinstance(train["betas"], list) and len(train["betas"]) == 2:
        out["beta1"], out["beta2"] = train["betas"]
    return out


def resolve_config(args):
    cfg = dict(DEFAULTS)
    if args.config:
        cfg.update({k: v for k, v in read_toml(args.config).items() if v is not None})
    for key in ("n_layer", "n_head", "n_embd", "block_size", "batch_size", "vocab_size",
                "activation"):
        value = getattr(args, key)
        if value is not None:
            cfg[key] = value
    if cfg.get("dropout", 0.0):
        print(f"note: config dropout {cfg['dropout']} ignored; the benchmark runs dropout 0",
              file=sys.stderr)
    cfg.pop("dropout", None)
    if cfg["n_embd"] % cfg["n_head"] != 0:
        sys.exit(f"error: n_embd ({cfg['n_embd']}) is not divisible by n_head ({cfg['n_head']})")
    if cfg["activation"] not in ("gelu_new", "gelu"):
        sys.exit(f"error: activation {cfg['activation']!r} is not supported; use gelu_new or gelu")
    return cfg


def load_tokens(kind, vocab_size):
    """(token ids as a 1-D int64 tensor, vocab size, description)."""
    root = os.environ.get("DECODEX_DATA", "../shared/data")
    path = os.path.join(root, "lm", "tinyshakespeare", "input.txt")
    if kind != "random" and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        chars = sorted(set(text))
        if vocab_size is None or vocab_size >= len(chars):
            stoi = {ch: i for i, ch in enumerate(chars)}
            ids = torch.tensor([stoi[ch] for ch in text], dtype=torch.int64)
            return ids, vocab_size or len(chars), f"tinyshakespeare-char ({path})"
        if kind == "shakespeare":
            sys.exit(f"error: vocab_size {vocab_size} is smaller than the {len(chars)} characters "
                     f"of {path}; drop --vocab-size or use --data random")
    elif kind == "shakespeare":
        sys.exit(f"error: {path} not found; set DECODEX_DATA to the directory holding lm/")
    vocab_size = vocab_size or 65
    return torch.randint(0, vocab_size, (1_000_000,)), vocab_size, "random tokens"


def get_batch(data, batch_size, block_size):
    """nanoGPT's get_batch: B random windows, targets shifted by one."""
    ix = torch.randint(len(data) - block_size - 1, (batch_size,))
    x = torch.stack([data[i:i + block_size] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block_size] for i in ix])
    return x, y


# ----------------------------------------------------------------------------- benchmark

def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="decodex TOML training config ([model], [train] tables)")
    p.add_argument("--n-layer", dest="n_layer", type=int)
    p.add_argument("--n-head", dest="n_head", type=int)
    p.add_argument("--n-embd", dest="n_embd", type=int)
    p.add_argument("--block-size", dest="block_size", type=int, help="T (sequences use all of it)")
    p.add_argument("--batch-size", dest="batch_size", type=int, help="B")
    p.add_argument("--vocab-size", dest="vocab_size", type=int,
                   help="V (default: the data's character vocabulary)")
    p.add_argument("--activation", choices=["gelu_new", "gelu"])
    p.add_argument("--data", choices=["auto", "shakespeare", "random"], default="auto",
                   help="auto: Tiny Shakespeare chars if found, else random tokens")
    p.add_argument("--iters", type=int, default=50, help="timed steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32",
                   help="bf16 = torch.autocast('cpu', dtype=torch.bfloat16) around forward+loss")
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--json", action="store_true", help="print only the JSON object")
    args = p.parse_args()
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        sys.exit("error: --iters and --threads must be >= 1 and --warmup >= 0")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    cfg = resolve_config(args)
    data, vocab_size, data_desc = load_tokens(args.data, cfg["vocab_size"])
    cfg["vocab_size"] = vocab_size
    B, T = cfg["batch_size"], cfg["block_size"]

    model = GPT(vocab_size, T, cfg["n_layer"], cfg["n_head"], cfg["n_embd"], cfg["bias"],
                cfg["activation"])
    model.train()
    optimizer = configure_optimizer(model, cfg["learning_rate"], cfg["weight_decay"],
                                    (cfg["beta1"], cfg["beta2"]))
    n_params = sum(p.numel() for p in model.parameters())
    # Autocast covers forward and loss only; backward runs outside it, as in nanoGPT's train.py.
    autocast_enabled = args.dtype == "bf16"

    step_s, losses = [], []
    for it in range(args.warmup + args.iters):
        x, y = get_batch(data, B, T)  # batch sampling is part of nanoGPT's loop, kept out of timing
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast_enabled):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        optimizer.step()
        loss_value = loss.item()  # synchronising read, as nanoGPT's logging does
        dt = time.perf_counter() - t0
        losses.append(loss_value)
        if it >= args.warmup:
            step_s.append(dt)
        if not args.json:
            print(f"step {it:4d}: loss {loss_value:.4f}, {dt * 1000:.1f} ms"
                  + ("" if it >= args.warmup else " (warmup)"), file=sys.stderr)

    result = {
        "impl": "pytorch",
        "tokens_per_sec": statistics.median(B * T / s for s in step_s),
        "step_ms_median": statistics.median(step_s) * 1000.0,
        "step_ms_min": min(step_s) * 1000.0,  # the least disturbed step, for noisy machines
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": args.threads,
        "dtype": args.dtype,
        "iters": args.iters,
        "warmup": args.warmup,
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "config": {**cfg, "n_params": n_params, "data": data_desc},
        "torch_version": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
