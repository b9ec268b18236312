"""``python -m spikedriven.cli`` (what ``torchrun ... -m spikedriven.cli train`` runs)."""
import sys

from . import main

sys.exit(main())
