"""The retrieval-quality gate: recall@k of a golden query set against a canary.

Flagger's ``rollout`` webhook reaches it (through the load tester) during canary analysis;
a recall below the threshold fails the webhook and so halts or rolls back the canary.
"""
