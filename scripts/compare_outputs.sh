#!/usr/bin/env bash
# Two decodex builds on the same short jobs, outputs compared byte for byte (a refactor that
# promises "behaviour unchanged" must leave every one identical):
#   LM training (char preset, 120 steps with two evals: metrics and checkpoint), GRU and
#   Transformer seq2seq (Multi30k subset, 2 epochs, clipping, dropout, label smoothing: metrics
#   and model), LoRA and full fine-tuning of SmolLM2 (4 steps: adapter / model files), greedy,
#   beam and sampled generation (quantized and --dequantize), perplexity, translation with the
#   trained seq2seq models, embeddings.
# Timings, memory and paths are masked in the JSON lines before comparing; the fine-tuning
# trainer state (it records wall time) is left out (the resume tests hold it).
# Usage: scripts/compare_outputs.sh OLD_BINARY NEW_BINARY [WORKDIR]
# OLD_BINARY may instead be the `old` folder of an earlier run (its outputs are reused).
set -uo pipefail
if [[ $# -lt 2 ]]; then
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
OLD=$(realpath "$1") NEW=$(realpath "$2") W=${3:-$(mktemp -d)}
mkdir -p "$W"
cd "$(dirname "$0")/.."
D=${DECODEX_DATA:-$(realpath ../shared/data)}
MODELS=${DECODEX_MODELS:-$HOME/.cache/decodex/models}
M=$MODELS/SmolLM2-135M-Instruct.Q4_1.gguf E=$MODELS/all-MiniLM-L6-v2
mkdir -p "$W/data/mt"
for f in train.de train.en; do head -3000 "$D/mt/multi30k/$f" >"$W/data/mt/$f"; done
for f in val.de val.en; do head -200 "$D/mt/multi30k/$f" >"$W/data/mt/$f"; done
for f in test2016.de test2016.en; do head -40 "$D/mt/multi30k/$f" >"$W/data/mt/$f"; done
ln -sfn "$D/lm" "$W/data/lm"
for arch in gru transformer; do
    sed -e 's/^epochs = .*/epochs = 2/' -e 's/^max_minutes = .*//' -e 's/^vocab_size = .*/vocab_size = 1000/' \
        -e 's#mt/multi30k/#mt/#g' -e 's/^\(emb_dim\|enc_hidden\|attn_dim\|d_model\) = .*/\1 = 64/' \
        -e 's/^dec_hidden = .*/dec_hidden = 128/' -e 's/^\(encoder_layers\|decoder_layers\) = .*/\1 = 2/' -e 's/^\(ff_dim\|d_ff\) = .*/\1 = 128/' \
        -e 's/^warmup_steps = .*/warmup_steps = 10/' \
        configs/multi30k-$arch.toml >"$W/s2s-$arch.toml"
done
printf '%s\n' '"The capital of France is"' '"Once upon a time"' '"def fib(n):"' >"$W/prompts.jsonl"
printf 'Hello world.\nThe cat sat on the mat.\nVitamin D and bone density.\n' >"$W/texts.txt"
head -c 1500 "$D/lm/tinyshakespeare/input.txt" >"$W/ppl.txt"; head -c 20000 "$D/lm/tinyshakespeare/input.txt" >"$W/ppl-char.txt"
strip() { grep -v '^\s*$' | sed -E 's/"([a-z_]*(elapsed|second|secs|time|per_sec|rss|_ms|_dir|path)[a-z_]*|[a-z_]*_s|out|file|model|data)":("[^"]*"|[-0-9.eE+]+)/"\1":_/g'; }
run() { # side binary
    local s=$1 b=$2 o=$W/$1
    mkdir -p "$o"
    export DECODEX_DATA=$W/data DECODEX_CACHE=$W/cache-$s
    "$b" --threads 2 train --config configs/shakespeare-char.toml --out "$o/char" --max-steps 120 --json 2>&1 | strip >"$o/char.log"
    for arch in gru transformer; do
        "$b" --threads 2 train --config "$W/s2s-$arch.toml" --out "$o/s2s-$arch" --json 2>&1 | strip >"$o/s2s-$arch.log"
        "$b" --threads 2 translate --model "$o/s2s-$arch" --input "$W/data/mt/test2016.de" --num-beams 3 >"$o/translate-$arch.txt" 2>&1
    done
    for method in lora full; do
        "$b" --threads 2 finetune --model "$M" --input "$D/sum/dialogsum/train.jsonl.gz" --task summarize \
            --method $method --max-steps 4 --batch-tokens 512 --train-examples 64 --eval-examples 8 \
            --eval-every 2 --out "$o/ft-$method" --json 2>&1 | strip >"$o/ft-$method.log"
        rm -f "$o/ft-$method"/*.png
    done
    "$b" --threads 2 generate --model "$M" --prompts "$W/prompts.jsonl" --strategy greedy --max-new-tokens 24 --json 2>&1 | strip >"$o/greedy.txt"
    "$b" --threads 2 generate --model "$M" --prompts "$W/prompts.jsonl" --strategy greedy --max-new-tokens 16 --dequantize --json 2>&1 | strip >"$o/greedy-f32.txt"
    "$b" --threads 2 generate --model "$M" --prompts "$W/prompts.jsonl" --strategy beam --num-beams 4 --num-return-sequences 2 --max-new-tokens 16 --json 2>&1 | strip >"$o/beam.txt"
    "$b" --threads 2 generate --model "$M" --prompts "$W/prompts.jsonl" --strategy sample --temperature 0.8 --top-p 0.9 --seed 7 --max-new-tokens 16 --json 2>&1 | strip >"$o/sample.txt"
    "$b" --threads 2 generate --model "$o/char" --prompt "ROMEO:" --max-new-tokens 100 --seed 3 >"$o/char-sample.txt" 2>&1
    "$b" --threads 2 eval perplexity --model "$M" --input "$W/ppl.txt" --json 2>&1 | strip >"$o/ppl.txt"
    "$b" --threads 2 eval perplexity --model "$o/char" --input "$W/ppl-char.txt" --json 2>&1 | strip >"$o/ppl-char.txt"
    "$b" --threads 2 embed --model "$E" --input "$W/texts.txt" --out "$o/emb.npy" >/dev/null 2>&1
    rm -f "$o"/*/metrics.jsonl.tmp
}
grep -o -w 'avx512[a-z_0-9]*\|avx2\|fma\|amx[a-z_0-9]*' /proc/cpuinfo | sort -u | tr '\n' ' '
echo
if [[ -d $OLD ]]; then rm -rf "$W/old"; cp -r "$OLD" "$W/old"; else run old "$OLD"; fi
run new "$NEW"
same=0 diff=0
while IFS= read -r f; do
    r=${f#"$W/old/"}
    case $r in */metrics.jsonl) a=$(strip <"$f") b=$(strip <"$W/new/$r" 2>/dev/null) ;;
    *) a=$(sha256sum <"$f") b=$(sha256sum <"$W/new/$r" 2>/dev/null) ;; esac
    if [[ "$a" == "$b" ]]; then same=$((same + 1)); else diff=$((diff + 1)); echo "DIFFERS: $r"; fi
done < <(find "$W/old" -type f ! -name '*.png' ! -name '*.lock' ! -name 'trainer_state*' | sort)
echo "$same identical, $diff differ (work folder $W)"
[[ $diff -eq 0 ]]
