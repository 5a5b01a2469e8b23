#!/usr/bin/env python3
"""Golden data for the Gemma-2 text encoder and the official prompt recipe (issue 12), from the real implementation.

Writes ``tests/golden/gemma/`` (or OUT_DIR): a small Gemma-like tokenizer trained offline with ``tokenizers``, a tiny
random Gemma-2 in the official Hugging Face layout (sharded safetensors + index), the last hidden state of
transformers' ``Gemma2Model`` (float32, eager attention) on right-padded token ids with their attention mask, and the
token ids / ``[300, D]`` embeddings of ``tools/gemma_text_embeddings.py`` (the official recipe) on that model.

Needs torch + transformers + tokenizers (``reference/requirements-gemma.txt``; torch on CPU via
``tools/bench/setup_torch.sh``). Run from the repository root:

    LD_LIBRARY_PATH=$PWD/.cache/bench/cudastubs .cache/bench-venv/bin/python reference/gen_gemma_golden.py
"""
import importlib.util
import json
import os
import sys

import numpy as np
import tokenizers
import torch
import transformers
from safetensors.numpy import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
spec = importlib.util.spec_from_file_location("gemma_text_embeddings", os.path.join(ROOT, "tools/gemma_text_embeddings.py"))
recipe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(recipe)

SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>"]  # ids 0..3, as in Gemma's tokenizer.json
TRAIN_VOCAB = 400  # BPE vocabulary incl. the specials; the 256 byte-fallback tokens come on top
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
CORPUS = (
    [recipe.CHI_PROMPT]
    + [f"the digit {w}" for w in DIGITS]
    + [f"a {i}" for i in range(10)]
    + [f"a handwritten {w}, white ink on black" for w in DIGITS]
    + [
        "a red fox in the snow",
        "a cat sleeping on a warm sunny windowsill",
        "a busy city street at dusk with glowing street lamps",
        "low quality, worst quality, over-saturated, blurry, deformed, watermark",
        "a small, fluffy white cat curled up in a round shape",
    ]
)
# Recipe cases: (kind, text). The third exercises byte fallback (characters absent from the corpus), the fourth is
# longer than the prompt limit (truncated), the last two are negative prompts.
LONG = " ".join(f"the digit {DIGITS[i % 10]} next to a {i % 10}" for i in range(60))
RECIPE_CASES = [
    ("prompt", "the digit seven"),
    ("prompt", "a 7"),
    ("prompt", "  café ☕ naïve — Ωmega 7  "),
    ("prompt", LONG),
    ("negative", "low quality, worst quality, over-saturated, blurry, deformed, watermark"),
    ("negative", ""),
]
SEQ = 300  # length of the batch for the hidden-state golden


def train_tokenizer():
    """A Gemma-like BPE tokenizer: ' ' -> '▁' normalizer, no pre-tokenizer, byte fallback, <bos> prepended."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training only: words start at '▁' (as SentencePiece trains); the saved tokenizer has no pre-tokenizer, like Gemma.
    tok.pre_tokenizer = pre_tokenizers.Split("▁", behavior="merged_with_next")
    tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=TRAIN_VOCAB, special_tokens=SPECIALS,
                                                            show_progress=False))
    j = json.loads(tok.to_str())
    vocab = j["model"]["vocab"]
    assert [vocab[s] for s in SPECIALS] == [0, 1, 2, 3], vocab
    for b in range(256):
        vocab.setdefault(f"<0x{b:02X}>", len(vocab))
    j["pre_tokenizer"] = None
    tok = Tokenizer.from_str(json.dumps(j))
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B:1", special_tokens=[("<bos>", 2)])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    return tok


def make_model(vocab_size, seed=0):
    """Tiny Gemma-2 with Gemma-2's structure; weights scaled so that softcapping and the sliding window matter."""
    cfg = Gemma2Config(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24, max_position_embeddings=1024,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, sliding_window=12,
        attn_logit_softcapping=4.0, final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh",
        rms_norm_eps=1e-6, pad_token_id=0, eos_token_id=1, bos_token_id=2, tie_word_embeddings=True,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    model = Gemma2ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(torch.randn_like(p) * 0.3)  # (1 + w) must not be the identity
            elif "embed_tokens" in name:
                p.copy_(torch.randn_like(p) * 0.3)  # times sqrt(64) = 8 in the forward pass
            else:  # [out, in]
                p.copy_(torch.randn_like(p) * (1.5 / p.shape[1] ** 0.5))
    return model


def pad_batch(tok, texts, length):
    ids = np.zeros((len(texts), length), np.int64)
    mask = np.zeros((len(texts), length), np.int64)
    for i, t in enumerate(texts):
        e = tok.encode(t).ids[:length]
        ids[i, : len(e)] = e
        mask[i, : len(e)] = 1
    return ids, mask


def hidden(model, ids, mask):
    with torch.no_grad():
        return model.model(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()


def rel_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "tests/golden/gemma")
    model_dir = os.path.join(out, "model")
    os.makedirs(model_dir, exist_ok=True)
    for f in os.listdir(model_dir):
        os.remove(os.path.join(model_dir, f))

    tok = train_tokenizer()
    tok.save(os.path.join(model_dir, "tokenizer.json"))
    with open(os.path.join(model_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
                   "bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                   "padding_side": "left", "model_max_length": 1000000000000000019884624838656}, f, indent=2)
        f.write("\n")
    vocab_size = tok.get_vocab_size(with_added_tokens=True)

    model = make_model(vocab_size)
    model.save_pretrained(model_dir, max_shard_size="500KB", safe_serialization=True)
    assert os.path.exists(os.path.join(model_dir, "model.safetensors.index.json")), "expected a sharded checkpoint"
    gen_cfg = os.path.join(model_dir, "generation_config.json")
    if os.path.exists(gen_cfg):
        os.remove(gen_cfg)

    # (c) last hidden state of Gemma2Model on a right-padded batch, every position.
    texts = [recipe.CHI_PROMPT + "the digit seven", "a 7", "", LONG]
    ids, mask = pad_batch(tok, texts, SEQ)
    h = hidden(model, ids, mask)
    # The structure must matter on this data: sliding window, soft-capping, padding mask, norm weights.
    checks = {}
    for what, change in [("sliding_window", {"sliding_window": 100000}), ("attn_logit_softcapping",
                         {"attn_logit_softcapping": None})]:
        alt = make_model(vocab_size)
        for k, v in change.items():
            setattr(alt.config, k, v)
            for layer in alt.model.layers:
                if k == "attn_logit_softcapping":
                    layer.self_attn.attn_logit_softcapping = v
                elif layer.self_attn.sliding_window is not None:
                    layer.self_attn.sliding_window = v
        checks[what] = rel_l2(hidden(alt, ids, mask), h)
    checks["attention_mask"] = rel_l2(hidden(model, ids, np.ones_like(mask)), h)
    print("relative change without:", checks)
    assert all(v > 1e-2 for v in checks.values()), checks
    save_file({"input_ids": ids, "attention_mask": mask, "last_hidden_state": h.astype(np.float32)},
              os.path.join(out, "hidden.safetensors"))

    # (d) the official recipe (tools/gemma_text_embeddings.py) on the tiny model, through AutoTokenizer.
    htok, enc = recipe.load(model_dir, device="cpu", dtype="float32")
    assert enc.config._attn_implementation == "eager", enc.config._attn_implementation
    tensors, cases = {}, []
    for i, (kind, text) in enumerate(RECIPE_CASES):
        fn = recipe.prompt_embeddings if kind == "prompt" else recipe.negative_embeddings
        ids_i, mask_i, emb, truncated = fn(htok, enc, text)
        # AutoTokenizer must agree with the raw tokenizer.json (what the Rust side loads).
        full = recipe.CHI_PROMPT + text.strip() if kind == "prompt" else text
        raw = tok.encode(full).ids[: len(ids_i)]
        assert ids_i[: len(raw)].tolist() == raw, (kind, text)
        tensors[f"case_{i}.input_ids"] = ids_i.numpy().astype(np.int64)
        tensors[f"case_{i}.attention_mask"] = mask_i.numpy().astype(np.int64)
        tensors[f"case_{i}.text"] = emb.numpy().astype(np.float32)
        cases.append({"name": f"case_{i}", "kind": kind, "text": text, "truncated": bool(truncated),
                      "tokens": int(mask_i.sum())})
    assert any(c["truncated"] for c in cases)
    save_file(tensors, os.path.join(out, "recipe.safetensors"))
    with open(os.path.join(out, "recipe.json"), "w") as f:
        json.dump({"chi_tokens": len(htok.encode(recipe.CHI_PROMPT)), "max_length": recipe.MAX_LENGTH,
                   "cases": cases,
                   "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                                "tokenizers": tokenizers.__version__}}, f, indent=2, ensure_ascii=False)
        f.write("\n")
    print("vocab", vocab_size, "chi tokens", len(htok.encode(recipe.CHI_PROMPT)), "cases", cases)


if __name__ == "__main__":
    main()
