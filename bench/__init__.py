"""The benchmark suite: real servers on loopback, each figure beside a baseline from the same run.

`python -m bench` runs everything and writes `bench/RESULTS.md`; `python -m bench --smoke` runs
a seconds-long version of each benchmark (CI runs it so the suite cannot rot).
"""
