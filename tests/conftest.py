"""Shared fixtures: offline mode, the shared real data, and tiny random models built once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPARSE_BENCH_DATA_DIR",
                      str(Path(__file__).resolve().parents[2] / "shared" / "data"))

from tiny_models import KINDS, build_tiny_model, build_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data laid out like ../shared/data (glue_mrpc/, billsum/, wikitext2/, c4/)."""
    path = Path(os.environ["SPARSE_BENCH_DATA_DIR"])
    assert (path / "wikitext2" / "wiki.test.raw").is_file(), f"shared data missing under {path}"
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return build_tokenizer()


class TinyModelDirs(Mapping):
    """{kind: checkpoint dir} for every tiny model kind; each is built on first access (a second or less)."""

    def __init__(self, root: Path, tokenizer) -> None:
        self.root, self.tokenizer, self.built = root, tokenizer, {}

    def __getitem__(self, kind: str) -> Path:
        if kind not in KINDS:
            raise KeyError(kind)
        if kind not in self.built:
            self.built[kind] = build_tiny_model(kind, self.root / kind, self.tokenizer)
        return self.built[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(KINDS)

    def __len__(self) -> int:
        return len(KINDS)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tiny_tokenizer) -> TinyModelDirs:
    """{kind: checkpoint dir} for every tiny model kind (see tiny_models.KINDS), built lazily."""
    return TinyModelDirs(tmp_path_factory.mktemp("tiny_models"), tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_calibration_file(tmp_path_factory, data_dir) -> Path:
    """20,000 characters of WikiText-2 as a calibration file (tokenizing the whole file takes seconds)."""
    path = tmp_path_factory.mktemp("calibration") / "calibration.txt"
    path.write_text((data_dir / "wikitext2" / "wiki.test.raw").read_text(encoding="utf-8")[:20_000])
    return path


@pytest.fixture(scope="session")
def tiny_llama(tiny_model_dirs) -> Path:
    return tiny_model_dirs["llama"]
