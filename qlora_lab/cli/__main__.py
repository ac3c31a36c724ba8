"""`python -m qlora_lab.cli ...`: what `accelerate launch -m qlora_lab.cli finetune` runs."""

import sys

from qlora_lab.cli import main

sys.exit(main())
