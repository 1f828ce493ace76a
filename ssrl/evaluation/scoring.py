"""Trial scoring: embeddings file IO (npz, Kaldi ark/scp), cosine scores, AS-norm, score files.

Scores are computed for all trials at once with index arrays (no per-trial Python), in chunks
so that memory stays bounded on VoxCeleb1-E/H sized lists.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from scipy import sparse

from ssrl.files import (
    InputError,
    atomic_path,
    check_apart,
    read_table,
    save_npz,
    write_json,
    write_text,
)

_CHUNK = 4096  # trials per block: 2 x 8 MiB at 512-d stays in cache (2x faster than 64k)


#: Embeddings file formats, by suffix: the name always says what the file holds.
EMBEDDING_FORMATS = {".npz": "npz", ".ark": "kaldi", ".scp": "kaldi"}
_ZIP_MAGIC = b"PK\x03\x04"  # every .npz is a zip archive


def embeddings_format(path: str | os.PathLike) -> str:
    """The format ("npz" or "kaldi") a file name says. InputError for any other name: `embed`
    checks its `--out` before minutes of work, so `--out emb.txt` fails at once."""
    suffix = Path(path).suffix.lower()
    if suffix not in EMBEDDING_FORMATS:
        raise InputError(f"{path}: unknown embeddings format (name it .npz, or .ark / .scp for "
                         "Kaldi: both are written side by side)")
    return EMBEDDING_FORMATS[suffix]


def kaldi_pair(path: str | os.PathLike) -> tuple[Path, Path]:
    """The (`X.ark`, `X.scp`) pair of a Kaldi embeddings name `X.ark` or `X.scp`."""
    path = Path(path)
    return path.with_suffix(".ark"), path.with_suffix(".scp")


def save_embeddings(path: str | os.PathLike, utt_ids: Sequence[str], emb: np.ndarray) -> None:
    """Write embeddings atomically in the format the name says (`embeddings_format`).

    `.npz`: arrays `utt_ids` (str) and `emb` (float32 [N, D]). `.ark` or `.scp`: both `X.ark`
    (one float32 Kaldi vector per utterance) and `X.scp`, as Kaldi's `ark,scp:X.ark,X.scp` and
    WeSpeaker write them; the scp names the ark as given here (relative paths are read relative
    to the working directory, as in Kaldi).
    """
    fmt = embeddings_format(path)
    emb = np.asarray(emb, dtype=np.float32)
    if emb.ndim != 2 or emb.shape[0] != len(utt_ids):
        raise ValueError(f"{len(utt_ids)} utterance ids but embeddings of shape {emb.shape}")
    counts = Counter(utt_ids)
    twice = next((u for u, n in counts.items() if n > 1), None)
    if twice is not None:  # a Kaldi ark would silently keep only one of them
        raise ValueError(f"utterance id {twice!r} given {counts[twice]} times")
    if fmt == "npz":
        save_npz(path, utt_ids=np.asarray(list(utt_ids), dtype=str), emb=emb)
    else:
        _save_kaldi(path, list(utt_ids), emb)


class _NamedFile:
    """A file being written under a temporary name that reports its final name to kaldiio,
    which puts `file.name` into the scp lines."""

    def __init__(self, file: BinaryIO, name: str) -> None:
        self._file, self.name = file, name

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def tell(self) -> int:
        return self._file.tell()


def _save_kaldi(path: str | os.PathLike, utt_ids: list[str], emb: np.ndarray) -> None:
    """`X.ark` + `X.scp` through kaldiio, atomically: the ark is in place before the scp that
    points into it."""
    import kaldiio

    bad = next((u for u in utt_ids if not u or u.split() != [u]), None)
    if bad is not None:
        raise ValueError(f"utterance id {bad!r} cannot be a Kaldi key (empty or holds a space)")
    ark, scp = kaldi_pair(path)
    with atomic_path(scp) as tmp_scp, atomic_path(ark) as tmp_ark, \
            open(tmp_ark, "wb") as ark_file, open(tmp_scp, "w", encoding="utf-8") as scp_file:
        kaldiio.save_ark(_NamedFile(ark_file, os.fspath(ark)), dict(zip(utt_ids, emb)),
                         scp=scp_file)


def check_finite(emb: np.ndarray, utt_ids: list[str], source: str | Path) -> None:
    """NaN or infinite embeddings (a diverged model, a corrupt file) are refused, naming the
    file and the first utterance, before they become NaN scores or a silent EER."""
    bad = ~np.isfinite(emb).all(axis=1) if emb.ndim == 2 else np.zeros(0, dtype=bool)
    if bad.any():
        first = int(np.argmax(bad))
        raise InputError(f"{source}: {int(bad.sum())} embedding(s) hold NaN or infinite values "
                         f"(first: utterance {utt_ids[first]!r})")


def load_embeddings(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """(utt_ids, emb float32 [N, D]) of an embeddings file: `.npz` as `save_embeddings` writes
    it, or a Kaldi `.scp` / `.ark` of vectors (ours, Kaldi's or WeSpeaker's). InputError names
    a missing file, and a file whose content is not what its name says."""
    path = Path(path)
    fmt = embeddings_format(path)
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    utt_ids, emb = _load_npz(path) if fmt == "npz" else _load_kaldi(path)
    if emb.ndim != 2 or emb.shape[0] != len(utt_ids):
        raise InputError(f"{path}: {len(utt_ids)} utterance ids but emb of shape {emb.shape}")
    check_finite(emb, utt_ids, path)
    return utt_ids, emb


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == _ZIP_MAGIC


def _load_npz(path: Path) -> tuple[list[str], np.ndarray]:
    if not _is_zip(path):
        raise InputError(f"{path}: not an .npz file (no zip archive); Kaldi embeddings must be "
                         "named .ark or .scp")
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [key for key in ("utt_ids", "emb") if key not in data.files]
            if missing:
                raise InputError(f"{path}: not an embeddings file (missing {', '.join(missing)})")
            return data["utt_ids"].astype(str).tolist(), data["emb"].astype(np.float32,
                                                                            copy=False)
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read embeddings ({err})") from None


def _load_kaldi(path: Path) -> tuple[list[str], np.ndarray]:
    """Vectors of a Kaldi scp (through the arks it points into) or ark, in file order."""
    import kaldiio

    kind = path.suffix.lower()[1:]
    if _is_zip(path):
        raise InputError(f"{path}: a zip (.npz) file, not a Kaldi {kind}; name it .npz")
    reader = kaldiio.load_scp_sequential(str(path)) if kind == "scp" else \
        kaldiio.load_ark(str(path))
    utt_ids: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    try:
        for key, vec in reader:
            if key in seen:
                raise InputError(f"{path}: utterance {key!r} occurs more than once")
            vec = np.asarray(vec)
            if vec.ndim != 1 or (rows and vec.shape != rows[0].shape):
                raise InputError(f"{path}: entry {key!r} is not a vector like the first one "
                                 f"(shape {vec.shape}; expected one embedding per utterance)")
            seen.add(key)
            utt_ids.append(key)
            rows.append(vec.astype(np.float32, copy=False))
    except FileNotFoundError as err:
        raise InputError(f"{path}: ark file {err.filename} not found (an scp names its arks "
                         "relative to the working directory, as in Kaldi)") from None
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - kaldiio's parse errors have many types
        raise InputError(f"{path}: not a Kaldi {kind} of embeddings "
                         f"({type(err).__name__}: {err})".replace("\n", " ")) from None
    emb = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return utt_ids, emb


def _normalise(x: np.ndarray, mean: np.ndarray | None) -> np.ndarray:
    """Row-wise L2 normalisation (after optional mean subtraction), float32, new array."""
    x = np.asarray(x, dtype=np.float32)
    x = x - np.asarray(mean, dtype=np.float32) if mean is not None else x.copy()
    norms = np.sqrt(np.einsum("...i,...i->...", x, x))
    x /= np.maximum(norms, 1e-12)[..., None]
    return x


def _trial_index(utt_ids: Sequence[str], enroll: Sequence[str], test: Sequence[str]
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map trial utterances to rows: (used rows, enrol position in used, test position in used).

    Only the embeddings that occur in some trial are normalised later (`used`). The look-up is
    a hashed pandas index: a Python dict costs ~0.3 s per VoxCeleb1-E side.
    """
    if len(enroll) != len(test):
        raise ValueError(f"{len(enroll)} enrolment but {len(test)} test utterances")
    index = pd.Index(utt_ids)
    if not index.is_unique:
        dup = index[index.duplicated()][0]
        raise InputError(f"embeddings: utterance id {dup!r} occurs more than once")
    rows = index.get_indexer(pd.Index(list(enroll) + list(test))).astype(np.int64)
    if (rows < 0).any():
        missing = (list(enroll) + list(test))[int(np.argmax(rows < 0))]
        raise InputError(f"trial utterance {missing!r} has no embedding")
    used, inverse = np.unique(rows, return_inverse=True)
    return used, inverse[: len(enroll)], inverse[len(enroll):]


def _rows(emb: np.ndarray, used: np.ndarray) -> np.ndarray:
    """emb[used], without the copy when every row is used (`used` is sorted and unique)."""
    return emb if len(used) == len(emb) else np.asarray(emb)[used]


def _paired_dots(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray) -> np.ndarray:
    """out[i] = a[ia[i]] . b[ib[i]], in blocks small enough to stay in cache."""
    out = np.empty(len(ia), dtype=np.float32)
    for s in range(0, len(ia), _CHUNK):
        sl = slice(s, s + _CHUNK)
        out[sl] = np.einsum("ij,ij->i", a[ia[sl]], b[ib[sl]])
    return out


def cosine_scores(utt_ids: Sequence[str], emb: np.ndarray, enroll: Sequence[str],
                  test: Sequence[str], mean: np.ndarray | None = None) -> np.ndarray:
    """Cosine similarity of each (enroll[i], test[i]) pair, float32 [n_trials].

    `mean` (e.g. the training-set mean embedding) is subtracted before L2 normalisation.
    InputError names a trial utterance that has no embedding.
    """
    used, ie, it = _trial_index(utt_ids, enroll, test)
    x = _normalise(_rows(emb, used), mean)
    return _paired_dots(x, ie, x, it)


def cohort_from_clusters(emb: np.ndarray, labels: np.ndarray,
                         mean: np.ndarray | None = None) -> np.ndarray:
    """AS-norm cohort from pseudo-labelled training embeddings: one vector per cluster.

    Each embedding is (mean-subtracted and) L2-normalised, averaged per cluster, and the
    average L2-normalised again; clusters without members are skipped. Pass the same `mean`
    here as to `as_norm_scores` so that cohort and trials live in the same space.
    Returns float32 [n_nonempty_clusters, D], rows in increasing label order.
    """
    x = _normalise(emb, mean)
    labels = np.asarray(labels).ravel()
    if labels.shape[0] != x.shape[0]:
        raise ValueError(f"{x.shape[0]} embeddings but {labels.shape[0]} labels")
    _, code = np.unique(labels, return_inverse=True)
    ones = np.ones(len(code), dtype=np.float32)
    membership = sparse.csr_matrix((ones, (code, np.arange(len(code)))))  # [clusters, N]
    return _normalise(membership @ x, None)


def _cohort_stats(x: np.ndarray, cohort: np.ndarray, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof 0) of each row's top_n highest cosine scores against the cohort."""
    mu = np.empty(len(x), dtype=np.float32)
    sd = np.empty(len(x), dtype=np.float32)
    for s in range(0, len(x), _CHUNK):
        sims = x[s: s + _CHUNK] @ cohort.T
        top = np.partition(sims, sims.shape[1] - top_n, axis=1)[:, -top_n:]
        mu[s: s + len(top)] = top.mean(axis=1)
        sd[s: s + len(top)] = top.std(axis=1)
    return mu, np.maximum(sd, 1e-6)


def as_norm_scores(utt_ids: Sequence[str], emb: np.ndarray, enroll: Sequence[str],
                   test: Sequence[str], cohort: np.ndarray, top_n: int,
                   mean: np.ndarray | None = None) -> np.ndarray:
    """Adaptive symmetric score normalisation (AS-norm) of the cosine trial scores.

    For every enrolment and test embedding, the `top_n` highest cosine scores against the
    cohort give a mean mu and standard deviation sigma (population std, floored at 1e-6);
    each raw score s becomes ((s - mu_e) / sigma_e + (s - mu_t) / sigma_t) / 2.
    `top_n` larger than the cohort uses the whole cohort. Cohort rows are L2-normalised here;
    `mean` applies to the trial embeddings only (build the cohort with the same mean).
    """
    if top_n < 1:
        raise ValueError(f"top_n must be positive, got {top_n}")
    cohort = _normalise(cohort, None)
    if cohort.ndim != 2 or len(cohort) == 0:
        raise ValueError("the AS-norm cohort is empty")
    used, ie, it = _trial_index(utt_ids, enroll, test)
    x = _normalise(_rows(emb, used), mean)
    raw = _paired_dots(x, ie, x, it)
    mu, sd = _cohort_stats(x, cohort, min(top_n, len(cohort)))
    return 0.5 * ((raw - mu[ie]) / sd[ie] + (raw - mu[it]) / sd[it])


def write_scores(path: str | os.PathLike, enroll: Sequence[str], test: Sequence[str],
                 scores: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Write `enroll test score [target|nontarget]` lines atomically, the order Kaldi,
    WeSpeaker's compute_metrics.py and most speech tools read (labels: 1/True = target)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not len(enroll) == len(test) == len(scores):
        raise ValueError("enroll, test and scores differ in length")
    if labels is None:
        lines = (f"{e} {t} {s:.6f}\n" for e, t, s in zip(enroll, test, scores.tolist()))
    else:
        names = np.where(np.asarray(labels).astype(bool), "target", "nontarget")
        if len(names) != len(scores):
            raise ValueError("labels and scores differ in length")
        lines = (f"{e} {t} {s:.6f} {lab}\n"
                 for e, t, s, lab in zip(enroll, test, scores.tolist(), names))
    write_text(path, "".join(lines))


def read_scores(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """(scores, labels or None) of a score file written by `write_scores`."""
    scores, labels = [], []
    for lineno, fields in read_table(path, ncols=None):
        if len(fields) not in (3, 4):
            raise InputError(f"{path}:{lineno}: expected 'enroll test score [label]'")
        try:
            scores.append(float(fields[2]))
        except ValueError:
            raise InputError(f"{path}:{lineno}: score {fields[2]!r} is not a number") from None
        if not np.isfinite(scores[-1]):
            raise InputError(f"{path}:{lineno}: score {fields[2]!r} is not finite")
        if len(fields) == 4:
            labels.append(fields[3] == "target")
    if labels and len(labels) != len(scores):
        raise InputError(f"{path}: some lines have a label and some do not")
    return np.array(scores), (np.array(labels, dtype=bool) if labels else None)


def score_lists(embeddings: str | os.PathLike, lists: dict[str, Path], out: Path,
                utt2spk: dict[str, str] | None = None, norm: str = "none",
                train_embeddings: str | os.PathLike | None = None,
                train_labels: str | os.PathLike | None = None, top_n: int = 300,
                scores_dir: Path | None = None, replicates: int = 1000, seed: int = 0,
                confidence: float = 0.95, threads: int = 1) -> dict:
    """The `score` step: cosine (or mean-subtracted, or AS-normed) scores of every trial list,
    EER/minDCF with speaker-bootstrap intervals for the labelled ones; writes `out`
    (metrics.json) and one score file per list. Everything is computed before anything is
    written, so a list that cannot be evaluated leaves no half-written output."""
    from ssrl.data.kaldi import read_trials
    from ssrl.evaluation.bootstrap import SortedTrials, interval, replicate_metrics, trial_resamples
    from ssrl.evaluation.metrics import evaluate

    if scores_dir is not None:  # the score files are outputs too: none may be an input
        for name in lists:
            check_apart(Path(scores_dir) / f"scores_{name}.txt", embeddings, *lists.values(),
                        train_embeddings, train_labels)
    ids, emb = load_embeddings(embeddings)
    mean = cohort = None
    if norm != "none":
        if not train_embeddings:
            raise InputError(f"--norm {norm} needs --train-embeddings")
        _, tr_emb = load_embeddings(train_embeddings)
        mean = tr_emb.mean(axis=0)
        if norm == "asnorm":
            if not train_labels:
                raise InputError("--norm asnorm needs --labels (pseudo labels of the training set)")
            with np.load(train_labels) as z:
                labels = z["labels"]
            cohort = cohort_from_clusters(tr_emb - mean, labels)
    if not lists:
        raise InputError("no trial lists: give --trials, --test-dir or --store")
    known = set(ids)
    results: dict[str, dict] = {}
    score_files: dict[str, tuple] = {}
    for name, path in lists.items():
        t = read_trials(path, known=known)
        if cohort is not None:
            scores = as_norm_scores(ids, emb, t.enroll, t.test, cohort, top_n, mean=mean)
        else:
            scores = cosine_scores(ids, emb, t.enroll, t.test, mean=mean)
        if not np.isfinite(scores).all():  # e.g. an all-zero embedding has no direction
            i = int(np.argmax(~np.isfinite(scores)))
            raise InputError(f"{embeddings}: the score of trial {t.enroll[i]} {t.test[i]} of "
                             f"{path} is not finite (an all-zero embedding?)")
        file = f"scores_{name}.txt"
        score_files[file] = (t.enroll, t.test, scores, t.labels)
        if t.labels is None:
            results[name] = {"n_trials": len(t), "labelled": False, "scores": file}
            continue
        for word, missing in (("target", not t.labels.any()), ("non-target", t.labels.all())):
            if missing:
                raise InputError(f"{path}: no {word} trials: EER and minDCF are undefined "
                                 "(remove the labels to score it without metrics)")
        m = evaluate(scores, t.labels)
        if replicates:
            spk = utt2spk if utt2spk and all(u in utt2spk for u in known) else None
            resamples, ue, ut, unit = trial_resamples(t.enroll, t.test, spk, replicates, seed)
            boot = replicate_metrics(SortedTrials(scores, t.labels, ue, ut), resamples, threads)
            m["ci"] = {k: interval(v, confidence) for k, v in boot.items()}
            m["bootstrap"] = {"replicates": replicates, "seed": seed, "unit": unit,
                              "units": len(resamples.units), "confidence": confidence}
        results[name] = {**m, "labelled": True, "scores": file}
    report = {"norm": norm, "trials": results}
    if scores_dir is not None:
        for file, (e, t, scores, labels) in score_files.items():
            write_scores(Path(scores_dir) / file, e, t, scores, labels)
    write_json(out, report)
    return report
