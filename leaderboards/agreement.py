"""KL(dense || cell) and top-1 agreement of each grid cell with its dense model (harness_ext.agreement).

Measured on the perplexity windows (spec `perplexity`, top k = `perplexity.agreement_top_k`), inside the cell's
perplexity forward: a cell costs no extra forward. The reference is the cell's model **dense in float32** on the
grid's device: the dense float32 cell builds it from its own forward (and so measures KL 0, agreement 1); a cell
that runs before any such cell (another shard, a float16-only grid) loads the dense model and builds it first,
once per model. References are cached beside the pruned models, `CACHE/dense-references/KEY.safetensors`
(CACHE is `$SPARSE_BENCH_HOME/pruned` unless `--cache` says otherwise), KEY a hash of everything that
determines them (`reference_description`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..harness_ext.agreement import AgreementMeter, build_reference, load_reference
from .cells import Cell
from .spec import GridSpec

REFERENCE_DTYPE = "float32"


def reference_description(spec: GridSpec, fingerprint: str) -> dict[str, Any]:
    """What determines a dense reference: model weights, dtype, device, text and windows, top k."""
    settings = spec.perplexity
    return {"model_fingerprint": fingerprint, "dtype": REFERENCE_DTYPE, "device": spec.device,
            "data": settings.data, "seqlen": settings.seqlen, "max_tokens": settings.max_tokens,
            "top_k": settings.agreement_top_k}


def reference_file(cache_root: Path, description: dict[str, Any]) -> Path:
    key = hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:20]
    return Path(cache_root) / "dense-references" / f"{key}.safetensors"


@dataclass
class CellAgreement:
    """A cell's agreement measurement: a `LogitsObserver` for its perplexity forward, then `finish()`."""

    meter: AgreementMeter
    description: dict[str, Any]
    path: Path

    def __call__(self, token_ids, logits) -> None:
        self.meter(token_ids, logits)

    def finish(self) -> dict[str, Any]:
        """The cell's agreement record (harness_ext.agreement's result and the reference used); saves the
        reference when this cell built it."""
        if self.meter.reference is None:
            self.meter.built_reference(self.description).save(self.path)
        return {**self.meter.result(), "reference": {"dtype": REFERENCE_DTYPE, "device": self.description["device"],
                                                     "file": str(self.path)}}


def cell_agreement(cell: Cell, spec: GridSpec, model_path: str, fingerprint: str,
                   cache_root: Path) -> CellAgreement | None:
    """The agreement measurement for `cell`, None when it is off. Builds the dense reference first (loading the
    dense model) if it is not cached and this cell cannot build it from its own forward."""
    if spec.perplexity is None or not spec.perplexity.agreement_top_k:
        return None
    description = reference_description(spec, fingerprint)
    path = reference_file(cache_root, description)
    reference = load_reference(path, description)
    if reference is None and not (cell.is_dense and cell.dtype == REFERENCE_DTYPE):
        reference = _build_dense_reference(spec, model_path, description, path)
    return CellAgreement(AgreementMeter(reference, spec.perplexity.agreement_top_k), description, path)


def _build_dense_reference(spec: GridSpec, model_path: str, description: dict[str, Any], path: Path):
    from ..harness_ext.models import load_model
    from .perplexity import perplexity_text

    model, tokenizer = load_model(model_path, REFERENCE_DTYPE, spec.device)
    settings = spec.perplexity
    reference = build_reference(model, tokenizer, perplexity_text(spec, tokenizer), settings.seqlen,
                                settings.max_tokens, settings.agreement_top_k, description)
    reference.save(path)
    return reference


__all__ = ["REFERENCE_DTYPE", "CellAgreement", "cell_agreement", "reference_description", "reference_file"]
