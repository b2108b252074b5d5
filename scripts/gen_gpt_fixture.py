"""Write the GPT-2 parity fixtures that decodex's tests compare against, llm.c `test_gpt2` style.

The reference is Hugging Face `transformers`' own `GPT2LMHeadModel` in float32, so that decodex is
checked against the implementation whose checkpoints it loads and exports. For each case it writes

    tests/fixtures/<name>.safetensors   parameters, batch, logits, loss, gradients, AdamW losses
    tests/fixtures/<name>.json          the model config (decodex `GptConfig` fields) + batch shape

Cases: `gpt2_tiny` (activation "gelu_new", GPT-2's tanh GELU) and `gpt2_tiny_erf` (activation
"gelu", the exact erf GELU). Tensors in the safetensors file:

    <param name>        every parameter under its HF state_dict name, Conv1D layout (in, out);
                        `lm_head.weight` (tied to wte) and the `attn.bias` mask buffers are omitted
    inputs, targets     int64 (B, T); targets are independent random ids (nanoGPT style, no shift)
    logits              f32 (B, T, V)
    loss                f32 [1], mean F.cross_entropy(logits.view(-1, V), targets.view(-1))
    grad.<param name>   d loss / d param; grad.transformer.wte.weight includes the tied LM head's part
    adamw_losses        f32 [3], torch.optim.AdamW on the same batch, llm.c convention: entry i is the
                        loss of the forward pass at step i, *before* that step's update (so entry 0
                        equals `loss`, and entry 2 has seen two updates)

The two cases share weights and batch; the tanh and erf GELUs differ by < 1e-3, so their logits
differ by about 6e-4 and their gradients by about 5e-5: a parity test must be tighter than that to
tell the activations apart (f32 parity is typically ~1e-6). Size: ~27k parameters plus as many
gradients in f32, about 231 KB per file.

Run from the repository root (needs torch==2.5.1, transformers==4.46.3, safetensors; see
scripts/requirements-reference.txt):

    python3 scripts/gen_gpt_fixture.py [--out-dir tests/fixtures] [--seed 1337]
"""

import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2Config, GPT2LMHeadModel

# The tiny model: small enough to keep the fixture in git, with C % nh == 0, 2 layers so the layer
# loop is exercised, and T = block_size so the full causal mask and every position embedding is used.
VOCAB_SIZE, BLOCK_SIZE, N_EMBD, N_LAYER, N_HEAD = 37, 16, 32, 2, 4
BATCH_SIZE, SEQ_LEN = 3, 16
EPS = 1e-5
INIT_STD = 0.1  # larger than GPT-2's 0.02 so activations and gradients are far from zero

# Optimizer settings for the trajectory: nanoGPT's shakespeare_char values (lr 1e-3, beta2 0.99,
# weight decay 0.1); llm.c's test_gpt2 runs the same kind of check with its own values.
LR, BETAS, ADAM_EPS, WEIGHT_DECAY, ADAMW_STEPS = 1e-3, (0.9, 0.99), 1e-8, 0.1, 3

CASES = [("gpt2_tiny", "gelu_new"), ("gpt2_tiny_erf", "gelu")]


def build_model(activation: str, seed: int) -> GPT2LMHeadModel:
    """A float32 GPT2LMHeadModel with every weight and bias drawn from N(0, INIT_STD^2) and
    LayerNorm gains from N(1, INIT_STD^2); seeded so both cases share the same weights."""
    config = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_positions=BLOCK_SIZE,
        n_embd=N_EMBD,
        n_layer=N_LAYER,
        n_head=N_HEAD,
        activation_function=activation,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        layer_norm_epsilon=EPS,
        # Eager attention: the plain softmax(QK^T / sqrt(hs)) V, not the SDPA kernel.
        attn_implementation="eager",
    )
    model = GPT2LMHeadModel(config).float()
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():  # tied lm_head.weight is not listed separately
            p.normal_(0.0, INIT_STD)
            if ".ln_" in name and name.endswith(".weight"):
                p.add_(1.0)
    model.eval()  # dropout is 0 anyway; eval() makes that independent of the config
    return model


def loss_of(model: GPT2LMHeadModel, inputs: torch.Tensor, targets: torch.Tensor):
    """nanoGPT's loss: targets are given, not derived from the inputs by HF's label shift."""
    logits = model(input_ids=inputs).logits  # (B, T, V)
    loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))
    return logits, loss


def adamw_param_groups(model: GPT2LMHeadModel):
    """decodex's decay rule: decay the 2-D matmul weights only; no decay on biases, LayerNorm
    gains and the (tied) embeddings wte/wpe."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        is_embedding = name in ("transformer.wte.weight", "transformer.wpe.weight")
        (decay if p.dim() >= 2 and not is_embedding else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": WEIGHT_DECAY},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_case(activation: str, seed: int) -> dict:
    model = build_model(activation, seed)
    # Same generator state for both cases: the batch is drawn right after the weights.
    inputs = torch.randint(0, VOCAB_SIZE, (BATCH_SIZE, SEQ_LEN), dtype=torch.int64)
    targets = torch.randint(0, VOCAB_SIZE, (BATCH_SIZE, SEQ_LEN), dtype=torch.int64)

    # named_parameters() lists the tied wte/lm_head once (as wte) and leaves out the attention mask
    # buffers (`attn.bias`, `attn.masked_bias`) that state_dict() may hold.
    tensors = {name: p.detach().clone().contiguous() for name, p in model.named_parameters()}
    assert "lm_head.weight" not in tensors

    logits, loss = loss_of(model, inputs, targets)
    loss.backward()
    tensors["inputs"] = inputs
    tensors["targets"] = targets
    tensors["logits"] = logits.detach().contiguous()
    tensors["loss"] = loss.detach().reshape(1)
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} received no gradient"
        tensors[f"grad.{name}"] = p.grad.detach().clone().contiguous()

    # The optimizer trajectory, restarting from the saved weights (the model was not changed above).
    model.zero_grad(set_to_none=True)
    opt = torch.optim.AdamW(adamw_param_groups(model), lr=LR, betas=BETAS, eps=ADAM_EPS)
    losses = []
    for _ in range(ADAMW_STEPS):
        opt.zero_grad(set_to_none=True)
        _, step_loss = loss_of(model, inputs, targets)
        losses.append(step_loss.item())
        step_loss.backward()
        opt.step()
    tensors["adamw_losses"] = torch.tensor(losses, dtype=torch.float32)
    return tensors


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default="tests/fixtures", help="where to write the fixtures")
    parser.add_argument("--seed", type=int, default=1337, help="torch.manual_seed for weights and batch")
    args = parser.parse_args()

    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out_dir, exist_ok=True)
    for case, activation in CASES:
        tensors = make_case(activation, args.seed)
        st_path = os.path.join(args.out_dir, f"{case}.safetensors")
        # One metadata key: safetensors writes a multi-key map in random order, and the file
        # should be byte-identical when regenerated.
        generator = f"scripts/gen_gpt_fixture.py --seed {args.seed}, torch {torch.__version__}"
        save_file(tensors, st_path, metadata={"generator": generator})
        config = {
            "vocab_size": VOCAB_SIZE,
            "block_size": BLOCK_SIZE,
            "n_layer": N_LAYER,
            "n_head": N_HEAD,
            "n_embd": N_EMBD,
            "dropout": 0.0,
            "bias": True,
            "activation": activation,
            "layer_norm_epsilon": EPS,
            "batch_size": BATCH_SIZE,
            "seq_len": SEQ_LEN,
        }
        json_path = os.path.join(args.out_dir, f"{case}.json")
        with open(json_path, "w") as f:
            json.dump(config, f, indent=2)
            f.write("\n")
        losses = ", ".join(f"{x:.6f}" for x in tensors["adamw_losses"].tolist())
        print(f"{st_path}: {len(tensors)} tensors, {os.path.getsize(st_path)} bytes, "
              f"loss {tensors['loss'].item():.6f}, adamw_losses [{losses}]")


if __name__ == "__main__":
    main()
