"""The taggers fedmed ships, found by name or checkpoint path (the Tagger interface and the
decoding they share are in :mod:`fedmed.deid.tagger`).

To add a tagger: a module in ``deid/`` whose class satisfies
:class:`fedmed.deid.tagger.Tagger`, and a branch in :func:`load_tagger` that recognises
its checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from fedmed.deid import MODELS_DIR
from fedmed.deid.bilstm_crf import BiLstmCrfTagger
from fedmed.deid.tagger import Tagger
from fedmed.deid.transformer_tagger import TransformerTagger
from fedmed.errors import ConfigError

DEFAULT_CHECKPOINT = MODELS_DIR / "bilstm_crf.pt"


def load_tagger(spec: str | Path | None = None, device: str = "cpu") -> Tagger:
    """A tagger from a name or path: None/"bilstm-crf" = the shipped checkpoint;
    a ``.pt`` file = a BiLSTM-CRF checkpoint; a folder with ``transformer.json`` = a
    fine-tuned transformer. Nothing is downloaded.
    """
    if spec is None or str(spec) == "bilstm-crf":
        path = DEFAULT_CHECKPOINT
    else:
        path = Path(spec)
    if path.is_dir():
        if (path / "transformer.json").is_file():
            return TransformerTagger.load(path, device=device)
        if (path / "bilstm_crf.pt").is_file():
            path = path / "bilstm_crf.pt"
    if path.is_file() and path.suffix == ".pt":
        return BiLstmCrfTagger.load(path, device=device)
    raise ConfigError(f"tagger {spec!r}: no BiLSTM-CRF checkpoint (.pt) or transformer folder "
                      f"(with transformer.json) at {path}")
