"""Near-duplicate detection: MinHash signatures of word 3-grams, banded LSH, first occurrence kept.

Three tiers, cheapest first: the same raw text (exact), the same text after normalisation (lower case, punctuation
and repeated spaces removed: "near"), and an estimated Jaccard similarity of word 3-gram sets at or above the
threshold ("near"). Signatures are computed with numpy for a whole chunk of rows at once: shingle hashes come from
prefix sums of the normalised bytes (no per-word Python work), and the permutations are seeded 32-bit mixers, so
800k rows take minutes on one CPU (see benchmarks/curation.py). Candidates found through LSH bands are confirmed
on their signatures, so a band collision alone never removes a row.
"""

from __future__ import annotations

import hashlib
import re

import numpy as np

NUM_PERM = 128  # signature length: the Jaccard estimate's standard error is about 0.035 at J = 0.8
SHINGLE_WORDS = 3
_WORDS = re.compile(r"[\W_]+")


def normalize(text: str) -> str:
    return _WORDS.sub(" ", text.lower()).strip()


def lsh_bands(threshold: float, num_perm: int = NUM_PERM) -> tuple[int, int]:
    """(bands, rows per band) minimising the chance of missing a pair above the threshold plus that of proposing one
    below it, for the S-curve 1 - (1 - s^r)^b."""
    best, best_cost = (1, num_perm), float("inf")
    s_lo, s_hi = np.linspace(0, threshold, 200), np.linspace(threshold, 1, 200)
    for r in range(1, num_perm + 1):
        if num_perm % r:
            continue
        b = num_perm // r
        false_pos = np.trapezoid(1 - (1 - s_lo**r) ** b, s_lo)
        false_neg = np.trapezoid((1 - s_hi**r) ** b, s_hi)
        if false_pos + false_neg < best_cost:
            best, best_cost = (b, r), false_pos + false_neg
    return best


def _mix(x: np.ndarray) -> np.ndarray:
    """A 64-bit finaliser (splitmix64): spreads polynomial hashes before they are folded to 32 bits."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def shingle_hashes(norm_texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """64-bit hashes of every word 3-gram (a text of fewer words: the whole text) and how many each text has."""
    bufs = [(t or " ").encode("utf-8") + b" " for t in norm_texts]  # each text ends with one space
    data = np.frombuffer(b"".join(bufs), dtype=np.uint8).astype(np.uint64) + np.uint64(1)
    n = len(data)
    base = np.uint64(0x100000001B3)
    powers = np.cumprod(np.full(n, base, dtype=np.uint64))  # base^(i+1) mod 2^64 (numpy wraps)
    prefix = np.concatenate([[np.uint64(0)], np.cumsum(data * powers, dtype=np.uint64)])
    ends = np.cumsum([len(b) for b in bufs])
    starts = ends - np.array([len(b) for b in bufs])
    spaces = np.flatnonzero(data == np.uint64(33))  # b" " + 1: the end of every word
    doc = np.searchsorted(ends, spaces, side="right")  # the text each space belongs to
    # A word starts after the previous space of the same text (or at the text's start).
    word_start = np.concatenate([[0], spaces[:-1] + 1])
    first_of_doc = np.r_[True, doc[1:] != doc[:-1]]
    word_start[first_of_doc] = starts[doc[first_of_doc]]
    n_words = np.bincount(doc, minlength=len(bufs))
    k = SHINGLE_WORDS
    # Shingle j of a text spans words j .. j+k-1; a text of fewer than k words has one shingle: all of it.
    idx = np.arange(len(spaces))
    pos_in_doc = idx - np.repeat(np.cumsum(n_words) - n_words, n_words)
    last = np.minimum(idx + k - 1, idx + (n_words[doc] - 1 - pos_in_doc))
    keep = (pos_in_doc + k <= n_words[doc]) | ((pos_in_doc == 0) & (n_words[doc] < k))
    s, e = word_start[keep], spaces[last[keep]]
    # Hash of bytes [s, e): (prefix[e] - prefix[s]) scaled to a common power so equal spans hash equal anywhere.
    span = (prefix[e] - prefix[s]) * _inverse_powers(powers, s)
    return _mix(span ^ ((e - s).astype(np.uint64) << np.uint64(56))), np.bincount(doc[keep], minlength=len(bufs))


def _inverse_powers(powers: np.ndarray, s: np.ndarray) -> np.ndarray:
    """base^-(s) mod 2^64 for each start s (base is odd, so it is invertible mod 2^64)."""
    inv = np.uint64(pow(0x100000001B3, -1, 1 << 64))
    out = np.empty(len(s), dtype=np.uint64)
    # base^-s = inv^s; computed by square-and-multiply over the bits of s, vectorised
    out[:] = 1
    acc, e = np.full(len(s), inv, dtype=np.uint64), s.astype(np.uint64).copy()
    while np.any(e):
        odd = (e & np.uint64(1)).astype(bool)
        out[odd] *= acc[odd]
        acc *= acc
        e >>= np.uint64(1)
    return out


def _digest(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class Deduper:
    """Stateful: rows are checked in order against every row kept before them and every near duplicate of one
    (across chunks); a duplicate is reported against the kept row."""

    def __init__(self, threshold: float, num_perm: int = NUM_PERM, seed: int = 0):
        self.threshold, self.num_perm = threshold, num_perm
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        self.seeds = rng.integers(0, 2**32, num_perm, dtype=np.uint64).astype(np.uint32)
        self.band_mult = rng.integers(1, 2**63, (self.rows,), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self.exact: dict[bytes, object] = {}
        self.normal: dict[bytes, object] = {}
        # band key -> every kept row with that key: keeping only the first would hide later kept rows that share it
        self.tables: list[dict[int, list[int]]] = [{} for _ in range(self.bands)]
        self.sigs = np.empty((0, num_perm), dtype=np.uint32)
        self.n_sigs = 0
        self.kept_ids: list = []  # the caller's id of the kept row behind each stored signature

    def signatures(self, norm_texts: list[str], batch_shingles: int = 1 << 16) -> np.ndarray:
        hashes, counts = shingle_hashes(norm_texts)
        h32 = (hashes >> np.uint64(32)).astype(np.uint32)
        offsets = np.concatenate([[0], np.cumsum(counts)])
        sig = np.empty((len(norm_texts), self.num_perm), dtype=np.uint32)
        lo = 0
        while lo < len(norm_texts):  # bound the (permutations x shingles) temporary: about 32 MiB
            hi = int(np.searchsorted(offsets, offsets[lo] + batch_shingles, side="right")) - 1
            hi = max(hi, lo + 1)
            # Permutation k: XOR a seed, then a bijective 32-bit mixer. uint32 arithmetic vectorises on AVX2
            # (64-bit multiplies do not), which makes this 6x faster than multiply-shift on 64-bit hashes.
            y = h32[None, offsets[lo]:offsets[hi]] ^ self.seeds[:, None]
            y *= np.uint32(0x9E3779B1)
            y ^= y >> np.uint32(15)
            y *= np.uint32(0x85EBCA77)
            y ^= y >> np.uint32(13)
            sig[lo:hi] = np.minimum.reduceat(y, offsets[lo:hi] - offsets[lo], axis=1).T
            lo = hi
        return sig

    def _store(self, sig: np.ndarray) -> int:
        if self.n_sigs == len(self.sigs):
            grown = np.empty((max(1024, 2 * len(self.sigs)), self.num_perm), dtype=np.uint32)
            grown[: self.n_sigs] = self.sigs[: self.n_sigs]
            self.sigs = grown
        self.sigs[self.n_sigs] = sig
        self.n_sigs += 1
        return self.n_sigs - 1

    def check(self, raw_texts: list[str], ids: list) -> list[tuple[str, object, float] | None]:
        """For each text, in order: None (kept: not seen before) or (kind, the id of the kept row it duplicates,
        estimated similarity); `ids` are the caller's names for the rows (e.g. file:line)."""
        norm = [normalize(t) for t in raw_texts]
        sigs = self.signatures(norm)
        r = self.rows
        keys = (sigs[:, : self.bands * r].reshape(len(norm), self.bands, r).astype(np.uint64) * self.band_mult).sum(
            axis=2, dtype=np.uint64)
        out: list = []
        for i, (raw_text, norm_text) in enumerate(zip(raw_texts, norm)):
            # 16-byte digests, not the texts: the index stays small when the data is larger than memory
            raw, text = _digest(raw_text), _digest(norm_text)
            if raw in self.exact:
                out.append(("exact", self.exact[raw], 1.0))
                continue
            if text in self.normal:
                out.append(("near", self.normal[text], 1.0))
                continue
            found = None
            candidates = sorted({j for band, table in enumerate(self.tables) for j in table.get(int(keys[i, band]), ())})
            if candidates:  # confirmed on the whole signature; the most similar kept row (the earliest on a tie)
                sims = np.mean(self.sigs[candidates] == sigs[i], axis=1)
                best = int(np.argmax(sims))
                if sims[best] >= self.threshold:
                    found = ("near", self.kept_ids[candidates[best]], float(sims[best]))
            # A near duplicate is indexed too, under the kept row it duplicates: a later edit of this copy (close to
            # it, further from the kept row) is then still found. Exact and normalised copies add nothing new.
            slot = self._store(sigs[i])
            self.kept_ids.append(found[1] if found else ids[i])
            for band, table in enumerate(self.tables):
                table.setdefault(int(keys[i, band]), []).append(slot)
            if found:
                out.append(found)
                continue
            self.exact[raw], self.normal[text] = ids[i], ids[i]
            out.append(None)
        return out
