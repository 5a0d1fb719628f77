"""De-identification throughput: notes per second of each detection configuration.

Measured side by side in one run on the same ~2,000-character synthetic notes
(tagger alone, Presidio rules alone, the combined engine, and the whole admission
gate), so the ratios between them hold on any machine.
Run: ``.venv/bin/python bench/deid_throughput.py [--json]``.
"""

import sys

from fedmed.deid.throughput import main

if __name__ == "__main__":
    sys.exit(main())
