"""`ray job submit --working-dir . -- python jobs/reproduce.py ARGS`: same arguments as `ray-sticker reproduce`.

Inside a Ray job the library attaches to the job's cluster (RAY_ADDRESS is set by Ray).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the working dir's package

from ray_sticker.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
