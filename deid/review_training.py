"""A site's tagger fine-tuned on its annotators' corrections (``fedmed deid train --from-review``).

Why: ``fedmed deid review`` hands a site's annotators the notes the tagger is least sure
about, as i2b2 XML files holding the detected spans; corrected, they are the site's own
gold notes, written in its own house style — the data a generic tagger lacks. This module
reads them back and continues training the tagger the site runs (by default the shipped
BiLSTM-CRF), so a site improves its gate without a corpus of its own.

Choices, and why:

* **Which notes.** Every note listed in the review folder's ``index.json`` whose XML file
  is still there. A note the annotator left unchanged counts as confirmed (its detected
  spans were right); an annotator who did not review a note deletes its XML file.
* **Same vocabulary, same threshold.** Fine-tuning keeps the base checkpoint's vocabulary
  (new words reach the model through their characters) and its threshold, which was
  chosen on the base's dev split: a few dozen reviewed notes are too few to choose a
  threshold on without overfitting it.
* **Replay.** Training only on a few dozen notes makes a network forget what it knew
  (catastrophic forgetting); as many synthetic training notes as reviewed ones
  (:func:`fedmed.deid.corpus.generate`, the base's own generator, seeded) are mixed in.
* **Where it lives.** The output folder should be in the site home: the checkpoint was
  trained on raw notes. The gate uses it through ``[deid] tagger = "<out>/bilstm_crf.pt"``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from fedmed.deid.bilstm_crf import BiLstmCrfTagger
from fedmed.deid.corpus import generate
from fedmed.deid.io import read_i2b2
from fedmed.deid.phi import Document
from fedmed.deid.selection import TrainResult, dev_score
from fedmed.deid.tagger import torch_threads
from fedmed.deid.taggers import DEFAULT_CHECKPOINT
from fedmed.deid.train import fit_epoch, windowed_examples
from fedmed.errors import DataError

INDEX = "index.json"
REPLAY_SEED = 31_337


def reviewed_notes(review_dir: str | Path) -> list[Document]:
    """The corrected notes of a ``fedmed deid review`` folder (see the module docstring)."""
    root = Path(review_dir)
    index = root / INDEX
    if not index.is_file():
        raise DataError(f"{root}: no {INDEX}; give a folder written by fedmed deid review")
    try:
        rows = json.loads(index.read_text(encoding="utf-8"))
        names = [str(row["xml"]) for row in rows]
    except (ValueError, TypeError, KeyError) as exc:
        raise DataError(f"{index}: not an index written by fedmed deid review ({exc})") from None
    docs = [read_i2b2(root / name) for name in names if (root / name).is_file()]
    if not docs:
        raise DataError(f"{root}: none of the {len(names)} notes in {INDEX} has its XML file")
    return docs


def fine_tune(reviewed: Sequence[Document], out: str | Path,
              base: str | Path = DEFAULT_CHECKPOINT, epochs: int = 4, lr: float = 1e-3,
              seed: int = 0, log: Callable[[str], None] = print) -> TrainResult:
    """Continue training the BiLSTM-CRF at ``base`` on ``reviewed`` notes plus as many
    replayed synthetic ones; write ``out/bilstm_crf.pt``. The reported scores are the
    tuned tagger's on the reviewed notes themselves (a training-set figure, no estimate)."""
    if not reviewed:
        raise DataError("fine-tuning needs at least one reviewed note")
    if epochs < 1:
        raise DataError(f"epochs must be at least 1, got {epochs}")
    with torch_threads(1):
        started = time.monotonic()
        torch.manual_seed(seed)
        tagger = BiLstmCrfTagger.load(base)
        replay = generate(len(reviewed), REPLAY_SEED + seed, "train")
        examples = windowed_examples([*reviewed, *replay], tagger.vocab, size=128, overlap=32)
        opt = torch.optim.Adam(tagger.model.parameters(), lr=lr)
        rng = random.Random(seed)
        history = []
        for epoch in range(1, epochs + 1):
            loss = fit_epoch(tagger.model, opt, examples, 32, rng)
            history.append({"epoch": epoch, "loss": loss})
            log(f"epoch {epoch}: loss {loss:.3f} on {len(reviewed)} reviewed + "
                f"{len(replay)} replayed notes")
        fitted = dev_score(tagger, reviewed)
        tagger.metrics = {**tagger.metrics, "fine_tuned": {
            "base": tagger.version, "reviewed_notes": len(reviewed),
            "replayed_notes": len(replay), "epochs": epochs, "lr": lr}}
        path = tagger.save(Path(out) / "bilstm_crf.pt")
        log(f"saved {path} (threshold {tagger.threshold}, kept from the base)")
        return TrainResult(path, "bilstm-crf", tagger.threshold, epochs, fitted, history,
                           time.monotonic() - started)
