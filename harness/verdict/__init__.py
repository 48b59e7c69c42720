"""The verdict and report stages: the records (MethodRun, Phase, Check...), the checks
(pure functions over a MethodRun), the report folder (JSON, JUnit, HTML) and the
matrices of verdicts (geometries, seeded regressions).
"""
