"""Component signatures and teacher-to-student similarity matrices (the paper's, subspace, CKA,
and heads compared by what they read and what they write)."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

import numpy as np
import torch

from ..components import Component
from ..config.options import SIMILARITIES, check_similarity  # noqa: F401 (re-exported)
from ..errors import IncompatiblePairError
from ..models import CircuitModel
from ..tasks import Task
from . import engine

#: The paper's MLP signature: the top-3 eigenvectors of the output second moment.
N_EIGENVECTORS = 3
#: Dimension of the MLP output subspaces compared by ``similarity="subspace"``. Chosen by
#: measurement (docs/method.md): 8 directions separate different layers of SmolLM2-135M best
#: (off-diagonal <= 0.16) while a layer and its 4-bit copy keep 0.93 on average (min 0.87).
SUBSPACE_DIM = 8
#: At most this many prompts (the first ones) give each head's writes at the prediction
#: positions for ``similarity="combined"``: 16 already separate every head of SmolLM2-135M from
#: the others against its 4-bit copy (docs/method.md), and the writes cost
#: ``n_heads * prompts * d_model`` floats per model.
OUTPUT_PROMPTS = 64
#: Two models write to one residual basis when the token embeddings of the task's tokens point
#: the same way on average (mean cosine of the two embedding rows of each token) at least this
#: much: a quantised, pruned or fine-tuned copy, or a student initialised from its teacher
#: (0.94 to 1.0 on the zoo's four pairs); two models trained apart score near 0.
SHARED_BASIS_MIN_COSINE = 0.5


@dataclass
class Signatures:
    """What similarity is computed from, for every head and MLP of one model on one task.

    Everything here is independent of the number of prompts except ``head_outputs`` and
    ``mlp_outputs``, which are kept only for a task of one chunk (at most
    ``engine.PROMPT_BATCH`` prompts) and are None for a task of several: the exact-copy check
    reads the digests, and CKA over several chunks streams both models together
    (:func:`similarity_matrices`).
    """

    heads: list[Component]
    mlps: list[Component]
    patterns: np.ndarray  # [n_heads_total, query, key], averaged over prompts
    head_outputs: np.ndarray | None  # [n_heads_total, tokens, d_head] (z); one chunk only
    mlp_outputs: np.ndarray | None  # [n_layers, tokens, d_model]; one chunk only
    mlp_eigenvectors: np.ndarray  # [n_layers, d_model, k], top eigenvectors of X^T X / n
    #: per head / per MLP, a digest of its float32 outputs over every token in prompt order
    #: (and of their shape): equal exactly when the outputs are equal bit for bit
    head_digests: tuple[bytes, ...] = ()
    mlp_digests: tuple[bytes, ...] = ()
    #: per head, what it writes to the residual stream (its z through the output projection,
    #: the bias left out) at the prediction position of each of the first ``OUTPUT_PROMPTS``
    #: prompts: [n_heads_total, prompts, d_model]; None when the family declares no block
    #: layout (the output projection is unknown)
    head_writes: np.ndarray | None = None


class _Digests:
    """Streaming SHA-256 of each component's outputs: the bytes of its float32 outputs chunk
    after chunk in prompt order, then their total shape, so two digests are equal exactly when
    the concatenated outputs (and their shapes) are equal, without holding them."""

    def __init__(self, n: int) -> None:
        self._hashes = [hashlib.sha256() for _ in range(n)]
        self._tokens = [0] * n
        self._width = [0] * n

    def update(self, rows: torch.Tensor, first: int = 0) -> None:
        """Components ``first, first + 1, ...`` of one chunk: ``rows`` [n, tokens, width]."""
        data = rows.detach().float().contiguous().cpu().numpy()
        for i, row in enumerate(data, start=first):
            self._hashes[i].update(memoryview(row).cast("B"))
            self._tokens[i] += int(row.shape[0])
            self._width[i] = int(row.shape[1])

    def digests(self) -> tuple[bytes, ...]:
        out = []
        for h, tokens, width in zip(self._hashes, self._tokens, self._width, strict=True):
            final = h.copy()
            final.update(struct.pack("<qq", tokens, width))
            out.append(final.digest())
        return tuple(out)


def _head_rows(z: torch.Tensor) -> torch.Tensor:
    """z [n, seq, head, d_head] as [head, n * seq, d_head] float32 (tokens in prompt order)."""
    return z.float().permute(2, 0, 1, 3).reshape(z.shape[2], -1, z.shape[-1])


#: Signatures of models with the same weights (two loads of one teacher) are shared in the
#: process, the newest few kept: they cost a forward pass with every head captured.
_SHARED: dict[tuple[str, ...], Signatures] = {}
_SHARED_MAX = 8


def signatures(model: CircuitModel, task: Task) -> Signatures:
    """Collect attention patterns, head outputs and MLP outputs from the clean run.

    Memoised per model object and, across objects, by weight fingerprint, dtype, device kind and
    task, so a teacher loaded once per pair is captured once.
    """
    key = ("signatures", task.fingerprint())
    memo = engine.model_cache(model)
    if key in memo:
        return memo[key]
    shared_key = (model.weights_fingerprint, model.dtype, model.device_kind, task.fingerprint())
    if shared_key in _SHARED:
        memo[key] = _SHARED[shared_key]
        return memo[key]
    names = [engine.pattern_hook(i) for i in range(model.n_layers)]
    names += [engine.z_hook(i) for i in range(model.n_layers)]
    names += [engine.mlp_out_hook(i) for i in range(model.n_layers)]
    heads = [Component.head_at(layer, h) for layer in range(model.n_layers)
             for h in range(model.n_heads)]
    n = engine.task_tensors(model, task).n_prompts
    chunks = engine.prompt_chunks(n)
    if len(chunks) == 1:
        result = _signatures_at_once(model, task, names, heads)
    else:
        result = _signatures_by_chunk(model, task, names, heads, chunks, n)
    memo[key] = result
    _SHARED[shared_key] = result
    while len(_SHARED) > _SHARED_MAX:
        _SHARED.pop(next(iter(_SHARED)))
    return result


def _signatures_at_once(
    model: CircuitModel, task: Task, names: list[str], heads: list[Component]
) -> Signatures:
    """Signatures from one clean run of the whole task (a task of one chunk)."""
    run = engine.clean_run(model, task, cache_names=names)
    cache = run.capture.cache
    patterns, outputs, mlps, eig = [], [], [], []
    head_digests, mlp_digests = _Digests(len(heads)), _Digests(model.n_layers)
    positions = engine.task_tensors(model, task).positions
    with torch.no_grad():
        writes = _head_writes(model, cache, positions)
        for layer in range(model.n_layers):
            pattern = cache[engine.pattern_hook(layer)].float().mean(0)  # [head, q, k]
            patterns.append(pattern.cpu().numpy())
            z = _head_rows(cache[engine.z_hook(layer)]).cpu()  # [head, n * seq, d_head]
            outputs.append(z)
            head_digests.update(z, first=layer * model.n_heads)
            out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
            mlps.append(out.numpy())
            mlp_digests.update(out[None], first=layer)
            eig.append(top_eigenvectors(out.double().numpy(), max(N_EIGENVECTORS, SUBSPACE_DIM)))
    return Signatures(
        heads=heads,
        mlps=[Component.mlp_at(i) for i in range(model.n_layers)],
        patterns=np.concatenate(patterns, axis=0).astype(np.float64),
        head_outputs=torch.cat(outputs, dim=0).numpy().astype(np.float64),
        mlp_outputs=np.stack(mlps).astype(np.float64),
        mlp_eigenvectors=np.stack(eig),
        head_digests=head_digests.digests(),
        mlp_digests=mlp_digests.digests(),
        head_writes=writes,
    )


def _head_writes(
    model: CircuitModel, cache: dict[str, torch.Tensor], positions: torch.Tensor,
    limit: int = OUTPUT_PROMPTS,
) -> np.ndarray | None:
    """What every head writes to the residual stream at each prompt's prediction position (the
    first ``limit`` prompts of ``cache``): [n_heads_total, prompts, d_model] float64.

    Each head's z is sent through its layer's own output projection alone, and the projection
    of zeros (its bias) subtracted, so the write is exactly that head's term of the attention
    output whatever module the family uses (Linear, GPT-2's Conv1D, grouped-query attention).
    None when the family declares no block layout.
    """
    parts = engine._block_parts(model)
    if parts is None:
        return None
    n = min(int(positions.shape[0]), limit)
    rows = torch.arange(n, device=positions.device)
    written = []
    for layer, part in enumerate(parts):
        z = cache[engine.z_hook(layer)][:n]  # [n, seq, head, d_head]
        at = z[rows, positions[:n].to(z.device)]  # [n, head, d_head]
        n_heads, d_head = at.shape[1], at.shape[2]
        alone = at.new_zeros((n_heads, n, n_heads * d_head))
        for h in range(n_heads):
            alone[h, :, h * d_head:(h + 1) * d_head] = at[:, h]
        out = engine._first(part.attn_output(alone))
        bias = engine._first(part.attn_output(alone[:1, :1] * 0))
        written.append((out - bias).double().cpu().numpy())
    return np.concatenate(written, axis=0)


def _signatures_by_chunk(
    model: CircuitModel,
    task: Task,
    names: list[str],
    heads: list[Component],
    chunks: list[slice],
    n: int,
) -> Signatures:
    """Signatures of a task of several chunks, one chunk's clean run at a time, holding only
    statistics whose size does not depend on the number of prompts: attention patterns summed
    and MLP output second moments X^T X accumulated (float64), and a streaming digest of every
    head's and MLP's outputs for the exact-copy check. No per-token outputs are kept
    (``head_outputs`` and ``mlp_outputs`` are None); CKA streams both models instead."""
    layers = range(model.n_layers)
    pattern_sums: list[np.ndarray | None] = [None for _ in layers]
    moments: list[np.ndarray | None] = [None for _ in layers]
    head_digests, mlp_digests = _Digests(len(heads)), _Digests(model.n_layers)
    tokens = 0
    written: list[np.ndarray | None] = []
    tensors = engine.task_tensors(model, task)
    with torch.no_grad():
        for prompts in chunks:
            cache = engine.clean_run(model, task, cache_names=names, prompts=prompts).capture.cache
            if prompts.start < OUTPUT_PROMPTS:  # the first OUTPUT_PROMPTS prompts only
                written.append(_head_writes(model, cache, tensors.positions[prompts],
                                            OUTPUT_PROMPTS - prompts.start))
            for layer in layers:
                pattern = cache[engine.pattern_hook(layer)].float().double().sum(0).cpu().numpy()
                total = pattern_sums[layer]
                pattern_sums[layer] = pattern if total is None else total + pattern
                z = _head_rows(cache[engine.z_hook(layer)])
                head_digests.update(z, first=layer * model.n_heads)
                out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
                mlp_digests.update(out[None], first=layer)
                x = out.double().numpy()
                moment = moments[layer]
                moments[layer] = x.T @ x if moment is None else moment + x.T @ x
                if layer == 0:
                    tokens += x.shape[0]
            del cache
    k = max(N_EIGENVECTORS, SUBSPACE_DIM)
    eig = [_top_eigenvectors_of(m / tokens, k) for m in moments if m is not None]
    parts = [w for w in written if w is not None]
    writes = np.concatenate(parts, axis=1) if parts and len(parts) == len(written) else None
    patterns = [p / n for p in pattern_sums if p is not None]
    return Signatures(
        heads=heads,
        mlps=[Component.mlp_at(i) for i in layers],
        patterns=np.concatenate(patterns, axis=0).astype(np.float64),
        head_outputs=None,
        mlp_outputs=None,
        mlp_eigenvectors=np.stack(eig),
        head_digests=head_digests.digests(),
        mlp_digests=mlp_digests.digests(),
        head_writes=writes,
    )


def _top_eigenvectors_of(second_moment: np.ndarray, k: int) -> np.ndarray:
    """Top-k eigenvectors (columns, largest eigenvalue first) of a symmetric second moment."""
    values, vectors = np.linalg.eigh(second_moment)
    order = np.argsort(values)[::-1][:k]
    return vectors[:, order]


def top_eigenvectors(x: np.ndarray, k: int = N_EIGENVECTORS) -> np.ndarray:
    """Top-k eigenvectors (columns, largest eigenvalue first) of the second moment X^T X / n."""
    second_moment = x.T @ x / x.shape[0]
    values, vectors = np.linalg.eigh(second_moment)
    order = np.argsort(values)[::-1][:k]
    return vectors[:, order]


def pattern_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] mean over query rows of the cosine between attention-pattern rows.

    ``teacher`` [n_t, q, k] and ``student`` [n_s, q, k] must share token positions.
    """
    if teacher.shape[1:] != student.shape[1:]:
        raise ValueError(
            f"attention patterns cover different positions ({teacher.shape[1:]} vs "
            f"{student.shape[1:]}): pattern similarity needs the same tokenizer and prompts; "
            "use matching='causal'"
        )
    t = teacher / np.maximum(np.linalg.norm(teacher, axis=-1, keepdims=True), 1e-12)
    s = student / np.maximum(np.linalg.norm(student, axis=-1, keepdims=True), 1e-12)
    return np.einsum("aqk,bqk->abq", t, s).mean(-1)


def _identical(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] True where a teacher signature equals a student signature bit for bit.

    Cosines of identical vectors come out of floating point as 0.9999999999999998; a component
    compared with an exact copy of itself is set to exactly 1, so a model compared with itself
    scores exactly 1.0.
    """
    if teacher.shape[1:] != student.shape[1:]:
        return np.zeros((len(teacher), len(student)), dtype=bool)
    t = teacher.reshape(len(teacher), -1)
    s = student.reshape(len(student), -1)
    # hash rows first, so equal-looking rows are compared in full only when they may be equal
    t_keys = [row.tobytes() for row in t]
    s_index: dict[bytes, list[int]] = {}
    for j, row in enumerate(s):
        s_index.setdefault(row.tobytes(), []).append(j)
    same = np.zeros((len(teacher), len(student)), dtype=bool)
    for i, key in enumerate(t_keys):
        for j in s_index.get(key, ()):
            same[i, j] = True
    return same


def _identical_digests(
    teacher: tuple[bytes, ...], student: tuple[bytes, ...]
) -> np.ndarray:
    """[n_t, n_s] True where a teacher component's output digest equals a student one's: what
    :func:`_identical` says of the outputs themselves, read from :class:`_Digests`."""
    s_index: dict[bytes, list[int]] = {}
    for j, key in enumerate(student):
        s_index.setdefault(key, []).append(j)
    same = np.zeros((len(teacher), len(student)), dtype=bool)
    for i, key in enumerate(teacher):
        for j in s_index.get(key, ()):
            same[i, j] = True
    return same


def _exact_for_copies(
    values: np.ndarray,
    teacher_inputs: np.ndarray | tuple[bytes, ...],
    student_inputs: np.ndarray | tuple[bytes, ...],
) -> np.ndarray:
    """``values`` clipped to [-1, 1], exactly 1 where the two components' inputs (arrays, or
    tuples of output digests) are identical."""
    values = np.clip(values, -1.0, 1.0)
    if isinstance(teacher_inputs, tuple) and isinstance(student_inputs, tuple):
        values[_identical_digests(teacher_inputs, student_inputs)] = 1.0
    else:
        assert isinstance(teacher_inputs, np.ndarray) and isinstance(student_inputs, np.ndarray)
        values[_identical(teacher_inputs, student_inputs)] = 1.0
    return values


def eigenvector_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] mean absolute cosine between index-matched top eigenvectors.

    ``teacher`` [n_t, d, k] and ``student`` [n_s, d, k] (unit columns; the first
    ``N_EIGENVECTORS`` are used). Eigenvectors have no sign, hence the absolute value; the i-th
    teacher direction is compared with the i-th student one, so identical MLPs score 1.
    """
    _same_width(teacher, student)
    k = N_EIGENVECTORS
    return np.abs(np.einsum("adk,bdk->abk", teacher[..., :k], student[..., :k])).mean(-1)


def subspace_similarity(
    teacher: np.ndarray, student: np.ndarray, k: int = SUBSPACE_DIM
) -> np.ndarray:
    """[n_t, n_s] mean squared cosine of the principal angles between top-k subspaces.

    ``teacher`` [n_t, d, >=k] and ``student`` [n_s, d, >=k] hold orthonormal eigenvectors,
    largest eigenvalue first; U, V are their first k columns and the similarity is
    ``||U^T V||_F^2 / k = (1/k) sum_i cos^2(theta_i)``, theta_i the principal angles. 1 when the
    subspaces coincide, whatever basis the eigensolver picked inside them, which is what the
    paper's index-matched eigenvectors lack: when eigenvalues are close a small perturbation
    rotates the eigenvectors within their span and the paper's score falls (to 0.09 for one
    layer of SmolLM2-135M against its 4-bit copy) although the MLP writes to the same subspace.
    Two random k-dimensional subspaces of R^d score k/d on average.
    """
    _same_width(teacher, student)
    k = min(k, teacher.shape[2], student.shape[2])
    u, v = teacher[..., :k], student[..., :k]
    overlap = np.einsum("adi,bdj->abij", u, v)
    return (overlap**2).sum(axis=(2, 3)) / k


def output_similarity(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] cosine between what two heads write, centred over prompts.

    ``teacher`` [n_t, prompts, d] and ``student`` [n_s, prompts, d] are each head's writes to
    the residual stream at the prediction positions (:attr:`Signatures.head_writes`), in one
    residual basis. Each head's mean write over the prompts is taken out (a head that writes the
    same vector on every prompt carries its information in how it varies), the rest flattened
    and compared by cosine: 1 for the same writes up to a positive scale, near 0 for heads that
    write to unrelated directions (most pairs on a real model, even heads whose attention
    patterns are near-identical), 0 for a head that writes nothing (a pruned one).
    """
    if teacher.shape[1:] != student.shape[1:]:
        raise IncompatiblePairError(
            f"head writes cover different prompts or widths ({teacher.shape[1:]} vs "
            f"{student.shape[1:]}): output similarity needs the same task and one residual width"
        )

    def unit(x: np.ndarray) -> np.ndarray:
        flat = (x - x.mean(axis=1, keepdims=True)).reshape(len(x), -1)
        return flat / np.maximum(np.linalg.norm(flat, axis=1, keepdims=True), 1e-12)

    return unit(teacher) @ unit(student).T


def shares_residual_basis(teacher: CircuitModel, student: CircuitModel, task: Task) -> bool:
    """True when the two models write to one residual basis: the same width, and the token
    embeddings of the task's tokens point the same way (mean cosine of each token's two
    embedding rows >= ``SHARED_BASIS_MIN_COSINE``). A quantised, pruned or fine-tuned copy and a
    student initialised from its teacher do; two models trained apart do not, and comparing
    their writes direction by direction would compare noise."""
    if teacher.d_model != student.d_model:
        return False
    try:
        t_embed = teacher.hf_model.get_input_embeddings().weight
        s_embed = student.hf_model.get_input_embeddings().weight
    except (AttributeError, NotImplementedError):
        return False
    ids = torch.unique(engine.task_tensors(teacher, task).tokens).cpu()
    if int(ids.max()) >= min(t_embed.shape[0], s_embed.shape[0]):
        return False
    with torch.no_grad():
        a = t_embed.detach()[ids.to(t_embed.device)].double().cpu()
        b = s_embed.detach()[ids.to(s_embed.device)].double().cpu()
        cosine = torch.nn.functional.cosine_similarity(a, b, dim=1)
    return float(cosine.mean()) >= SHARED_BASIS_MIN_COSINE


def silent_heads(writes: np.ndarray) -> np.ndarray:
    """[n] True for a head that writes nothing (a pruned one: its writes' norm is at most
    ``1e-6`` of the median head's), whose output cannot be compared with anything."""
    norms = np.linalg.norm(writes.reshape(len(writes), -1), axis=1)
    return norms <= 1e-6 * float(np.median(norms))


def combined_head_similarity(
    patterns: np.ndarray, writes: np.ndarray | None
) -> np.ndarray:
    """``similarity="combined"`` for heads: the mean of the attention-pattern similarity (what
    a head reads) and the output similarity (what it writes), the pattern similarity alone
    where the output similarity is NaN (a head that writes nothing) or ``writes`` is None (the
    models share no residual basis). Both [n_t, n_s]."""
    if writes is None:
        return patterns
    return np.where(np.isnan(writes), patterns, (patterns + writes) / 2.0)


def _same_width(teacher: np.ndarray, student: np.ndarray) -> None:
    if teacher.shape[1] != student.shape[1]:
        raise IncompatiblePairError(
            f"MLP outputs have different widths ({teacher.shape[1]} vs {student.shape[1]}): "
            "eigenvector and subspace similarity need one residual width; use "
            "similarity='cka', which compares tokens instead of directions"
        )


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between activations x [N, d1] and y [N, d2] over the same N tokens."""
    x = x - x.mean(0, keepdims=True)
    y = y - y.mean(0, keepdims=True)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else 0.0


def cka_matrix(teacher: np.ndarray, student: np.ndarray) -> np.ndarray:
    """[n_t, n_s] linear CKA between every pair of activation sets ([n, N, d] each)."""
    if teacher.shape[1] != student.shape[1]:
        raise ValueError(
            f"CKA needs the same tokens on both sides ({teacher.shape[1]} vs "
            f"{student.shape[1]}); use the same tokenizer and task"
        )
    return np.array([[linear_cka(a, b) for b in student] for a in teacher])


class _CenteredMoments:
    """One model's side of streamed linear CKA for one component type (every head, or every
    MLP): per component the token count, the sum and the second moment of its outputs, kept
    shifted by the first chunk's means (centring is shift-invariant; the shift keeps the final
    ``X^T X - N m m^T`` from cancelling catastrophically when the means are large)."""

    def __init__(self, n_components: int, width: int) -> None:
        self.n, self.width = n_components, width
        self.tokens = 0
        self.shift: np.ndarray | None = None
        self.sum = np.zeros(n_components * width)
        self.moment = np.zeros((n_components, width, width))

    def shifted(self, x: np.ndarray) -> np.ndarray:
        """Add one chunk ``x`` [tokens, n_components * width] (float64); return it shifted."""
        if self.shift is None:
            self.shift = x.mean(0)
        xs = x - self.shift
        self.tokens += xs.shape[0]
        self.sum += xs.sum(0)
        per = xs.reshape(xs.shape[0], self.n, self.width)
        self.moment += np.matmul(per.transpose(1, 2, 0), per.transpose(1, 0, 2))
        return xs

    def mean(self) -> np.ndarray:
        return self.sum / self.tokens

    def norms(self) -> np.ndarray:
        """[n_components] ``||Xc^T Xc||_F``, Xc the component's centred outputs."""
        m = self.mean().reshape(self.n, self.width)
        centred = self.moment - self.tokens * np.einsum("cd,ce->cde", m, m)
        return np.linalg.norm(centred, axis=(1, 2))


class _StreamedCka:
    """Linear CKA of every teacher component against every student one (one component type),
    accumulated chunk by chunk from both models' outputs on the same tokens: the cross moments
    ``Y^T X`` of all pairs at once ([W_s, W_t] float64, W the summed output widths of all
    components of that type; 1 MB for the GPT-2 zoo's heads), plus each side's own moments.
    Exactly :func:`linear_cka`'s formula, ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``,
    up to float64 summation order; the size never depends on the number of prompts."""

    def __init__(self, teacher: tuple[int, int], student: tuple[int, int]) -> None:
        self.t, self.s = _CenteredMoments(*teacher), _CenteredMoments(*student)
        self.cross = np.zeros((self.s.n * self.s.width, self.t.n * self.t.width))

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Teacher outputs ``x`` [tokens, W_t] and student outputs ``y`` [tokens, W_s]."""
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"CKA needs the same tokens on both sides ({x.shape[0]} vs {y.shape[0]} in "
                "one chunk); use the same tokenizer and task"
            )
        xs, ys = self.t.shifted(x), self.s.shifted(y)
        self.cross += ys.T @ xs

    def matrix(self) -> np.ndarray:
        """[n_t, n_s] linear CKA."""
        t, s = self.t, self.s
        centred = self.cross - t.tokens * np.outer(s.mean(), t.mean())
        blocks = (centred**2).reshape(s.n, s.width, t.n, t.width).sum(axis=(1, 3)).T
        norm = np.outer(t.norms(), s.norms())
        safe = np.where(norm > 0, norm, 1.0)
        return np.where(norm > 0, blocks / safe, 0.0)


def _cka_outputs(model: CircuitModel, task: Task, prompts: slice,
                 digests: tuple[_Digests, _Digests]) -> tuple[np.ndarray, np.ndarray]:
    """One chunk's head outputs [tokens, n_heads_total * d_head] and MLP outputs
    [tokens, n_layers * d_model] (float64, tokens in prompt order), digests updated."""
    names = [engine.z_hook(i) for i in range(model.n_layers)]
    names += [engine.mlp_out_hook(i) for i in range(model.n_layers)]
    cache = engine.clean_run(model, task, cache_names=names, prompts=prompts).capture.cache
    heads, mlps = [], []
    for layer in range(model.n_layers):
        z = cache[engine.z_hook(layer)].float()  # [chunk, seq, head, d_head]
        digests[0].update(_head_rows(z), first=layer * model.n_heads)
        heads.append(z.reshape(-1, z.shape[2] * z.shape[3]).cpu())
        out = cache[engine.mlp_out_hook(layer)].float().reshape(-1, model.d_model).cpu()
        digests[1].update(out[None], first=layer)
        mlps.append(out)
    return (torch.cat(heads, dim=1).double().numpy(), torch.cat(mlps, dim=1).double().numpy())


def _cka_by_chunk(
    teacher: CircuitModel, student: CircuitModel, task: Task, chunks: list[slice]
) -> tuple[np.ndarray, np.ndarray]:
    """[n_t, n_s] linear CKA of heads and of MLPs over a task of several chunks, both models
    run chunk by chunk together (CKA needs their outputs on the same tokens at once); exact
    copies score exactly 1 (by output digest), as in the one-chunk path."""
    heads = _StreamedCka(
        (teacher.n_layers * teacher.n_heads, teacher.d_head),
        (student.n_layers * student.n_heads, student.d_head),
    )
    mlps = _StreamedCka((teacher.n_layers, teacher.d_model), (student.n_layers, student.d_model))
    t_digests = (_Digests(teacher.n_layers * teacher.n_heads), _Digests(teacher.n_layers))
    s_digests = (_Digests(student.n_layers * student.n_heads), _Digests(student.n_layers))
    with torch.no_grad():
        for prompts in chunks:
            t_heads, t_mlps = _cka_outputs(teacher, task, prompts, t_digests)
            s_heads, s_mlps = _cka_outputs(student, task, prompts, s_digests)
            heads.update(t_heads, s_heads)
            mlps.update(t_mlps, s_mlps)
            del t_heads, t_mlps, s_heads, s_mlps
    return (
        _exact_for_copies(heads.matrix(), t_digests[0].digests(), s_digests[0].digests()),
        _exact_for_copies(mlps.matrix(), t_digests[1].digests(), s_digests[1].digests()),
    )


@dataclass
class SimilarityMatrices:
    """Teacher-by-student similarity, one matrix per component type."""

    heads: np.ndarray  # [teacher heads, student heads]
    mlps: np.ndarray  # [teacher MLPs, student MLPs]
    teacher_heads: list[Component]
    student_heads: list[Component]
    teacher_mlps: list[Component]
    student_mlps: list[Component]
    similarity: str  # one of SIMILARITIES
    #: ``similarity="combined"`` with output evidence: the heads' attention-pattern and output
    #: similarities apart ([teacher heads, student heads]; NaN where a head writes nothing),
    #: for tie-aware matching's ties; None otherwise
    head_pattern_similarity: np.ndarray | None = None
    head_output_similarity: np.ndarray | None = None


def similarity_matrices(
    teacher: CircuitModel, student: CircuitModel, task: Task, similarity: str = "paper"
) -> SimilarityMatrices:
    """Similarity of every teacher component to every student component of the same type.

    Memory does not grow with the task's size. A task of one chunk (``engine.PROMPT_BATCH``
    prompts) is computed from its per-token outputs, as always; over several chunks the
    signatures keep only averaged patterns, second moments and output digests, and
    ``similarity="cka"`` runs teacher and student chunk by chunk together, accumulating the
    cross moments of every teacher/student pair (see :class:`_StreamedCka`: exact CKA, at
    ``8 * W_t * W_s`` bytes per component type, W the summed output widths of that type).
    """
    check_similarity(similarity)
    n = engine.task_tensors(teacher, task).n_prompts
    chunks = engine.prompt_chunks(n)
    if similarity == "cka" and len(chunks) > 1:
        # several chunks: no per-token outputs are kept, so stream both models together
        _check_same_tokens(teacher, student, task)
        heads, mlps = _cka_by_chunk(teacher, student, task, chunks)
        teacher_heads = [Component.head_at(layer, h) for layer in range(teacher.n_layers)
                         for h in range(teacher.n_heads)]
        student_heads = [Component.head_at(layer, h) for layer in range(student.n_layers)
                         for h in range(student.n_heads)]
        return SimilarityMatrices(
            heads=heads,
            mlps=mlps,
            teacher_heads=teacher_heads,
            student_heads=student_heads,
            teacher_mlps=[Component.mlp_at(i) for i in range(teacher.n_layers)],
            student_mlps=[Component.mlp_at(i) for i in range(student.n_layers)],
            similarity=similarity,
        )
    t, s = signatures(teacher, task), signatures(student, task)
    head_pattern_similarity = head_output_similarity = None
    if similarity == "cka":
        assert t.head_outputs is not None and s.head_outputs is not None
        assert t.mlp_outputs is not None and s.mlp_outputs is not None
        heads = _exact_for_copies(
            cka_matrix(t.head_outputs, s.head_outputs), t.head_digests, s.head_digests
        )
        mlps = cka_matrix(t.mlp_outputs, s.mlp_outputs)
    else:
        heads = _exact_for_copies(
            pattern_similarity(t.patterns, s.patterns), t.patterns, s.patterns
        )
        if similarity == "combined":
            head_pattern_similarity = heads
            head_output_similarity = _write_similarity(teacher, student, task, t, s)
            heads = combined_head_similarity(heads, head_output_similarity)
            if head_output_similarity is None:
                head_pattern_similarity = None
        if similarity == "paper":
            mlps = eigenvector_similarity(t.mlp_eigenvectors, s.mlp_eigenvectors)
        else:
            mlps = subspace_similarity(t.mlp_eigenvectors, s.mlp_eigenvectors)
    mlps = _exact_for_copies(mlps, t.mlp_digests, s.mlp_digests)
    return SimilarityMatrices(
        heads=heads,
        mlps=mlps,
        teacher_heads=t.heads,
        student_heads=s.heads,
        teacher_mlps=t.mlps,
        student_mlps=s.mlps,
        similarity=similarity,
        head_pattern_similarity=head_pattern_similarity,
        head_output_similarity=head_output_similarity,
    )


def _write_similarity(
    teacher: CircuitModel, student: CircuitModel, task: Task, t: Signatures, s: Signatures
) -> np.ndarray | None:
    """[n_t, n_s] output similarity of every head pair (exactly 1 for identical writes; NaN
    where either head writes nothing), or None when it means nothing: no writes captured, or no
    shared residual basis."""
    if t.head_writes is None or s.head_writes is None:
        return None
    if t.head_writes.shape[1:] != s.head_writes.shape[1:]:
        return None
    if not shares_residual_basis(teacher, student, task):
        return None
    values = _exact_for_copies(
        output_similarity(t.head_writes, s.head_writes), t.head_writes, s.head_writes
    )
    silent = silent_heads(t.head_writes)[:, None] | silent_heads(s.head_writes)[None, :]
    return np.where(silent, np.nan, values)


def _check_same_tokens(teacher: CircuitModel, student: CircuitModel, task: Task) -> None:
    """CKA compares the two models token by token: raise as :func:`cka_matrix` does when the
    task encodes to different token grids for them."""
    t = engine.task_tensors(teacher, task).tokens.shape
    s = engine.task_tensors(student, task).tokens.shape
    if tuple(t) != tuple(s):
        raise ValueError(
            f"CKA needs the same tokens on both sides ({t[0] * t[1]} vs {s[0] * s[1]}); use "
            "the same tokenizer and task"
        )
