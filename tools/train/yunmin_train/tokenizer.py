"""Pure-Python byte-level BPE reading a Hugging Face `tokenizer.json` (GPT-2 / GPT-NeoX style).

Encoding pipeline (what HF tokenizers does for these files, step by step):
  1. Added tokens whose `normalized` is false (e.g. <|endoftext|>) are split out of the raw text,
     leftmost-longest: scanning left to right, the earliest position where any added token
     matches wins, and among the tokens matching there the longest.
  2. Each remaining piece is normalized (NFC for GPT-NeoX) ...
  3. ... and added tokens whose `normalized` is true (GPT-NeoX's runs of 2-24 spaces) are split
     out of the normalized piece, again leftmost-longest.
  4. The ByteLevel pre-tokenizer splits each remaining piece with GPT-2's regex
         's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
     (implemented by hand in `split_gpt2`, since Python's `re` has no \\p{L}), then maps the
     UTF-8 bytes of every word to printable characters (`bytes_to_unicode`).
  5. BPE on each word: repeatedly merge the adjacent pair with the lowest merge rank.
Decoding: ids -> token strings -> ByteLevel decoder (characters back to bytes; a token with a
character outside the byte map, such as an added "  " token, contributes its own UTF-8 bytes) ->
UTF-8 with replacement characters.
"""

import json
import re
import unicodedata

# \s in Oniguruma (the regex engine of HF tokenizers) is the Unicode White_Space property.
WHITESPACE = frozenset(chr(c) for c in (
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680]
    + list(range(0x2000, 0x200B)) + [0x2028, 0x2029, 0x202F, 0x205F, 0x3000]))

LETTER, NUMBER, SPACE, OTHER = 0, 1, 2, 3

_class_cache = {}


def char_class(c):
    """LETTER (\\p{L}), NUMBER (\\p{N}), SPACE (\\s) or OTHER."""
    k = _class_cache.get(c)
    if k is None:
        if c in WHITESPACE:
            k = SPACE
        else:
            cat = unicodedata.category(c)[0]
            k = LETTER if cat == "L" else NUMBER if cat == "N" else OTHER
        _class_cache[c] = k
    return k


def split_gpt2(text):
    """Split `text` exactly as GPT-2's pre-tokenizer regex (see the module docstring).

    Alternatives are tried in the regex's order at each position; quantifiers are greedy.
    """
    n = len(text)
    cls = [char_class(c) for c in text]
    out = []
    i = 0
    while i < n:
        c = text[i]
        # 's 't 're 've 'm 'll 'd
        if c == "'" and i + 1 < n:
            c1 = text[i + 1]
            if c1 in "stmd":
                out.append(text[i:i + 2])
                i += 2
                continue
            if i + 2 < n and text[i + 1:i + 3] in ("re", "ve", "ll"):
                out.append(text[i:i + 3])
                i += 3
                continue
        # ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional ASCII space, then a run of
        # one class (letters, digits, or "other"), greedy.
        j = i + 1 if (c == " " and i + 1 < n and cls[i + 1] != SPACE) else i
        k = cls[j]
        if k != SPACE:
            e = j + 1
            while e < n and cls[e] == k:
                e += 1
            out.append(text[i:e])
            i = e
            continue
        # '\s+(?!\S)': the whitespace run, minus its last character when a non-space follows
        # (that character then starts the next word); '\s+' for a lone space before a non-space.
        e = i + 1
        while e < n and cls[e] == SPACE:
            e += 1
        if e < n and e - i >= 2:
            e -= 1
        out.append(text[i:e])
        i = e
    return out


def bytes_to_unicode():
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
            + list(range(ord("\xae"), ord("\xff") + 1)))
    table = {}
    extra = 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}
_BYTE_TRANS = [BYTE_TO_CHAR[b] for b in range(256)]


def _normalizer_fn(spec):
    if spec is None:
        return None
    t = spec.get("type")
    if t in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s, form=t: unicodedata.normalize(form, s)
    if t == "Lowercase":
        return str.lower
    if t == "Sequence":
        fns = [_normalizer_fn(x) for x in spec.get("normalizers", [])]
        fns = [f for f in fns if f is not None]

        def seq(s):
            for f in fns:
                s = f(s)
            return s
        return seq
    raise NotImplementedError(f"normalizer {t!r} is not supported")


class _AddedMatcher:
    """Leftmost-longest matching of a set of literal strings."""

    def __init__(self, tokens):
        # tokens: list of (content, id, lstrip, rstrip, single_word)
        self.tokens = {t[0]: t for t in tokens if t[0]}
        if self.tokens:
            # Python's re tries alternatives in order at the leftmost position that matches;
            # longest-first order therefore gives leftmost-longest.
            alts = sorted(self.tokens, key=lambda s: (-len(s), s))
            self.regex = re.compile("|".join(re.escape(a) for a in alts))
        else:
            self.regex = None

    def split(self, text):
        """Yield (piece, token_id or None)."""
        if self.regex is None or not text:
            if text:
                yield text, None
            return
        pos = 0
        for m in self.regex.finditer(text):
            s, e = m.start(), m.end()
            content, tid, lstrip, rstrip, single_word = self.tokens[m.group(0)]
            if s < pos:
                continue
            if single_word:
                before = text[s - 1] if s > 0 else ""
                after = text[e] if e < len(text) else ""
                if (before and _is_word_char(before)) or (after and _is_word_char(after)):
                    continue
            if lstrip:
                while s > pos and text[s - 1] in WHITESPACE:
                    s -= 1
            if rstrip:
                while e < len(text) and text[e] in WHITESPACE:
                    e += 1
            if s > pos:
                yield text[pos:s], None
            yield text[s:e], tid
            pos = e
        if pos < len(text):
            yield text[pos:], None


def _is_word_char(c):
    return c.isalnum() or c == "_"


class Tokenizer:
    """Byte-level BPE tokenizer loaded from a HF tokenizer.json."""

    def __init__(self, spec):
        model = spec.get("model") or {}
        if model.get("type", "BPE") != "BPE":
            raise NotImplementedError(f"model type {model.get('type')!r} is not supported")
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
            raise NotImplementedError("continuing_subword_prefix / end_of_word_suffix")
        if model.get("dropout"):
            raise NotImplementedError("BPE dropout")
        self.vocab = dict(model["vocab"])
        self.ignore_merges = bool(model.get("ignore_merges", False))
        self.unk_token = model.get("unk_token")
        self.ranks = {}
        for rank, m in enumerate(model.get("merges", [])):
            if isinstance(m, str):
                parts = m.split(" ")
                if len(parts) != 2:
                    raise ValueError(f"bad merge {m!r}")
                a, b = parts
            else:
                a, b = m
            if a + b not in self.vocab:
                raise ValueError(f"merge {a!r} {b!r}: {a + b!r} is not in the vocabulary")
            self.ranks[(a, b)] = rank

        self.added = {}       # content -> id
        self.special_ids = set()
        raw_tokens, norm_tokens = [], []
        self.normalize = _normalizer_fn(spec.get("normalizer"))
        for t in spec.get("added_tokens") or []:
            content, tid = t["content"], t["id"]
            self.added[content] = tid
            if t.get("special"):
                self.special_ids.add(tid)
            entry = (content, tid, bool(t.get("lstrip")), bool(t.get("rstrip")),
                     bool(t.get("single_word")))
            if t.get("normalized", not t.get("special", False)):
                if self.normalize is not None:
                    entry = (self.normalize(content),) + entry[1:]
                norm_tokens.append(entry)
            else:
                raw_tokens.append(entry)
        self._raw_matcher = _AddedMatcher(raw_tokens)
        self._norm_matcher = _AddedMatcher(norm_tokens)

        pre = spec.get("pre_tokenizer")
        self.add_prefix_space = False
        self.use_regex = True
        if pre is not None:
            if pre.get("type") == "Sequence" and len(pre.get("pretokenizers", [])) == 1:
                pre = pre["pretokenizers"][0]
            if pre.get("type") != "ByteLevel":
                raise NotImplementedError(f"pre_tokenizer {pre.get('type')!r} is not supported")
            self.add_prefix_space = bool(pre.get("add_prefix_space", False))
            self.use_regex = bool(pre.get("use_regex", True))
        dec = spec.get("decoder")
        if dec is not None and dec.get("type") != "ByteLevel":
            raise NotImplementedError(f"decoder {dec.get('type')!r} is not supported")

        self.id_to_token = {}
        for tok, tid in self.vocab.items():
            self.id_to_token[tid] = tok
        for tok, tid in self.added.items():
            self.id_to_token[tid] = tok
        self.vocab_size = max(self.id_to_token) + 1 if self.id_to_token else 0
        self._cache = {}

    @classmethod
    def from_file(cls, path):
        with open(path, "r", encoding="utf-8") as f:
            return cls(json.load(f))

    # -- encoding -------------------------------------------------------------------------
    def token_to_id(self, token):
        if token in self.added:
            return self.added[token]
        return self.vocab.get(token)

    def _bpe(self, word):
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        if self.ignore_merges and word in self.vocab:
            ids = (self.vocab[word],)
        else:
            symbols = list(word)
            ranks = self.ranks
            while len(symbols) > 1:
                best, best_rank = -1, None
                for i in range(len(symbols) - 1):
                    r = ranks.get((symbols[i], symbols[i + 1]))
                    if r is not None and (best_rank is None or r < best_rank):
                        best, best_rank = i, r
                if best < 0:
                    break
                a, b = symbols[best], symbols[best + 1]
                merged = []
                i = 0
                while i < len(symbols):
                    if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                        merged.append(a + b)
                        i += 2
                    else:
                        merged.append(symbols[i])
                        i += 1
                symbols = merged
            out = []
            for s in symbols:
                tid = self.vocab.get(s)
                if tid is None:
                    if self.unk_token is None or self.unk_token not in self.vocab:
                        raise KeyError(f"symbol {s!r} not in vocabulary and no unk_token")
                    tid = self.vocab[self.unk_token]
                out.append(tid)
            ids = tuple(out)
        if len(self._cache) < 1_000_000:
            self._cache[word] = ids
        return ids

    def _encode_plain(self, text, out):
        if self.add_prefix_space and not text.startswith(" "):
            text = " " + text
        words = split_gpt2(text) if self.use_regex else [text]
        for w in words:
            mapped = "".join([_BYTE_TRANS[b] for b in w.encode("utf-8")])
            out.extend(self._bpe(mapped))

    def encode(self, text):
        """Token ids for `text` (no special tokens are added: GPT-NeoX's post-processor adds none)."""
        out = []
        for piece, tid in self._raw_matcher.split(text):
            if tid is not None:
                out.append(tid)
                continue
            if self.normalize is not None:
                piece = self.normalize(piece)
            for sub, tid2 in self._norm_matcher.split(piece):
                if tid2 is not None:
                    out.append(tid2)
                else:
                    self._encode_plain(sub, out)
        return out

    # -- decoding -------------------------------------------------------------------------
    def decode_bytes(self, ids, skip_special_tokens=False):
        buf = bytearray()
        for tid in ids:
            tid = int(tid)
            if skip_special_tokens and tid in self.special_ids:
                continue
            tok = self.id_to_token.get(tid)
            if tok is None:
                raise KeyError(f"token id {tid} is not in the vocabulary")
            try:
                buf.extend(CHAR_TO_BYTE[c] for c in tok)
            except KeyError:
                buf.extend(tok.encode("utf-8"))
        return bytes(buf)

    def decode(self, ids, skip_special_tokens=False):
        return self.decode_bytes(ids, skip_special_tokens).decode("utf-8", errors="replace")


def load(path):
    return Tokenizer.from_file(path)
