"""Command line of the ResShift / SinSR mini recipes (`sr_core.training.recipes_resshift.main`):

    python -m sr_core.training.resshift_cli train RECIPE ...   (= python -m sr_core.training RECIPE ...)
    python -m sr_core.training.resshift_cli export RUN [--id] [--assets] [--no-eval] [--eval-limit N]
    python -m sr_core.training.resshift_cli recon RUN_OR_BUNDLE [--sets Set5,Set14,BSD100] [--limit N]
    python -m sr_core.training.resshift_cli redecode BUNDLE --decoder-from RUN [--no-eval] [--eval-limit N]
    python -m sr_core.training.resshift_cli chain-pack RUN_OR_BUNDLE --pack P --out P2 [--crops N] [--seed S]
    python -m sr_core.training.resshift_cli bench [--resshift DIR] [--sinsr DIR] [--sizes 64,128]
    python -m sr_core.training.resshift_cli configs

A module of its own because `recipes_resshift` is imported by the package (it registers the
recipes), and running an already imported module with `-m` executes it twice.
"""

import sys

from .recipes_resshift import main

if __name__ == "__main__":
    sys.exit(main())
