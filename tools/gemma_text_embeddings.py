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

NOT RUN IN THIS REPOSITORY: it needs ``torch``, ``transformers`` and the Gemma weights
(``Efficient-Large-Model/gemma-2-2b-it``, SANA's copy), none of which the project installs; it transcribes the
upstream code path for users who have them.

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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("out")
    ap.add_argument("--negative", nargs=2, metavar=("TEXT", "OUT"))
    ap.add_argument("--model", default="Efficient-Large-Model/gemma-2-2b-it")
    ap.add_argument("--device", default="cuda")
    a = ap.parse_args()

    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "right"
    enc = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16).get_decoder().to(a.device).eval()

    with torch.no_grad():
        max_len = len(tok.encode(CHI_PROMPT)) + MAX_LENGTH - 2
        t = tok([CHI_PROMPT + a.prompt.strip()], max_length=max_len, padding="max_length", truncation=True,
                return_tensors="pt").to(a.device)
        h = enc(t.input_ids, t.attention_mask)[0]
        select = [0] + list(range(-MAX_LENGTH + 1, 0))
        save_file({"text": h[0, select].float().cpu().contiguous()}, a.out)
        if a.negative:
            text, out = a.negative
            t = tok([text], max_length=MAX_LENGTH, padding="max_length", truncation=True,
                    return_tensors="pt").to(a.device)
            h = enc(t.input_ids, t.attention_mask)[0]
            save_file({"text": h[0, :MAX_LENGTH].float().cpu().contiguous()}, out)


if __name__ == "__main__":
    main()
