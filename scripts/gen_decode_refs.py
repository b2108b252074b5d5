#!/usr/bin/env python3
"""Hugging Face references for decodex's decoding engine (tests/decode_refs.rs):

  tests/fixtures/decode_refs/group_beam.json
      transformers' diverse (group) beam search (`_group_beam_search`, do_sample=False,
      output_scores=True, return_dict_in_generate=True) on the tiny random Llama of
      tests/fixtures/llama_tiny (scripts/gen_llama_tiny_fixture.py): for several settings of
      num_beams, num_beam_groups, diversity_penalty, length_penalty, early_stopping,
      num_return_sequences and EOS, and three token-id prompts each, the new tokens of every
      returned sequence (padding after EOS dropped) and `sequences_scores`.
  tests/fixtures/decode_refs/chat_templates.json
      `tokenizer.apply_chat_template(..., tokenize=False)` renderings of five conversations with
      add_generation_prompt (and without it for the one ending with the assistant's reply, a
      fine-tuning record), for four templates: SmolLM2-135M-Instruct's (read from
      the GGUF's `tokenizer.chat_template`), Llama 3.1 Instruct's, Qwen2.5 Instruct's and
      Zephyr's (whose newlines after block tags only vanish with jinja's trim_blocks, as HF
      renders). For SmolLM2 also the token ids of the rendering without generation prompt
      (transformers' tokenizer of the GGUF), for the fine-tuning data path.

Usage: python3 scripts/gen_decode_refs.py [--models DIR]
Needs: pip install -r scripts/requirements-reference.txt (torch, transformers, gguf).
"""
import argparse
import json
import os
import pathlib
import platform

import jinja2
import numpy
import torch
import transformers
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "decode_refs"
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def generator():
    import gguf
    import importlib.metadata as md
    return {
        "script": "scripts/gen_decode_refs.py",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
        "jinja2": jinja2.__version__,
        "gguf": md.version("gguf"),
    }


# ---------------------------------------------------------------------------------------------
# Diverse (group) beam search on the tiny Llama.

# Prompts of 3 to 10 ids (vocabulary 96, context 64).
PROMPTS = [[5, 17, 33, 8, 61, 42, 7], [1, 40, 12], [88, 3, 3, 91, 26, 14, 60, 9, 31, 77]]

# One entry per setting. `eos` is chosen among tokens the model produces often (60, 45, 23 in
# the unconstrained searches), so that hypotheses finish early and the early-stopping and
# length-penalty rules decide what is returned; `None` runs every beam to max_new_tokens.
SETTINGS = [
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=0.5, num_return_sequences=4,
         length_penalty=1.0, early_stopping=False, eos=None, max_new_tokens=12),
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=1.0, num_return_sequences=6,
         length_penalty=1.0, early_stopping=False, eos=60, max_new_tokens=16),
    dict(num_beams=6, num_beam_groups=3, diversity_penalty=0.5, num_return_sequences=3,
         length_penalty=0.0, early_stopping=True, eos=45, max_new_tokens=16),
    dict(num_beams=4, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=2,
         length_penalty=2.0, early_stopping="never", eos=23, max_new_tokens=14),
    dict(num_beams=6, num_beam_groups=2, diversity_penalty=1.0, num_return_sequences=6,
         length_penalty=-0.5, early_stopping=False, eos=45, max_new_tokens=12),
    dict(num_beams=4, num_beam_groups=4, diversity_penalty=0.5, num_return_sequences=4,
         length_penalty=1.0, early_stopping="never", eos=60, max_new_tokens=10),
]


def group_beam(model):
    cases = []
    for s in SETTINGS:
        eos = s["eos"]
        for prompt in PROMPTS:
            x = torch.tensor([prompt])
            with torch.no_grad():
                out = model.generate(
                    x, attention_mask=torch.ones_like(x), do_sample=False,
                    num_beams=s["num_beams"], num_beam_groups=s["num_beam_groups"],
                    diversity_penalty=s["diversity_penalty"],
                    num_return_sequences=s["num_return_sequences"],
                    length_penalty=s["length_penalty"], early_stopping=s["early_stopping"],
                    max_new_tokens=s["max_new_tokens"], eos_token_id=eos,
                    pad_token_id=eos if eos is not None else 0,
                    output_scores=True, return_dict_in_generate=True)
            seqs = []
            for row in out.sequences:
                new = row[len(prompt):].tolist()
                # Finished hypotheses are padded with the pad id (= EOS) up to the longest.
                if eos is not None and eos in new:
                    new = new[:new.index(eos) + 1]
                seqs.append(new)
            scores = out.sequences_scores.tolist()
            assert len(seqs) == len(scores) == s["num_return_sequences"]
            cases.append({**s, "prompt": prompt, "sequences": seqs, "scores": scores})
            done = sum(eos is not None and q[-1] == eos for q in seqs)
            print(f"beams {s['num_beams']}/{s['num_beam_groups']} lp {s['length_penalty']} "
                  f"es {s['early_stopping']} eos {eos} prompt {prompt[:3]}…: "
                  f"{len({tuple(q) for q in seqs})} distinct of {len(seqs)}, {done} on EOS, "
                  f"lengths {[len(q) for q in seqs]}")
    return cases


# ---------------------------------------------------------------------------------------------
# Chat templates.

# Llama 3.1 Instruct (meta-llama/Llama-3.1-8B-Instruct, tokenizer_config.json "chat_template"),
# as printed by `repr(tokenizer.chat_template)` in two public copies that agree.
LLAMA31 = (
    '{{- bos_token }}\n{%- if custom_tools is defined %}\n    {%- set tools = custom_tools %}\n{%- endif %}\n'
    '{%- if not tools_in_user_message is defined %}\n    {%- set tools_in_user_message = true %}\n{%- endif %}\n'
    '{%- if not date_string is defined %}\n    {%- set date_string = "26 Jul 2024" %}\n{%- endif %}\n'
    '{%- if not tools is defined %}\n    {%- set tools = none %}\n{%- endif %}\n\n'
    '{#- This block extracts the system message, so we can slot it into the right place. #}\n'
    "{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n"
    '    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = "" %}\n{%- endif %}\n\n'
    '{#- System message + builtin tools #}\n{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}\n'
    '{%- if builtin_tools is defined or tools is not none %}\n    {{- "Environment: ipython\\n" }}\n{%- endif %}\n'
    '{%- if builtin_tools is defined %}\n'
    '    {{- "Tools: " + builtin_tools | reject(\'equalto\', \'code_interpreter\') | join(", ") + "\\n\\n"}}\n'
    '{%- endif %}\n{{- "Cutting Knowledge Date: December 2023\\n" }}\n'
    '{{- "Today Date: " + date_string + "\\n\\n" }}\n'
    '{%- if tools is not none and not tools_in_user_message %}\n'
    '    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '    {{- "Do not use variables.\\n\\n" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n    {%- endfor %}\n{%- endif %}\n{{- system_message }}\n{{- "<|eot_id|>" }}\n\n'
    '{#- Custom tools are passed in a user message with some extra guidance #}\n'
    '{%- if tools_in_user_message and not tools is none %}\n'
    '    {#- Extract the first user message so we can plug it in here #}\n'
    '    {%- if messages | length != 0 %}\n'
    "        {%- set first_user_message = messages[0]['content']|trim %}\n"
    '        {%- set messages = messages[1:] %}\n    {%- else %}\n'
    '        {{- raise_exception("Cannot put tools in the first user message when there\'s no first user message!") }}\n'
    '{%- endif %}\n    {{- \'<|start_header_id|>user<|end_header_id|>\\n\\n\' -}}\n'
    '    {{- "Given the following functions, please respond with a JSON for a function call " }}\n'
    '    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}\n'
    '    {{- \'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.\' }}\n'
    '    {{- "Do not use variables.\\n\\n" }}\n    {%- for t in tools %}\n        {{- t | tojson(indent=4) }}\n'
    '        {{- "\\n\\n" }}\n    {%- endfor %}\n    {{- first_user_message + "<|eot_id|>"}}\n{%- endif %}\n\n'
    '{%- for message in messages %}\n'
    "    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}\n"
    "        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n"
    "    {%- elif 'tool_calls' in message %}\n        {%- if not message.tool_calls|length == 1 %}\n"
    '            {{- raise_exception("This model only supports single tool-calls at once!") }}\n'
    '        {%- endif %}\n        {%- set tool_call = message.tool_calls[0].function %}\n'
    '        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- "<|python_tag|>" + tool_call.name + ".call(" }}\n'
    '            {%- for arg_name, arg_val in tool_call.arguments | items %}\n'
    '                {{- arg_name + \'="\' + arg_val + \'"\' }}\n                {%- if not loop.last %}\n'
    '                    {{- ", " }}\n                {%- endif %}\n                {%- endfor %}\n'
    '            {{- ")" }}\n        {%- else  %}\n'
    "            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}\n"
    '            {{- \'{"name": "\' + tool_call.name + \'", \' }}\n            {{- \'"parameters": \' }}\n'
    '            {{- tool_call.arguments | tojson }}\n            {{- "}" }}\n        {%- endif %}\n'
    '        {%- if builtin_tools is defined %}\n'
    "            {#- This means we're in ipython mode #}\n"
    '            {{- "<|eom_id|>" }}\n        {%- else %}\n            {{- "<|eot_id|>" }}\n        {%- endif %}\n'
    '    {%- elif message.role == "tool" or message.role == "ipython" %}\n'
    '        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}\n'
    '        {%- if message.content is mapping or message.content is iterable %}\n'
    '            {{- message.content | tojson }}\n        {%- else %}\n            {{- message.content }}\n'
    '        {%- endif %}\n        {{- "<|eot_id|>" }}\n    {%- endif %}\n{%- endfor %}\n'
    "{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n"
)

# Qwen2.5 Instruct (Qwen/Qwen2.5-7B-Instruct, tokenizer_config.json "chat_template"), from a
# public copy whose only change (text after the generation prompt) is undone here; the same
# structure is in a second copy (Qwen2.5-Math) with another default system message.
QWEN25 = (
    "{%- if tools %}\n    {{- '<|im_start|>system\\n' }}\n    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- messages[0]['content'] }}\n    {%- else %}\n"
    "        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}\n    {%- endif %}\n"
    '    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n'
    'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>" }}\n'
    '    {%- for tool in tools %}\n        {{- "\\n" }}\n        {{- tool | tojson }}\n    {%- endfor %}\n'
    '    {{- "\\n</tools>\\n\\nFor each function call, return a json object with function name and arguments '
    'within <tool_call></tool_call> XML tags:\\n<tool_call>\\n{\\"name\\": <function-name>, \\"arguments\\": '
    '<args-json-object>}\\n</tool_call><|im_end|>\\n" }}\n{%- else %}\n'
    "    {%- if messages[0]['role'] == 'system' %}\n"
    "        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}\n    {%- else %}\n"
    "        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}\n"
    "    {%- endif %}\n{%- endif %}\n{%- for message in messages %}\n"
    '    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or '
    '(message.role == "assistant" and not message.tool_calls) %}\n'
    "        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}\n"
    '    {%- elif message.role == "assistant" %}\n        {{- \'<|im_start|>\' + message.role }}\n'
    "        {%- if message.content %}\n            {{- '\\n' + message.content }}\n        {%- endif %}\n"
    '        {%- for tool_call in message.tool_calls %}\n            {%- if tool_call.function is defined %}\n'
    '                {%- set tool_call = tool_call.function %}\n            {%- endif %}\n'
    '            {{- \'\\n<tool_call>\\n{"name": "\' }}\n            {{- tool_call.name }}\n'
    '            {{- \'", "arguments": \' }}\n            {{- tool_call.arguments | tojson }}\n'
    "            {{- '}\\n</tool_call>' }}\n        {%- endfor %}\n        {{- '<|im_end|>\\n' }}\n"
    '    {%- elif message.role == "tool" %}\n'
    '        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}\n'
    "            {{- '<|im_start|>user' }}\n        {%- endif %}\n        {{- '\\n<tool_response>\\n' }}\n"
    "        {{- message.content }}\n        {{- '\\n</tool_response>' }}\n"
    '        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}\n'
    "            {{- '<|im_end|>\\n' }}\n        {%- endif %}\n    {%- endif %}\n{%- endfor %}\n"
    "{%- if add_generation_prompt %}\n    {{- '<|im_start|>assistant\\n' }}\n{%- endif %}\n"
)

# Zephyr (HuggingFaceH4/zephyr-7b-beta; also TinyLlama-1.1B-Chat): block tags on their own
# lines, so the output depends on trim_blocks (HF's environment sets trim_blocks=True and
# lstrip_blocks=True).
ZEPHYR = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n"
    "{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n"
    "{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n"
    "{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)

SYSTEM = {"role": "system", "content": "You are a terse assistant. Answer in one sentence."}
CONVERSATIONS = {
    "single_turn": [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}],
    "no_system": [{"role": "user", "content": "Hello there!"}],
    "multi_turn": [SYSTEM, {"role": "user", "content": "Name a prime."},
                   {"role": "assistant", "content": "Seven."},
                   {"role": "user", "content": "And an even one?"}],
    "ends_with_assistant": [SYSTEM, {"role": "user", "content": "Name a prime."},
                            {"role": "assistant", "content": "Seven."},
                            {"role": "user", "content": "And an even one?"},
                            {"role": "assistant", "content": "Two is the only even prime."}],
    # Surrounding whitespace (Llama 3.1 trims it), unicode, and text that looks like Jinja.
    "whitespace_unicode": [{"role": "user", "content": "  Grüße, 世界 ✓\n\nLine two.  "},
                           {"role": "assistant", "content": "Ça va ? 🙂"},
                           {"role": "user", "content": "Tabs\tand \"quotes\", {{ braces }} and {% raw %}."}],
}


def smollm2_template(models):
    from gguf import GGUFReader
    r = GGUFReader(os.path.join(models, GGUF))
    tokens = r.fields["tokenizer.ggml.tokens"].contents()
    bos = tokens[r.fields["tokenizer.ggml.bos_token_id"].contents()]
    eos = tokens[r.fields["tokenizer.ggml.eos_token_id"].contents()]
    return r.fields["tokenizer.chat_template"].contents(), bos, eos


def render(template, bos, eos, messages, add_generation_prompt):
    """transformers' own path: a tokenizer with the template and special tokens set."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")),
                                  bos_token=bos, eos_token=eos)
    tok.chat_template = template
    return tok.apply_chat_template(messages, tokenize=False,
                                   add_generation_prompt=add_generation_prompt)


def chat(models):
    smol, smol_bos, smol_eos = smollm2_template(models)
    smol_tok = AutoTokenizer.from_pretrained(models, gguf_file=GGUF)
    templates = [
        ("smollm2", f"GGUF tokenizer.chat_template of {GGUF}", smol, smol_bos, smol_eos),
        ("llama3.1", "meta-llama/Llama-3.1-8B-Instruct tokenizer_config.json", LLAMA31,
         "<|begin_of_text|>", "<|eot_id|>"),
        ("qwen2.5", "Qwen/Qwen2.5-7B-Instruct tokenizer_config.json (bos_token null)", QWEN25,
         None, "<|im_end|>"),
        ("zephyr", "HuggingFaceH4/zephyr-7b-beta tokenizer_config.json", ZEPHYR, "<s>", "</s>"),
    ]
    out = []
    for name, source, template, bos, eos in templates:
        renderings = []
        for conv, messages in CONVERSATIONS.items():
            # Without the generation prompt only where decodex has a counterpart: a fine-tuning
            # record, which ends with the assistant's reply.
            for agp in (True, False) if messages[-1]["role"] == "assistant" else (True,):
                r = {"conversation": conv, "add_generation_prompt": agp,
                     "text": render(template, bos, eos, messages, agp)}
                if name == "smollm2" and not agp:
                    r["ids"] = smol_tok(r["text"], add_special_tokens=False).input_ids
                renderings.append(r)
        out.append({"name": name, "source": source, "template": template, "bos_token": bos,
                    "eos_token": eos, "renderings": renderings})
        print(f"{name}: {len(renderings)} renderings")
    return {"conversations": CONVERSATIONS, "templates": out}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=os.environ.get(
        "DECODEX_MODELS", os.path.expanduser("~/.cache/decodex/models")))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    gen = generator()

    model = LlamaForCausalLM.from_pretrained(FIX / "llama_tiny", torch_dtype=torch.float32).eval()
    beam = {"generator": gen, "model": "tests/fixtures/llama_tiny", "cases": group_beam(model)}
    (OUT / "group_beam.json").write_text(json.dumps(beam, indent=1) + "\n")

    chats = {"generator": gen, **chat(args.models)}
    (OUT / "chat_templates.json").write_text(
        json.dumps(chats, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
