#!/usr/bin/env python3
"""Text embeddings for the PixelDiT text-to-image model, as the official pipeline computes them
(upstream ``t2i/inference.py`` with ``configs/PixelDiT_1024px_pixel_diffusion_stage3.yaml``; architecture notes 5.1).

Writes ``[300, 2304]`` float32 safetensors files for ``pixeldit-run --text-embeddings`` / ``--negative-embeddings``:

* prompt: the CHI system prompt below + the user prompt, tokenized to ``len(tokenize(chi)) + 300 - 2`` tokens with
  right padding and truncation; Gemma-2-2B-IT's decoder (``AutoModelForCausalLM.from_pretrained(...).get_decoder()``,
  bf16) returns its last hidden state after the final norm; token 0 (BOS) and the last 299 positions are kept;
* negative prompt (``""`` for plain CFG, e.g. "low quality, worst quality, over-saturated, blurry, deformed,
  watermark"): no CHI prefix, padded to 300 tokens, all 300 positions kept.

No attention mask reaches PixelDiT: the padding positions' hidden states are part of the input.

Needs ``torch``, ``transformers`` and the Gemma weights (``Efficient-Large-Model/gemma-2-2b-it``, SANA's copy),
none of which the project's tests install; it transcribes the upstream code path. ``reference/gen_gemma_golden.py``
runs it (``prompt_embeddings``/``negative_embeddings``) on a tiny random Gemma-2 for ``tests/golden/gemma/``.

Usage: gemma_text_embeddings.py "a cat on a windowsill" prompt.safetensors [--negative "" neg.safetensors]
"""
import argparse

CHI_PROMPT = "\n".join([
    'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions suitable for image '
    'generation. Evaluate the level of detail in the user prompt:',
    "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and spatial "
    "relationships to create vivid and concrete scenes.",
    "- If the prompt is already detailed, refine and enhance the existing details slightly without overcomplicating.",
    "Here are examples of how to transform or refine prompts:",
    "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, sleeping "
    "peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
    "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring glowing street "
    "lamps, a diverse crowd of people in colorful clothing, and a double-decker bus passing by towering glass "
    "skyscrapers.",
    "Please generate only the enhanced description for the prompt below and avoid including any additional "
    "commentary or evaluations:",
    "User Prompt: ",
])
MAX_LENGTH = 300


def load(model, device="cpu", dtype="bfloat16", tokenizer=None):
    """Tokenizer (right padding) and the Gemma-2 decoder of ``model`` (a Hugging Face name or directory)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer or model)
    tok.padding_side = "right"
    enc = AutoModelForCausalLM.from_pretrained(model, dtype=getattr(torch, dtype)).get_decoder().to(device).eval()
    return tok, enc


def prompt_embeddings(tok, enc, prompt):
    """The official prompt path: CHI + prompt, ``len(tokenize(chi)) + 300 - 2`` tokens, keep token 0 and the last 299.

    Returns ``(input_ids [L], attention_mask [L], text [300, D] float32, truncated)``, torch tensors on the CPU.
    """
    import torch

    text = CHI_PROMPT + prompt.strip()
    max_len = len(tok.encode(CHI_PROMPT)) + MAX_LENGTH - 2
    t = tok([text], max_length=max_len, padding="max_length", truncation=True, return_tensors="pt").to(enc.device)
    with torch.no_grad():
        h = enc(t.input_ids, t.attention_mask)[0]
    select = [0] + list(range(-MAX_LENGTH + 1, 0))
    truncated = len(tok.encode(text)) > max_len
    return t.input_ids[0].cpu(), t.attention_mask[0].cpu(), h[0, select].float().cpu().contiguous(), truncated


def negative_embeddings(tok, enc, negative):
    """The official negative-prompt path: no CHI, 300 tokens, all kept. Same return values as prompt_embeddings."""
    import torch

    t = tok([negative], max_length=MAX_LENGTH, padding="max_length", truncation=True,
            return_tensors="pt").to(enc.device)
    with torch.no_grad():
        h = enc(t.input_ids, t.attention_mask)[0]
    truncated = len(tok.encode(negative)) > MAX_LENGTH
    return t.input_ids[0].cpu(), t.attention_mask[0].cpu(), h[0, :MAX_LENGTH].float().cpu().contiguous(), truncated


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("out")
    ap.add_argument("--negative", nargs=2, metavar=("TEXT", "OUT"))
    ap.add_argument("--model", default="Efficient-Large-Model/gemma-2-2b-it")
    ap.add_argument("--tokenizer", help="tokenizer name or directory (default: --model)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                    help="the official pipeline runs the encoder in bfloat16")
    a = ap.parse_args()

    import sys

    from safetensors.torch import save_file

    tok, enc = load(a.model, a.device, a.dtype, a.tokenizer)
    _, _, text, truncated = prompt_embeddings(tok, enc, a.prompt)
    if truncated:
        print("warning: the prompt was truncated to the official token limit", file=sys.stderr)
    save_file({"text": text}, a.out)
    if a.negative:
        negative, out = a.negative
        _, _, text, truncated = negative_embeddings(tok, enc, negative)
        if truncated:
            print(f"warning: the negative prompt was truncated to {MAX_LENGTH} tokens", file=sys.stderr)
        save_file({"text": text}, out)


if __name__ == "__main__":
    main()
