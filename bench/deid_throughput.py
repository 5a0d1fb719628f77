"""De-identification throughput: notes per second of each detection configuration.

Measured side by side in one run on the same ~2,000-character synthetic notes
(tagger alone, Presidio rules alone, the combined engine, and the whole admission
gate), so the ratios between them hold on any machine.
Run: ``.venv/bin/python bench/deid_throughput.py [--json]``. Long notes (peak memory and
characters/s of one note of each size through the gate, next to normal notes):
``.venv/bin/python bench/deid_throughput.py --long-mb 1 10 50`` (streamed as ``deid scrub``
does; ``--in-memory`` for the gate on a note held in memory; ``--in-file jsonl|csv`` for the
note as a record of such a file, scrubbed as ``deid scrub`` does), and what grows window by window:
``--window-memory 2.5 [--no-malloc-trim]`` (docs/deid.md, *Long notes*).
"""

import sys

from fedmed.deid.throughput import main

if __name__ == "__main__":
    sys.exit(main())
