"""`python -m qlora_lab.grading STEP [labs_dir]`: see `qlora_lab.grading.workflow`."""

import sys

from qlora_lab.grading.workflow import main

sys.exit(main())
