"""The judge wing: what grades a class of untrusted submissions.

`llmlab grade` and the Gradescope entry point, the sandboxed worker that runs the hidden suites, the
sandbox's layout and isolation, and the static audit. Runs on the grading machine only; imports the
harness, never `grader.publish`. Not in the learner's handout.
"""
