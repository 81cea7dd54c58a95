"""`ray job submit --working-dir . -- python jobs/bench.py WHAT ARGS`: same arguments as `ray-sticker bench`.

Inside a Ray job the library attaches to the job's cluster (RAY_ADDRESS is set by Ray).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package

from ray_sticker.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
