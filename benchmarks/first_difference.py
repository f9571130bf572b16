"""Where two lossless paths part: the first token at which shared-vocabulary and bridged (cross_tokenizer=True) BiLD
differ on each prompt, and the large model's top two there in float32 and in the run's dtype (a near-tie that
rounding flips, or a real error).

    python benchmarks/first_difference.py --small S --large L --prompts ../shared/data/debian-de-en.validation.jsonl \
        --max_samples 16 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bild import BiLDGenerator

TRANSLATE = "Translate the following German text to English. Reply with the translation only.\n\n{text}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--small", required=True)
    p.add_argument("--large", required=True)
    p.add_argument("--prompts", required=True, help="translation JSON lines ({'translation': {'de': ...}})")
    p.add_argument("--max_samples", type=int, default=16)
    p.add_argument("--max_new_tokens", type=int, default=96)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype)
    tok = AutoTokenizer.from_pretrained(args.large)
    small = AutoModelForCausalLM.from_pretrained(args.small, dtype=dtype).eval()
    large = AutoModelForCausalLM.from_pretrained(args.large, dtype=dtype).eval()
    large32 = None
    shared = BiLDGenerator(small, large, 0.6, 0.0, tokenizer=tok)
    bridged = BiLDGenerator(small, large, 0.6, 0.0, tokenizer=tok, cross_tokenizer=True)
    rows = [json.loads(line) for line in open(args.prompts) if line.strip()][: args.max_samples]
    differ = []
    for i, row in enumerate(rows):
        msgs = [{"role": "user", "content": TRANSLATE.format(text=row["translation"]["de"])}]
        x = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        a, b = (g.generate(**x, max_new_tokens=args.max_new_tokens) for g in (shared, bridged))
        if torch.equal(a, b):
            continue
        P = x["input_ids"].shape[1]
        j = next(t for t in range(min(a.shape[1], b.shape[1])) if a[0, t] != b[0, t])
        large32 = large32 or AutoModelForCausalLM.from_pretrained(args.large, dtype=torch.float32).eval()
        with torch.no_grad():
            margins = {name: m(a[:, :j]).logits[0, -1].float().topk(2) for name, m in (("float32", large32), (args.dtype, large))}
        line = {"prompt": i, "token": j - P, "shared": tok.convert_ids_to_tokens([int(a[0, j])])[0],
                "bridged": tok.convert_ids_to_tokens([int(b[0, j])])[0]}
        for name, top in margins.items():
            line[f"{name}_top2"] = tok.convert_ids_to_tokens(top.indices.tolist())
            line[f"{name}_margin"] = float(top.values[0] - top.values[1])
        differ.append(line)
        print(json.dumps(line), flush=True)
    print(f"{len(differ)} of {len(rows)} prompts differ")
    return differ


if __name__ == "__main__":
    main()
