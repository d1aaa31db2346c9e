"""The checks behind `scripts/check_upstream_compat.py`, one module-level function per check.

- `context`: command-line setup (`import_upstream`) and `Context`, the state the checks share, passed to each.
- `helpers`: the tiny upstream model, the mixed batch and the comparisons several checks use.
- `checks_patch`: building the model, upstream's own results, `apply()`, full and fast mode inputs.
- `checks_train`: training forwards (fast, slow), slow-step loss against upstream's, the transformers Trainer.
- `checks_infer`: eval forward and `generate` against upstream's, `remove()`.
- `runner`: the ordered list of (name, check) and the PASS/FAIL loop.

Only `context` may be imported before upstream `llava`: the other modules import `llava` and `dualspeed_patch`
at import time, so import them after `context.import_upstream()` has put both on the path in the right order.
"""
