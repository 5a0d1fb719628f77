"""De-identification at the hospital node (``fedmed.deid``).

Raw clinical text and DICOM never reach a task pack directly: they pass through the
admission gate (:mod:`fedmed.deid.gate`), which detects PHI (a BiLSTM-CRF or transformer
tagger plus Presidio pattern recognizers), replaces it with consistent surrogates, checks
what is left for residual identifiers and reports counts to the site audit trail.

Modules are flat on purpose (the packaging lists only ``fedmed.deid``); each has one job:

- :mod:`.phi` taxonomy (i2b2-2014 categories, HIPAA Safe Harbor map) and span types
- :mod:`.dates` date formats shared by the corpus generator and the date-shifting surrogates
- :mod:`.tokens` offset-keeping tokenisation, BIO tags, windows
- :mod:`.io` i2b2 XML / text / CSV / JSONL readers and writers
- :mod:`.templates`, :mod:`.fakes`, :mod:`.corpus` the synthetic annotated corpus
- :mod:`.tagger` the tagger interface and shared decoding; :mod:`.bilstm_crf`,
  :mod:`.transformer_tagger` the two taggers; :mod:`.taggers` finds one by name or path;
  :mod:`.train` their training, :mod:`.selection` its model selection on dev
- :mod:`.config` a site's de-id settings; :mod:`.recognizers`, :mod:`.presidio_engine`
  the detection pipeline; :mod:`.workers` its worker pool for large batches and
  :mod:`.worker` one worker process
- :mod:`.sitekey`, :mod:`.surrogates` site secret and surrogate generation
- :mod:`.dicom` DICOM header de-identification
- :mod:`.residual`, :mod:`.gate` the admission gate
- :mod:`.evaluate`, :mod:`.throughput`, :mod:`.cli`
"""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"
"""Where the shipped checkpoint lives (package data)."""
