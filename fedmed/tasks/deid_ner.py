"""The de-identification tagger as a federated task: BiLSTM-CRF PHI tagging across hospitals.

Each hospital holds its own annotated notes (PHI spans marked); the tagger of
:mod:`fedmed.deid.bilstm_crf` is trained across them without the notes leaving any site. The
built-in sites (:mod:`fedmed.data.deid_ner_synth`) write in different styles — note kinds,
name origins, MRN/phone/date formats — so a tagger trained at one hospital misses the PHI
styles of the others. With ``data_dir`` a site trains on its own i2b2-2014 XML annotations
(``<data_dir>/<site>/{train,val,test}/*.xml``).

Why this pack reads raw notes (docs/architecture.md § Data flow: packs receive what the de-id
gate released): its labels *are* the PHI spans, so it cannot train on released text. The
notes never leave the node; what leaves is the model update, which DP-SGD bounds (on by default in
``examples/deid-ner``). The model is kept from holding PHI *by construction* as well:

- **Shared vocabulary from public text only.** Word ids come from a vocabulary built from the
  corpus generator's note templates, fillers and snippets with every PHI slot removed, plus
  month and weekday names (:func:`public_texts`) — never from any site's notes. A vocabulary
  built from one site's notes would ship that site's patient names to every other site in
  the model's vocabulary file (and give each name its own embedding row to memorise). Here
  every name is ``<unk>`` to the word embedding; names are found by their characters, shape
  and context. Characters use a fixed inventory (ASCII, Latin-1/Extended-A/B letters and
  Vietnamese letters), so every site has the same ids without looking at data.
- The other inputs are deid's own features (:func:`fedmed.deid.bilstm_crf.encode_tokens`):
  characters, casing class, length bucket, whitespace before the token.

Batching: notes are tokenised with :func:`fedmed.deid.tokens.tokenize`, BIO-tagged over the
i2b2 subtypes (:data:`fedmed.deid.tokens.LABELS`) and cut into overlapping windows of
:data:`WINDOW` tokens; each window is one example, padded to fixed size so PyTorch's default
collate (and Opacus's Poisson loader) can batch it: inputs ``(WINDOW, FEATURES)`` int64 —
word id, :data:`~fedmed.deid.bilstm_crf.MAX_CHARS` character ids, three shape features and a
0/1 mask column — and targets ``(WINDOW,)`` tag ids with :data:`IGNORE` on padding.

Model (:class:`DPBiLstmCrf`): deid's :class:`~fedmed.deid.bilstm_crf.BiLstmCrf`, fresh (not
the shipped checkpoint), made trainable by DP-SGD with three changes, all parameter-compatible
with deid's checkpoints (:func:`export_tagger` writes one the gate can load):

1. the two LSTM directions are Opacus's :class:`~opacus.layers.DPLSTM` (``nn.LSTM`` has no
   per-example gradients; DPLSTM's state dict uses ``nn.LSTM``'s names). As in ``ecg-lstm``,
   importing a layer from ``opacus.layers`` is the pack's only Opacus import: the node still
   owns the training loop;
2. the character CNN runs per example (:meth:`DPBiLstmCrf.token_vectors`): deid folds tokens
   into the batch dimension (``(B·T, C)``), which would give Opacus per-*token* rather than
   per-*window* gradients. Here the characters of a window are laid end to end with a zero
   vector on either side of every token, and the same ``Conv1d`` (padding 1) runs along that
   line: exactly deid's per-token convolution;
3. the CRF's ``forward`` returns the CRF *potentials* for each example — its emissions plus
   a copy of the start, end and transition scores — instead of a log-likelihood. Opacus 1.6
   has no per-example rule for the CRF, so it computes one with ``torch.func`` (its functorch
   fallback for leaf modules with parameters and one input); each example's copy of the
   transitions carries that example's gradient. :func:`crf_nll` (the pack's loss) is the CRF
   negative log-likelihood from those potentials, averaged over the batch.

Metrics (via :func:`fedmed.deid.evaluate.score`, on whole notes: windows are merged by
:class:`~fedmed.deid.bilstm_crf.BiLstmCrfTagger` as in deployment): binary token PHI recall
``phi_recall`` (primary: a missed PHI token is a leak), ``phi_precision`` and ``phi_f1``. A
token counts as PHI if the Viterbi path tags it or its CRF marginal PHI probability is at
least :data:`THRESHOLD` (deid's recall-biased decoding,
:func:`fedmed.deid.tagger.recall_biased_spans`, name completion included).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import torch
from opacus.layers import DPLSTM
from torch import nn
from torch.utils.data import Dataset

from fedmed.config import Scalar
from fedmed.data.deid_ner_synth import (
    N_TEST_DEFAULT,
    N_TRAIN_DEFAULT,
    N_VAL_DEFAULT,
    SITES,
    annotated_site_folders,
    read_site_folder,
    site_notes,
    site_style,
)
from fedmed.deid.bilstm_crf import (
    MAX_CHARS,
    BiLstmCrf,
    BiLstmCrfTagger,
    FastCRF,
    ModelConfig,
    Vocab,
    collate,
)
from fedmed.deid.corpus import ALT_RE, SLOT_RE
from fedmed.deid.dates import MONS, MONTHS, WEEKDAYS
from fedmed.deid.evaluate import score
from fedmed.deid.phi import Document, Span
from fedmed.deid.templates import CONDITIONS, EVENTS, EXAM, LABS, MEDS, PLANS, SNIPPETS, TEMPLATES
from fedmed.deid.train import windowed_examples
from fedmed.deid.train import word_dropout as drop_words_to_unknown
from fedmed.errors import DataError
from fedmed.explain.text_review import PhiReview
from fedmed.tasks import register_task
from fedmed.tasks.base import SiteData, TaskPack, fingerprint_arrays
from fedmed.tasks.site_size import refuse_with_data_dir, train_size_only

WINDOW = 128  # tokens per example (deid's training windows)
OVERLAP = 32
FEATURES = 1 + MAX_CHARS + 3 + 1  # word id, characters, casing/length/gap, mask
IGNORE = -1  # target of a padding position
THRESHOLD = 0.5
WORD_DROPOUT = 0.1
# Smaller than deid's default layer sizes (word 64, characters 24/48, hidden 128): 79k
# parameters, because DP-SGD's noise grows with the number of parameters and a 10-round
# federation of four sites should take minutes on CPU. Measured without DP (academic, 10
# local epochs): 0.89 PHI recall on its own test notes against 0.91 with word 48/hidden 64.
WORD_DIM = 32
CHAR_DIM = 16
CHAR_FILTERS = 32
HIDDEN = 32
# The built-in sites' validation and test notes are one fixed draw (the task-pack contract:
# test data never depends on the training seed); training notes follow the run's seed.
DATA_SEED = 0


# ------------------------------------------------------------------------------ vocabulary
def public_texts() -> list[str]:
    """Non-PHI text every site may share: deid's templates and snippets with their PHI slots
    removed, its clinical fillers, and month/weekday names."""
    texts = []
    for body in [t.body for t in TEMPLATES] + list(SNIPPETS):
        body = ALT_RE.sub(lambda m: " ".join(m.group(1).split("||")), body)
        texts.append(SLOT_RE.sub(" ", body))
    texts += [*CONDITIONS, *EVENTS, *MEDS, *EXAM, *PLANS, *(lab[0] for lab in LABS)]
    return texts + [*MONTHS, *MONS, *WEEKDAYS]


CHARS: tuple[str, ...] = (
    "<pad>", "<unk>", *(c for c in string.printable if not c.isspace()),
    *(chr(c) for c in range(0xC0, 0x250) if chr(c).isalpha()),  # Latin-1, Extended-A/B
    *(chr(c) for c in range(0x1EA0, 0x1F00)),  # Vietnamese letters with tone marks
)
"""A fixed character inventory (index 0 padding, 1 unknown): the same at every site."""


@lru_cache(maxsize=1)
def shared_vocab() -> Vocab:
    """The vocabulary every site uses: words of :func:`public_texts`, characters :data:`CHARS`."""
    words = Vocab.build(public_texts(), max_words=20000, min_count=1).words
    return Vocab(words=words, chars=list(CHARS))


# ------------------------------------------------------------------------------ data
def pack_windows(examples: Sequence[dict[str, list]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded windows (deid's ``encode_tokens`` + ``tags``) → fixed-size tensors.

    Returns inputs (n × WINDOW × FEATURES) int64 and targets (n × WINDOW) int64, padding
    positions masked (mask column 0, target :data:`IGNORE`).
    """
    if not examples:
        return (torch.zeros((0, WINDOW, FEATURES), dtype=torch.int64),
                torch.zeros((0, WINDOW), dtype=torch.int64))
    batch = collate(list(examples))
    steps, chars = batch["chars"].shape[1:]
    if steps > WINDOW or chars > MAX_CHARS:
        raise DataError(f"windows of {steps} tokens / {chars} characters exceed "
                        f"{WINDOW} / {MAX_CHARS}")
    pad_steps = (0, 0, 0, WINDOW - steps)
    inputs = torch.cat([
        batch["words"].unsqueeze(-1),
        nn.functional.pad(batch["chars"], (0, MAX_CHARS - chars)),
        batch["feats"],
        batch["mask"].long().unsqueeze(-1),
    ], dim=-1)
    targets = batch["tags"].masked_fill(~batch["mask"], IGNORE)
    return (nn.functional.pad(inputs, pad_steps),
            nn.functional.pad(targets, (0, WINDOW - steps), value=IGNORE))


def unpack(inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's batch dict (deid's ``collate`` keys) from packed inputs (B × T × FEATURES)."""
    return {
        "words": inputs[..., 0],
        "chars": inputs[..., 1:1 + MAX_CHARS],
        "feats": inputs[..., 1 + MAX_CHARS:4 + MAX_CHARS],
        "mask": inputs[..., 4 + MAX_CHARS].bool(),
    }


class NoteWindows(Dataset):
    """Annotated notes as fixed-size windows; keeps the notes for note-level scoring."""

    def __init__(self, documents: Sequence[Document]) -> None:
        self.documents = list(documents)
        self.inputs, self.targets = pack_windows(
            windowed_examples(self.documents, shared_vocab(), WINDOW, OVERLAP))

    @property
    def texts(self) -> list[str]:
        return [doc.text for doc in self.documents]

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.inputs[index], self.targets[index]


# ------------------------------------------------------------------------------ model
class PotentialsCRF(FastCRF):
    """deid's CRF whose ``forward`` returns each example's CRF potentials (B × T+2+K × K).

    Rows ``0..T-1``: the emissions; row ``T``: start scores; ``T+1``: end scores; the last K
    rows: the transition matrix. Viterbi and marginals are deid's, on the shared parameters.
    The signature differs from ``CRF.forward`` on purpose: Opacus computes per-example
    gradients for a module it has no rule for by vmapping its forward over one input.
    """

    def forward(self, emissions: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        batch, _, tags = emissions.shape
        return torch.cat([
            emissions,
            self.start_transitions.expand(batch, 1, tags),
            self.end_transitions.expand(batch, 1, tags),
            self.transitions.expand(batch, tags, tags),
        ], dim=1)


def crf_nll(potentials: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of the CRF negative log-likelihood of ``tags``.

    ``potentials`` from :class:`PotentialsCRF`; ``tags`` (B × T) with :data:`IGNORE` after each
    sequence's end. Each example uses its own copy of the transition scores (equal in value),
    which is what gives the transitions per-example gradients. Equals deid's
    ``-FastCRF(emissions, tags, mask, reduction="mean")`` (a test checks it).
    """
    steps = tags.shape[1]
    emissions, transitions = potentials[:, :steps], potentials[:, steps + 2:]
    start, end = potentials[:, steps], potentials[:, steps + 1]
    mask = tags != IGNORE
    tags = tags.clamp_min(0)
    weight = mask.to(emissions.dtype)
    path = start.gather(1, tags[:, :1]).squeeze(1)
    path = path + (emissions.gather(2, tags.unsqueeze(2)).squeeze(2) * weight).sum(1)
    rows = transitions.gather(1, tags[:, :-1, None].expand(-1, -1, transitions.shape[2]))
    path = path + (rows.gather(2, tags[:, 1:, None]).squeeze(2) * weight[:, 1:]).sum(1)
    last = tags.gather(1, (mask.sum(1) - 1).clamp_min(0).unsqueeze(1)).squeeze(1)
    path = path + end.gather(1, last.unsqueeze(1)).squeeze(1)
    alpha = start + emissions[:, 0]
    for step in range(1, steps):
        nxt = torch.logsumexp(alpha.unsqueeze(2) + transitions
                              + emissions[:, step].unsqueeze(1), dim=1)
        alpha = torch.where(mask[:, step:step + 1], nxt, alpha)
    log_partition = torch.logsumexp(alpha + end, dim=1)
    return (log_partition - path).mean()


class DPBiLstmCrf(BiLstmCrf):
    """deid's BiLSTM-CRF, DP-SGD ready: packed inputs (B × T × FEATURES) → CRF potentials.

    See the module docstring for the three differences from :class:`BiLstmCrf`; ``decode``
    and everything :class:`BiLstmCrfTagger` needs are inherited.
    """

    def __init__(self, cfg: ModelConfig, word_dropout: float = WORD_DROPOUT) -> None:
        super().__init__(cfg)
        self.fwd = DPLSTM(self.fwd.input_size, cfg.hidden, batch_first=True)
        self.bwd = DPLSTM(self.bwd.input_size, cfg.hidden, batch_first=True)
        self.crf = PotentialsCRF(cfg.n_tags, batch_first=True)
        self.word_dropout = word_dropout

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        batch = unpack(inputs)
        if self.training and self.word_dropout:
            # names look like <unk> at other sites anyway: learn their shape and context
            drop_words_to_unknown(batch, self.word_dropout)
        return self.crf(self.emissions(batch))

    def token_vectors(self, words: torch.Tensor, chars: torch.Tensor,
                      shape: torch.Tensor) -> torch.Tensor:
        """:meth:`BiLstmCrf.token_vectors` with the character CNN run per example.

        ``chars`` is (B, T, C) in training, or (N, C) for the distinct tokens deid's tagger
        batches at inference (treated as one line of N tokens). Each row's tokens are laid
        end to end with a zero vector on either side of every token, and deid's ``Conv1d``
        (kernel 3, padding 1) runs along that line: at every character it sees what it sees
        in deid's per-token convolution, but the batch dimension stays the example's.
        """
        lead, c = chars.shape[:-1], chars.shape[-1]
        rows = chars.reshape(lead[0], -1, c) if len(lead) > 1 else chars.unsqueeze(0)
        b, t = rows.shape[:2]
        line = nn.functional.pad(self.char(rows), (0, 0, 1, 1))  # (b, t, c + 2, dim)
        conv = self.char_cnn(line.reshape(b, t * (c + 2), -1).transpose(1, 2))
        ch = torch.relu(conv.view(b, -1, t, c + 2)[..., 1:c + 1]).amax(dim=3)  # (b, F, t)
        return torch.cat([self.word(words), ch.transpose(1, 2).reshape(*lead, -1),
                          self.case(shape[..., 0]), self.length(shape[..., 1])], dim=-1)


def model_config() -> ModelConfig:
    vocab = shared_vocab()
    return ModelConfig(n_words=len(vocab.words), n_chars=len(vocab.chars), word_dim=WORD_DIM,
                       char_dim=CHAR_DIM, char_filters=CHAR_FILTERS, hidden=HIDDEN)


def as_tagger(model: nn.Module, device: torch.device | str = "cpu") -> BiLstmCrfTagger:
    """``model`` behind deid's tagger interface: whole notes in, PHI spans out."""
    if not isinstance(model, BiLstmCrf):
        raise TypeError(f"expected a BiLstmCrf model, got {type(model).__name__}")
    return BiLstmCrfTagger(model, shared_vocab(), threshold=THRESHOLD, window=WINDOW,
                           overlap=OVERLAP, version="deid-ner", device=str(device))


def export_tagger(model: DPBiLstmCrf, path: str | Path) -> Path:
    """Save a trained model as a deid BiLSTM-CRF checkpoint (``fedmed deid ... --tagger``).

    The plain :class:`BiLstmCrf` takes the same parameters: DPLSTM stores ``nn.LSTM``'s
    names (nested in a model, Opacus's state dict also lists its internal aliases of the same
    tensors, ``fwd.l0.ih.weight``...; those are left out). The vocabulary file is the public
    one, so it holds no site's words.
    """
    plain = BiLstmCrf(model.cfg)
    wanted = plain.state_dict().keys()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k in wanted})
    return as_tagger(plain).save(path)


def tag_notes(model: nn.Module, texts: list[str]) -> list[list[Span]]:
    """The PHI spans ``model`` predicts in whole notes, on the device it sits on (what the
    pack's PHI review shows, :class:`fedmed.explain.text_review.PhiReview`)."""
    return as_tagger(model, next(model.parameters()).device).predict(texts)


# ------------------------------------------------------------------------------ pack
@register_task("deid-ner")
class DeidNerTask(TaskPack):
    """PHI tagging of annotated clinical notes with deid's BiLSTM-CRF, across hospitals."""

    metrics = ("phi_recall", "phi_precision", "phi_f1")
    primary_metric = "phi_recall"
    default_sites = tuple(SITES)
    # Tuned for DP-SGD at ε = 8 (docs/deid-ner.md) with momentum 0.9 (examples/deid-ner):
    # batches of 16 drown in noise; the same settings train well without DP.
    default_lr = 0.02
    default_batch_size = 32
    default_local_epochs = 1
    explainer = PhiReview(tag_notes)  # found, missed and extra PHI; the files hold the notes
    train_size: int | None = None  # built-in sites: training notes each (None: the built-in count)

    def configure(self, settings: Mapping[str, Scalar]) -> None:
        """``train-size`` only (:mod:`fedmed.tasks.site_size`)."""
        self.train_size = train_size_only(self.name, settings)

    def site_names(self, data_dir: Path | None = None) -> list[str]:
        if data_dir is None:
            return list(self.default_sites)
        return annotated_site_folders(Path(data_dir))

    def load_site(self, site: str, data_dir: Path | None, seed: int) -> SiteData:
        refuse_with_data_dir(self.train_size, data_dir)
        if data_dir is None:
            site_style(site)  # ConfigError for an unknown site
            n_train = self.train_size or N_TRAIN_DEFAULT
            splits = {"train": site_notes(site, n_train, seed, "train"),
                      "val": site_notes(site, N_VAL_DEFAULT, DATA_SEED, "val"),
                      "test": site_notes(site, N_TEST_DEFAULT, DATA_SEED, "test")}
            where = f"built-in site {site}"
        else:
            folder = Path(data_dir) / site
            splits = read_site_folder(folder)
            where = str(folder)
        train, test = NoteWindows(splits["train"]), NoteWindows(splits["test"])
        if len(train) == 0 or len(test) == 0:
            raise DataError(f"{where}: no {'training' if len(train) == 0 else 'test'} notes")
        val = NoteWindows(splits["val"]) if splits["val"] else None
        return SiteData(
            site=site, train=train, val=val, test=test,
            fingerprint=fingerprint_arrays([d.numpy() for d in (
                train.inputs, train.targets, test.inputs, test.targets)]),
        )

    def build_model(self) -> nn.Module:
        return DPBiLstmCrf(model_config())

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return crf_nll(outputs, targets)

    def evaluate(
        self, model: nn.Module, dataset: Dataset, device: torch.device
    ) -> dict[str, float]:
        if not isinstance(dataset, NoteWindows):
            raise TypeError(f"deid-ner scores whole notes: expected NoteWindows, got "
                            f"{type(dataset).__name__}")
        predicted = as_tagger(model, device).predict(dataset.texts)
        binary = score(dataset.documents, predicted)["token"]["binary"]
        return {"phi_recall": float(binary["recall"]),
                "phi_precision": float(binary["precision"]),
                "phi_f1": float(binary["f1"])}

