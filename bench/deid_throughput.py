"""De-identification throughput: notes per second of each detection configuration.

Measured side by side in one run on the same ~2,000-character synthetic notes
(tagger alone, Presidio rules alone, the combined engine, and the whole admission
gate), so the ratios between them hold on any machine.
Run: ``.venv/bin/python bench/deid_throughput.py [--json]``. Long notes (peak memory and
characters/s of one note of each size through the gate, next to normal notes):
``.venv/bin/python bench/deid_throughput.py --long-mb 1 5 10`` (docs/deid.md, *Long notes*).
"""

import sys

from fedmed.deid.throughput import main

if __name__ == "__main__":
    sys.exit(main())
