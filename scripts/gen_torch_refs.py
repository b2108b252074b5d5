#!/usr/bin/env python3
"""PyTorch references for rnn-seq2seq's GRU/LSTM cells and the label-smoothed cross-entropy,
read by tests/torch_refs.rs. CI runs no Python: the test reads only the fixtures written here.

    tests/fixtures/torch_refs/rnn_seq2seq.safetensors
        For each case (prefix `<case>/`):
        param.<name>   f32, every decodex parameter under its decodex name (PyTorch layouts:
                       Linear (out, in); cell gates GRU r, z, n and LSTM i, f, g, o)
        logits         f64 (B, T, V), the reference forward in float64
        probe          f32 (B, T, V), fixed random weights R of the scalar L = sum(logits * R)
        grad.<name>    f64, dL/dparam
    tests/fixtures/torch_refs/rnn_seq2seq.json
        the generator's versions, and per case: decodex's `RnnConfig`, the source rows, the
        decoder input rows (B, T) and the parameter names with shapes.
    tests/fixtures/torch_refs/smoothed_ce.json
        `F.cross_entropy(logits, targets, label_smoothing=eps, ignore_index=-100,
        reduction="mean")` in float64: per case the f32-representable logits (N, V), targets
        (decodex's: the pad id where PyTorch's is ignore_index), weights (0 on padding), eps,
        the loss, the unsmoothed NLL and d loss / d logits.

The recurrent cells are PyTorch's own: the encoder is one `nn.GRU`/`nn.LSTM` with
`bidirectional=True` over a packed batch (`pack_padded_sequence`, so each row's backward
direction starts at its last real token and padded positions give zeros), the decoder an
`nn.GRUCell`/`nn.LSTMCell`. Around them the script follows rnn_seq2seq.rs's documented
architecture: h0 = tanh(W [last forward state; first backward state]), c0 = 0; Bahdanau
attention from the previous state, Luong dot/general from the new one; logits =
tanh(W_o [s_t; context; embedding]) E^T + b with the target embedding E tied.

Every parameter (biases included) is drawn uniformly on [-0.8, 0.8], rounded to float32, and the
reference runs in float64 from those values, so the figures measure decodex's float32 error.

Run from the repository root (torch==2.5.1, safetensors; scripts/requirements-reference.txt):

    python3 scripts/gen_torch_refs.py
"""

import json
import pathlib
import platform

import numpy as np
import safetensors
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

ROOT = pathlib.Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "torch_refs"
SEED = 29

# The tiny model: every size distinct so that a transposed or mis-sliced matrix fails on shape.
VOCAB, EMB, ENC_H, DEC_H, ATTN = 13, 6, 5, 7, 4
PAD, BOS = 0, 1
# Sources of lengths 5, 3 and 1: padding, and a one-token source whose directions meet.
SRC = [[3, 4, 5, 6, 7], [8, 9, 10], [11]]
# Decoder inputs (start token + target), T = 4; the last row is padded.
TGT_IN = [[BOS, 5, 2, 9], [BOS, 12, 3, 4], [BOS, 6, PAD, PAD]]
# (cell, attention, share_embeddings): every cell with every attention.
CASES = [
    ("gru", "bahdanau", True),
    ("gru", "luong-dot", False),
    ("gru", "luong-general", True),
    ("lstm", "bahdanau", False),
    ("lstm", "luong-dot", True),
    ("lstm", "luong-general", False),
]
MASKED = float("-inf")


def generator():
    return {
        "script": "scripts/gen_torch_refs.py",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "safetensors": safetensors.__version__,
        "seed": SEED,
    }


def param_shapes(cell, attention, share):
    """decodex's parameter names and shapes, in RnnSeq2Seq::new's order."""
    gates = {"gru": 3, "lstm": 4}[cell]
    bahdanau = attention == "bahdanau"
    out = []
    if share:
        out.append(("shared.weight", [VOCAB, EMB]))
    else:
        out += [("encoder.embed.weight", [VOCAB, EMB]), ("decoder.embed.weight", [VOCAB, EMB])]

    def rnn_cell(name, d_in, hidden):
        return [
            (f"{name}.ih.weight", [gates * hidden, d_in]),
            (f"{name}.ih.bias", [gates * hidden]),
            (f"{name}.hh.weight", [gates * hidden, hidden]),
            (f"{name}.hh.bias", [gates * hidden]),
        ]

    out += rnn_cell("encoder.forward", EMB, ENC_H)
    out += rnn_cell("encoder.backward", EMB, ENC_H)
    out += [("decoder.init.weight", [DEC_H, 2 * ENC_H]), ("decoder.init.bias", [DEC_H])]
    out.append(("attention.memory.weight", [ATTN if bahdanau else DEC_H, 2 * ENC_H]))
    if bahdanau:
        out += [
            ("attention.query.weight", [ATTN, DEC_H]),
            ("attention.query.bias", [ATTN]),
            ("attention.v", [ATTN, 1]),
        ]
    else:
        out.append(("attention.memory.bias", [DEC_H]))
    if attention == "luong-general":
        out.append(("attention.general.weight", [DEC_H, DEC_H]))
    out += rnn_cell("decoder.cell", EMB + 2 * ENC_H if bahdanau else EMB, DEC_H)
    out += [
        ("decoder.pre_out.weight", [EMB, DEC_H + 2 * ENC_H + EMB]),
        ("decoder.pre_out.bias", [EMB]),
        ("decoder.out_bias", [VOCAB]),
    ]
    return out


def load_cell(module, p, name, suffix=""):
    """Copies decodex's `{name}.ih/hh.weight/bias` into a torch RNN module's own parameters."""
    with torch.no_grad():
        for part in ("ih", "hh"):
            getattr(module, f"weight_{part}{suffix}").copy_(p[f"{name}.{part}.weight"])
            getattr(module, f"bias_{part}{suffix}").copy_(p[f"{name}.{part}.bias"])


def reference(cell, attention, p):
    """The float64 logits (B, T, V) of decodex's RnnSeq2Seq, built on torch's RNN modules and
    differentiable with respect to every tensor of `p`."""
    rnn_cls = {"gru": nn.GRU, "lstm": nn.LSTM}[cell]
    cell_cls = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}[cell]
    bahdanau = attention == "bahdanau"
    enc = rnn_cls(EMB, ENC_H, batch_first=True, bidirectional=True).double()
    load_cell(enc, p, "encoder.forward", "_l0")
    load_cell(enc, p, "encoder.backward", "_l0_reverse")
    dec = cell_cls(EMB + 2 * ENC_H if bahdanau else EMB, DEC_H).double()
    load_cell(dec, p, "decoder.cell")
    # The modules' own parameters are leaves: their gradients are collected below under the
    # decodex names they were copied from.
    modules = {"encoder": enc, "decoder.cell": dec}

    src_table = p["shared.weight"] if "shared.weight" in p else p["encoder.embed.weight"]
    tgt_table = p["shared.weight"] if "shared.weight" in p else p["decoder.embed.weight"]
    b, s = len(SRC), max(map(len, SRC))
    lens = torch.tensor([len(r) for r in SRC])
    src = torch.tensor([r + [PAD] * (s - len(r)) for r in SRC])
    x = src_table[src]  # (B, S, E)
    packed = pack_padded_sequence(x, lens, batch_first=True, enforce_sorted=False)
    out, last = enc(packed)
    memory, _ = pad_packed_sequence(out, batch_first=True, total_length=s)  # (B, S, 2H)
    h_n = last[0] if cell == "lstm" else last  # (2, B, H): forward final, backward final
    h = torch.tanh(F.linear(torch.cat([h_n[0], h_n[1]], 1), p["decoder.init.weight"],
                            p["decoder.init.bias"]))
    c = torch.zeros_like(h)
    keys = F.linear(memory, p["attention.memory.weight"], p.get("attention.memory.bias"))
    mask = torch.zeros(b, s, dtype=torch.float64)
    mask[torch.arange(s)[None, :] >= lens[:, None]] = MASKED

    def attend(q):
        if bahdanau:
            qp = F.linear(q, p["attention.query.weight"], p["attention.query.bias"])
            scores = (torch.tanh(keys + qp[:, None, :]) @ p["attention.v"]).squeeze(2)
        else:
            if attention == "luong-general":
                q = F.linear(q, p["attention.general.weight"])
            scores = (keys @ q[:, :, None]).squeeze(2)
        w = torch.softmax(scores + mask, dim=1)
        return (w[:, None, :] @ memory).squeeze(1)  # (B, 2H)

    def step(inp, h, c):
        if cell == "lstm":
            return dec(inp, (h, c))
        return dec(inp, h), None

    tgt = torch.tensor(TGT_IN)
    logits = []
    for t in range(tgt.shape[1]):
        emb = tgt_table[tgt[:, t]]
        if bahdanau:
            ctx = attend(h)
            h, c = step(torch.cat([emb, ctx], 1), h, c)
        else:
            h, c = step(emb, h, c)
            ctx = attend(h)
        pre = torch.tanh(F.linear(torch.cat([h, ctx, emb], 1), p["decoder.pre_out.weight"],
                                  p["decoder.pre_out.bias"]))
        logits.append(pre @ tgt_table.T + p["decoder.out_bias"])
    return torch.stack(logits, 1), modules


def module_grads(modules):
    """The torch modules' gradients under decodex's names."""
    enc, dec = modules["encoder"], modules["decoder.cell"]
    out = {}
    for name, module, suffix in [
        ("encoder.forward", enc, "_l0"),
        ("encoder.backward", enc, "_l0_reverse"),
        ("decoder.cell", dec, ""),
    ]:
        for part in ("ih", "hh"):
            out[f"{name}.{part}.weight"] = getattr(module, f"weight_{part}{suffix}").grad
            out[f"{name}.{part}.bias"] = getattr(module, f"bias_{part}{suffix}").grad
    return out


def rnn_fixture(gen, info):
    tensors, cases = {}, []
    for cell, attention, share in CASES:
        case = f"{cell}-{attention}"
        shapes = param_shapes(cell, attention, share)
        p32 = {n: (torch.rand(s, generator=gen) * 1.6 - 0.8).float() for n, s in shapes}
        p = {n: v.double().requires_grad_(True) for n, v in p32.items()}
        logits, modules = reference(cell, attention, p)
        probe = torch.randn(logits.shape, generator=gen).float()
        (logits * probe.double()).sum().backward()
        grads = {n: v.grad for n, v in p.items() if v.grad is not None}
        grads.update(module_grads(modules))
        missing = [n for n, _ in shapes if grads.get(n) is None]
        assert not missing, f"{case}: no reference gradient for {missing}"
        for n, _ in shapes:
            tensors[f"{case}/param.{n}"] = p32[n].contiguous()
            tensors[f"{case}/grad.{n}"] = grads[n].contiguous()
        tensors[f"{case}/logits"] = logits.detach().contiguous()
        tensors[f"{case}/probe"] = probe.contiguous()
        cases.append({
            "name": case,
            "config": {
                "vocab_size": VOCAB, "cell": cell, "attention": attention, "emb_dim": EMB,
                "enc_hidden": ENC_H, "dec_hidden": DEC_H, "attn_dim": ATTN, "dropout": 0.0,
                "teacher_forcing": 1.0, "max_len": 16, "share_embeddings": share,
                "bos_id": BOS, "eos_id": 2, "pad_id": PAD,
            },
            "src": SRC,
            "tgt_in": TGT_IN,
            "params": [[n, s] for n, s in shapes],
        })
        print(f"{case}: {len(shapes)} parameters, |logits| max {logits.abs().max():.3f}")
    save_file(tensors, OUT / "rnn_seq2seq.safetensors")
    meta = {"generator": info, "cases": cases}
    (OUT / "rnn_seq2seq.json").write_text(json.dumps(meta, indent=1) + "\n")


def ce_fixture(gen, info):
    """F.cross_entropy with label smoothing over a batch with ignored (padding) rows."""
    n, v = 11, 17
    cases = []
    for name, eps, scale, pad_rows in [
        ("eps0", 0.0, 2.0, [3, 7]),
        ("eps0.1", 0.1, 2.0, [3, 7]),
        ("eps0.3", 0.3, 2.0, [3, 7]),
        # Logits of magnitude ~30: log-sum-exp must be computed stably.
        ("eps0.1-large", 0.1, 30.0, [0]),
        ("eps0.1-nopad", 0.1, 2.0, []),
    ]:
        logits32 = (torch.randn(n, v, generator=gen) * scale).float()
        targets = torch.randint(0, v, (n,), generator=gen)
        # decodex's rows name the pad id (0) with weight 0; PyTorch's name ignore_index.
        weights = torch.ones(n)
        weights[pad_rows] = 0.0
        targets[pad_rows] = PAD
        torch_targets = targets.clone()
        torch_targets[pad_rows] = -100
        x = logits32.double().requires_grad_(True)
        loss = F.cross_entropy(x, torch_targets, label_smoothing=eps, ignore_index=-100,
                               reduction="mean")
        loss.backward()
        nll = F.cross_entropy(x.detach(), torch_targets, ignore_index=-100, reduction="mean")
        cases.append({
            "name": name, "eps": eps, "n": n, "v": v,
            "logits": logits32.flatten().tolist(),
            "targets": targets.tolist(),
            "weights": weights.tolist(),
            "loss": loss.item(),
            "nll": nll.item(),
            "grad": x.grad.flatten().tolist(),
        })
        print(f"ce {name}: loss {loss.item():.6f} nll {nll.item():.6f}")
    meta = {"generator": info, "cases": cases}
    (OUT / "smoothed_ce.json").write_text(json.dumps(meta) + "\n")


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    info = generator()
    g = torch.Generator().manual_seed(SEED)
    rnn_fixture(g, info)
    ce_fixture(g, info)
