"""The publish wing: what builds the course's artefacts from the repository.

The stub generator (`llmlab stubs`), the learner's handout (`llmlab release`) and the nbgrader course
(`llmlab nbgrader`). Run by maintainers and instructors; imports the harness, never `grader.judge`. Not in
the learner's handout.
"""
