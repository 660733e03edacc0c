"""Flows: a DAG of steps submitted at once, each step an effect that starts when the steps it needs succeeded.

- `models`: the step a caller submits, the flow and step records, the status rule.
- `graph`: checking the steps form a DAG, and each step's ancestors.
- `templates`: `{{steps.ID.output|result[.FIELD]}}`: parsing, checking, filling.
- `manager`: the live `Flow` and the `FlowManager` that runs flows on the supervisor.
"""
