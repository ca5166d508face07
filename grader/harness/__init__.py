"""The harness wing: what every learner runs.

The pytest plugin (`--impl`, the `impl` and `device` fixtures, points, teaching reports), the loader of
learner code, the checks and tolerances, the course registry and the learner's commands (`llmlab
progress/check/hint/watch`), and the notebook extension an nbgrader kernel loads. The handout ships this
folder as it is. Imports nothing from `grader.judge` or `grader.publish`.
"""
