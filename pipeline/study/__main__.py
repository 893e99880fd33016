"""`python -m pipeline.study`: runs pipeline.study.runner as the program."""

import runpy

runpy.run_module("pipeline.study.runner", run_name="__main__", alter_sys=True)
