"""Parity step: the vectors a client gets from the serving endpoint are the trained model's.

A fixed probe set (``parity_probes.json``: Chinese, English and mixed queries and passages,
short ones, plus one query and one passage cut to exactly the model's length limits) is
embedded twice: through the OpenAI-compatible endpoint (the official ``openai`` client) and
in-process with the trained model (fp32, its saved profile). Every probe must reach a
cosine of ``min_cosine`` (0.999) and the same vector length (normalization; cosine alone
cannot see it), or the step fails.

When it fails it says which side differs: the in-process vectors are recomputed under each
single alternative (the other pooling; the query or passage instruction missing, doubled
or swapped; truncation at fewer tokens), per kind of text, and the alternatives that
reproduce the served vectors are named. That is how a mean-pooled model served with CLS
pooling (SGLang's BERT path) or a client that forgot the query instruction (SGLang adds
none) is caught and explained.

Instructions: with ``instruction_mode="client"`` the probe adds the profile's instruction
itself and sends raw text, as a client of SGLang must; ``"server"`` sends ``input_type``
and lets ``searchtune serve`` add it.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Literal

import numpy as np

from components.embedding import EncodeConfig, TextEncoder
from components.jsonl_files import write_json, write_text
from components.model_profiles import ModelProfile, resolve_model

logger = logging.getLogger(__name__)

PROBES_PATH = Path(__file__).with_name("parity_probes.json")
RESULT_FILENAME = "parity.json"
REPORT_FILENAME = "parity.md"
# Shorter truncations a serving engine may apply (a context length set below the trained one).
_TRUNCATIONS = (16, 32, 64, 128, 256, 384)


class ParityError(RuntimeError):
    """Served vectors differ from the trained model's; the message says how."""


@dataclass(frozen=True)
class ParityConfig:
    """How strict the check is and how it talks to the endpoint.

    Attributes:
        min_cosine: every probe's served vector needs at least this cosine with the
            in-process one.
        max_norm_error: largest relative difference of vector lengths (normalization).
        instruction_mode: ``client``: add the profile's instructions here and send raw text
            (how SGLang must be called); ``server``: send ``input_type`` (searchtune serve adds them).
        served_model_name: the ``model`` to request; empty: the first model of ``/v1/models``.
        api_key: the endpoint's API key, if it has one.
        timeout_s: per request.
        device: where the in-process reference runs (``auto``, ``cpu``, ``cuda:N``).
    """

    min_cosine: float = 0.999
    max_norm_error: float = 1e-3
    instruction_mode: Literal["client", "server"] = "client"
    served_model_name: str = ""
    api_key: str = ""
    timeout_s: float = 120.0
    device: str = "auto"

    def __post_init__(self) -> None:
        if not 0 < self.min_cosine <= 1:
            raise ValueError(f"min_cosine must be in (0, 1], got {self.min_cosine}")
        if self.max_norm_error <= 0:
            raise ValueError(f"max_norm_error must be positive, got {self.max_norm_error}")
        if self.instruction_mode not in ("client", "server"):
            raise ValueError(f"instruction_mode must be 'client' or 'server', got {self.instruction_mode!r}")


@dataclass(frozen=True)
class _Probe:
    kind: Literal["query", "passage"]
    label: str
    text: str


@dataclass(frozen=True)
class ParityResult:
    """What the check found.

    Attributes:
        passed: every probe matched.
        probes: per probe: kind, label, tokens, cosine, served and in-process vector length,
            and the server's error when it refused the probe.
        diagnosis: what differs, one line each (empty when passed).
        result_path, report_path: ``parity.json`` and ``parity.md``.
    """

    passed: bool
    probes: list[dict] = field(default_factory=list)
    diagnosis: list[str] = field(default_factory=list)
    result_path: Path | None = None
    report_path: Path | None = None


@dataclass(frozen=True)
class _Variant:
    """One way of computing the in-process vectors (the trained way, or an alternative)."""

    description: str
    format_text: Callable[[_Probe], str]
    limit: Callable[[_Probe], int]
    pooling: str
    normalize: bool


def _token_count(encoder: TextEncoder, text: str) -> int:
    return len(encoder.tokenizer(text, truncation=False, verbose=False)["input_ids"])


def _cut_to_limit(encoder: TextEncoder, text: str, format_text: Callable[[str], str], limit: int) -> str:
    """The longest prefix of (repeated) ``text`` whose formatted form has at most ``limit`` tokens."""
    while _token_count(encoder, format_text(text)) <= limit:
        text += " " + text
    low, high = 1, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if _token_count(encoder, format_text(text[:middle])) <= limit:
            low = middle
        else:
            high = middle - 1
    return text[:low]


def _probes(encoder: TextEncoder, profile: ModelProfile) -> list[_Probe]:
    data = json.loads(PROBES_PATH.read_text(encoding="utf-8"))
    probes = [_Probe("query", p["label"], p["text"]) for p in data["queries"]]
    probes += [_Probe("passage", p["label"], p["text"]) for p in data["passages"]]
    probes.append(_Probe("query", f"query at the length limit ({profile.query_max_len} tokens)",
                         _cut_to_limit(encoder, data["long_text"], profile.format_query, profile.query_max_len)))
    probes.append(_Probe("passage", f"passage at the length limit ({profile.passage_max_len} tokens)",
                         _cut_to_limit(encoder, data["long_text"], profile.format_passage,
                                       profile.passage_max_len)))
    return probes


def _trained_variant(profile: ModelProfile) -> _Variant:
    def format_text(probe: _Probe) -> str:
        return profile.format_query(probe.text) if probe.kind == "query" else profile.format_passage(probe.text)

    def limit(probe: _Probe) -> int:
        return profile.query_max_len if probe.kind == "query" else profile.passage_max_len

    return _Variant("as trained", format_text, limit, profile.pooling, profile.normalize)


def _alternatives(profile: ModelProfile, kind: str) -> list[_Variant]:
    """Single differences from the trained way, for probes of one kind."""
    trained = _trained_variant(profile)
    other_pooling = "mean" if profile.pooling == "cls" else "cls"
    variants = [replace(trained, pooling=other_pooling,
                        description=f"pooling: the server pools {other_pooling.upper()}; the model was trained "
                                    f"with {profile.pooling.upper()} pooling")]
    own, other = ((profile.format_query, profile.format_passage) if kind == "query"
                  else (profile.format_passage, profile.format_query))
    own_instruction = profile.query_instruction if kind == "query" else profile.passage_instruction
    other_instruction = profile.passage_instruction if kind == "query" else profile.query_instruction
    if own_instruction:
        variants.append(replace(trained, format_text=lambda p: p.text,
                                description=f"instruction: the {kind} instruction {own_instruction!r} is missing "
                                            "(SGLang adds none: the client must prepend it)"))
        variants.append(replace(trained, format_text=lambda p: own(own(p.text)),
                                description=f"instruction: the {kind} instruction {own_instruction!r} was added "
                                            "twice (by the client and by the server)"))
    if other_instruction or own_instruction:
        other_kind = "passage" if kind == "query" else "query"
        variants.append(replace(trained, format_text=lambda p: other(p.text),
                                description=f"instruction: {kind} texts got the {other_kind} instruction "
                                            f"{other_instruction!r} instead of {own_instruction!r}"))
    limit = profile.query_max_len if kind == "query" else profile.passage_max_len
    for tokens in sorted({t for t in _TRUNCATIONS if t < limit} | ({limit // 2} if limit > 2 else set())):
        variants.append(replace(trained, limit=lambda p, tokens=tokens: tokens,
                                description=f"truncation: the server keeps only {tokens} tokens of a {kind}; the "
                                            f"model was trained on up to {limit}"))
    return variants


def _encode(encoder: TextEncoder, probes: list[_Probe], variant: _Variant) -> np.ndarray:
    token_ids = [encoder.tokenizer(variant.format_text(p), truncation=True, max_length=variant.limit(p))["input_ids"]
                 for p in probes]
    trained = encoder.profile
    encoder.profile = replace(trained, pooling=variant.pooling, normalize=variant.normalize)
    try:
        return encoder.encode_token_ids(token_ids, "parity")
    finally:
        encoder.profile = trained


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.sum(a * b, axis=1) / np.maximum(norms, 1e-12)


def _served_vectors(endpoint: str, probes: list[_Probe], profile: ModelProfile,
                    config: ParityConfig) -> tuple[list[np.ndarray | None], list[str | None]]:
    import openai

    base_url = endpoint.rstrip("/")
    base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
    client = openai.OpenAI(base_url=base_url, api_key=config.api_key or "none", timeout=config.timeout_s,
                           max_retries=2)
    try:
        name = config.served_model_name or client.models.list().data[0].id
    except openai.APIConnectionError as error:
        raise ParityError(f"cannot reach the serving endpoint {base_url}: {error}") from None
    vectors: list[np.ndarray | None] = []
    errors: list[str | None] = []
    for probe in probes:
        if config.instruction_mode == "client":
            text = profile.format_query(probe.text) if probe.kind == "query" else profile.format_passage(probe.text)
            extra = None
        else:
            text, extra = probe.text, {"input_type": probe.kind}
        try:
            response = client.embeddings.create(model=name, input=[text], encoding_format="float", extra_body=extra)
        except openai.APIStatusError as error:
            message = error.body.get("message") if isinstance(error.body, dict) else None
            vectors.append(None)
            errors.append(f"HTTP {error.status_code}: {message or error}")
            continue
        except openai.APIConnectionError as error:
            raise ParityError(f"cannot reach the serving endpoint {base_url}: {error}") from None
        vectors.append(np.asarray(response.data[0].embedding, dtype=np.float32))
        errors.append(None)
    return vectors, errors


def _diagnose(encoder: TextEncoder, profile: ModelProfile, probes: list[_Probe], served: list[np.ndarray | None],
              errors: list[str | None], cosines: np.ndarray, norm_ok: np.ndarray, config: ParityConfig) -> list[str]:
    lines = []
    for kind, kinds in (("query", "queries"), ("passage", "passages")):
        indices = [i for i, p in enumerate(probes) if p.kind == kind]
        for i in indices:
            if errors[i] is not None:
                lines.append(f"{kinds}: truncation: the server refused the {probes[i].label}: {errors[i]} (its "
                             "length limit is below the trained model's)")
        answered = [i for i in indices if served[i] is not None]
        if not any(cosines[i] < config.min_cosine for i in answered):
            continue
        served_kind = np.stack([served[i] for i in answered])
        matches = [variant.description for variant in _alternatives(profile, kind)
                   if np.all(_cosines(_encode(encoder, [probes[i] for i in answered], variant), served_kind)
                             >= config.min_cosine)]
        if matches:
            lines += [f"{kinds}: {description}" for description in matches]
        else:
            lines.append(f"{kinds}: no single difference in pooling, instruction or truncation explains the served "
                         "vectors: the served weights or tokenizer differ from the trained model's")
    if not np.all(norm_ok):
        served_norms = [float(np.linalg.norm(v)) for v in served if v is not None]
        if profile.normalize:
            lines.append(f"normalization: served vectors have length {np.median(served_norms):.4g}; the trained "
                         "model's are normalized to length 1")
        else:
            lines.append(f"normalization: served vectors have length {np.median(served_norms):.4g}; the trained "
                         "model's are not normalized")
    return lines


def check_serving_parity(model: str, endpoint: str, output_dir: str | os.PathLike,
                         config: ParityConfig = ParityConfig()) -> ParityResult:
    """Compare the endpoint's vectors with the trained model's on the fixed probe set.

    Args:
        model: the trained model (a folder with its saved profile, or any model name).
        endpoint: the OpenAI-compatible base URL (``http://host:port`` or ``.../v1``).
        output_dir: where ``parity.json`` and ``parity.md`` are written.
        config: thresholds and how instructions are sent.

    Raises:
        ParityError: a probe differs (after the reports are written), or the endpoint is
            unreachable.
    """
    resolved = resolve_model(model)
    profile = resolved.profile
    encoder = TextEncoder(resolved, EncodeConfig(precision="fp32", device=config.device, show_progress=False))
    probes = _probes(encoder, profile)
    expected = _encode(encoder, probes, _trained_variant(profile))
    served, errors = _served_vectors(endpoint, probes, profile, config)

    cosines = np.array([float(_cosines(v[None], e[None])[0]) if v is not None else float("nan")
                        for v, e in zip(served, expected)])
    expected_norms = np.linalg.norm(expected, axis=1)
    served_norms = np.array([float(np.linalg.norm(v)) if v is not None else float("nan") for v in served])
    norm_ok = np.array([v is None or abs(s / max(e, 1e-12) - 1) <= config.max_norm_error
                        for v, s, e in zip(served, served_norms, expected_norms)])
    passed = all(e is None for e in errors) and bool(np.all(cosines >= config.min_cosine)) and bool(np.all(norm_ok))
    diagnosis = [] if passed else _diagnose(encoder, profile, probes, served, errors, cosines, norm_ok, config)

    rows = [{"kind": p.kind, "label": p.label,
             "tokens": _token_count(encoder, profile.format_query(p.text) if p.kind == "query"
                                    else profile.format_passage(p.text)),
             "cosine": None if np.isnan(c) else round(float(c), 6),
             "served_norm": None if np.isnan(s) else round(float(s), 6), "trained_norm": round(float(e), 6),
             "error": err}
            for p, c, s, e, err in zip(probes, cosines, served_norms, expected_norms, errors)]
    output_dir = Path(output_dir)
    result = ParityResult(passed=passed, probes=rows, diagnosis=diagnosis, result_path=output_dir / RESULT_FILENAME,
                          report_path=output_dir / REPORT_FILENAME)
    write_json(result.result_path, {"passed": passed, "endpoint": endpoint, "model": str(model),
                                    "instruction_mode": config.instruction_mode, "min_cosine": config.min_cosine,
                                    "profile": profile.to_dict(), "diagnosis": diagnosis, "probes": rows})
    write_text(result.report_path, _render_report(result, endpoint, config))
    if not passed:
        raise ParityError(f"served vectors differ from the trained model's at {endpoint}: " + "; ".join(diagnosis))
    logger.info("parity: %d probes, lowest cosine %.6f, served as trained", len(rows), float(np.min(cosines)))
    return result


def _render_report(result: ParityResult, endpoint: str, config: ParityConfig) -> str:
    verdict = "served as trained" if result.passed else "served vectors DIFFER from the trained model's"
    lines = [f"# Serving parity: {verdict}", "", f"- endpoint: `{endpoint}`",
             f"- instructions added by the {config.instruction_mode}; every probe needs cosine ≥ {config.min_cosine} "
             f"and the same length (±{config.max_norm_error:g})"]
    lines += [f"- {line}" for line in result.diagnosis]
    lines += ["", "| kind | probe | tokens | cosine | served length | trained length |", "|---|---|---:|---:|---:|---:|"]
    for row in result.probes:
        cosine = row["error"] or f"{row['cosine']:.6f}"
        served = "n/a" if row["served_norm"] is None else f"{row['served_norm']:.4f}"
        lines.append(f"| {row['kind']} | {row['label']} | {row['tokens']} | {cosine} | {served} | "
                     f"{row['trained_norm']:.4f} |")
    return "\n".join(lines) + "\n"
