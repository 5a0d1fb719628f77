"""The transformer option fine-tunes all-MiniLM-L6-v2 offline (a few steps, a handful of notes)."""

from __future__ import annotations

from fedmed.deid.corpus import generate
from fedmed.deid.taggers import load_tagger
from fedmed.deid.train import train


def test_transformer_fine_tunes_offline_and_predicts(tmp_path) -> None:
    train_docs = generate(4, seed=1, split="train")
    dev_docs = generate(2, seed=1, split="dev")
    result = train((train_docs, dev_docs), tmp_path / "tx", arch="transformer", epochs=1,
                   max_steps=2, log=lambda _: None)
    assert result.arch == "transformer" and (tmp_path / "tx" / "transformer.json").is_file()
    tagger = load_tagger(tmp_path / "tx")
    long_text = "\n".join(d.text for d in generate(3, seed=2, split="test"))
    spans = tagger.predict([long_text])[0]
    assert all(0 <= s.start < s.end <= len(long_text) for s in spans)
