"""Kept for old references: the quick benchmark is now ``scripts/bench --quick``.

``python bench/quick.py [args]`` runs ``bench.run --quick [args]`` (see bench/README.md).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.run import main

if __name__ == "__main__":
    sys.exit(main(["--quick", *sys.argv[1:]]))
