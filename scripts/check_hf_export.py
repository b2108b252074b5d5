"""Check that a decodex Hugging Face export loads in `transformers` and computes decodex's logits.

EXPORT_DIR is what decodex exports (config.json, model.safetensors, tokenizer.json). It is loaded
with GPT2LMHeadModel.from_pretrained and PreTrainedTokenizerFast(tokenizer_file=...); the tokenizer's
vocabulary size is printed and a sample sentence is encoded and decoded. REFERENCE.safetensors holds
`input_ids` (int, (B, T) or (T,)) and `logits` (float, (B, T, V) or (T, V)) computed by decodex for
the same weights; the script runs `input_ids` through the exported model in float32 and prints the
max abs and max relative difference of the logits. Exit code 1 when the max abs diff exceeds --atol
(default 1e-4), 2 on a usage or loading error, 0 otherwise.

    python3 scripts/check_hf_export.py runs/char/hf reference.safetensors
    python3 scripts/check_hf_export.py --self-test   # exercises this script on a model it builds
"""

import argparse
import os
import sys
import tempfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

SAMPLE = "First Citizen: Before we proceed any further, hear me speak."


def check_tokenizer(export_dir: str) -> None:
    path = os.path.join(export_dir, "tokenizer.json")
    if not os.path.exists(path):
        print(f"tokenizer: {path} not found, skipped")
        return
    tok = PreTrainedTokenizerFast(tokenizer_file=path)
    ids = tok.encode(SAMPLE, add_special_tokens=False)
    if not ids:
        raise ValueError(f"tokenizer {path} encoded {SAMPLE!r} to no tokens")
    decoded = tok.decode(ids)
    print(f"tokenizer: vocab size {len(tok)}, {len(ids)} ids for {SAMPLE!r}: {ids[:12]}"
          f"{' ...' if len(ids) > 12 else ''}")
    print(f"tokenizer: decodes back to {decoded!r}"
          + ("" if decoded == SAMPLE else "  (differs from the input)"))


def load_reference(reference: str) -> dict:
    if not os.path.isfile(reference):
        raise FileNotFoundError(f"reference {reference} not found")
    try:
        ref = load_file(reference)
    except SafetensorError as e:
        raise ValueError(f"{reference} is not a readable safetensors file ({e})") from e
    for key in ("input_ids", "logits"):
        if key not in ref:
            raise KeyError(f"{reference} has no tensor {key!r} (it has {sorted(ref)})")
    return ref


def compare(export_dir: str, reference: str, atol: float) -> bool:
    ref = load_reference(reference)  # before the model, so a bad path fails fast
    if not os.path.isfile(os.path.join(export_dir, "config.json")):
        raise FileNotFoundError(f"{export_dir} is not a directory holding config.json; pass the "
                                "directory decodex exported to")
    # local_files_only: a local directory, never a Hub repository id.
    model = GPT2LMHeadModel.from_pretrained(export_dir, torch_dtype=torch.float32,
                                            local_files_only=True)
    model.eval()
    cfg = model.config
    print(f"model: {export_dir}: n_layer {cfg.n_layer}, n_head {cfg.n_head}, n_embd {cfg.n_embd}, "
          f"n_positions {cfg.n_positions}, vocab {cfg.vocab_size}, "
          f"activation {cfg.activation_function}, {sum(p.numel() for p in model.parameters())} params")
    check_tokenizer(export_dir)

    input_ids = ref["input_ids"].long()
    expected = ref["logits"].float()
    if input_ids.dim() == 1:  # (T,) -> (1, T)
        input_ids, expected = input_ids.unsqueeze(0), expected.reshape(1, *expected.shape[-2:])
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits.float()  # (B, T, V)
    if logits.shape != expected.shape:
        raise ValueError(f"logits shape {tuple(logits.shape)} from transformers differs from the "
                         f"reference's {tuple(expected.shape)}")
    diff = (logits - expected).abs()
    max_abs = diff.max().item()
    max_rel = (diff / expected.abs().clamp_min(1e-6)).max().item()
    ok = max_abs <= atol
    print(f"logits {tuple(logits.shape)}: max abs diff {max_abs:.3e}, max rel diff {max_rel:.3e} "
          f"-> {'OK' if ok else 'MISMATCH'} (atol {atol:g})")
    return ok


def self_test(atol: float) -> bool:
    """Build a tiny GPT-2 with transformers, save it like an export, compute a reference in Python,
    and check that a matching reference passes and a perturbed one fails."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=50, n_positions=16, n_embd=32, n_layer=2, n_head=4,
                        activation_function="gelu_new", resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
    model = GPT2LMHeadModel(config).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_dir = os.path.join(tmp, "hf")
        model.save_pretrained(export_dir, safe_serialization=True)
        # A character-level tokenizer.json, like the one decodex writes for char models.
        chars = sorted(set(SAMPLE))
        tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token=chars[0]))
        tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
        tok.decoder = decoders.Fuse()
        tok.save(os.path.join(export_dir, "tokenizer.json"))

        input_ids = torch.randint(0, config.vocab_size, (2, 16))
        with torch.no_grad():
            logits = model(input_ids=input_ids).logits
        good = os.path.join(tmp, "good.safetensors")
        bad = os.path.join(tmp, "bad.safetensors")
        save_file({"input_ids": input_ids, "logits": logits.contiguous()}, good)
        save_file({"input_ids": input_ids, "logits": (logits + 1e-3).contiguous()}, bad)
        print("self-test: matching reference")
        passed = compare(export_dir, good, atol)
        print("self-test: reference off by 1e-3")
        failed = not compare(export_dir, bad, atol)
    print(f"self-test: {'PASSED' if passed and failed else 'FAILED'}")
    return passed and failed


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export_dir", nargs="?", help="directory with config.json and model.safetensors")
    p.add_argument("reference", nargs="?", help="safetensors with input_ids and logits from decodex")
    p.add_argument("--atol", type=float, default=1e-4, help="max abs logit difference allowed")
    p.add_argument("--self-test", action="store_true", help="check this script on a model it builds")
    args = p.parse_args()

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        if args.self_test:
            sys.exit(0 if self_test(args.atol) else 1)
        if not args.export_dir or not args.reference:
            p.error("EXPORT_DIR and REFERENCE are required (or pass --self-test)")
        sys.exit(0 if compare(args.export_dir, args.reference, args.atol) else 1)
    except (OSError, KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
