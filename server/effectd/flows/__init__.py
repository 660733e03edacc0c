"""Flows: a DAG of steps submitted at once, each step an effect that starts when the steps it needs succeeded.

- `models`: the step a caller submits, the `FlowRequest` front-ends build, the live `Flow`, the flow
  and step records, the status rule.
- `graph`: checking the steps form a DAG, and each step's ancestors.
- `templates`: `{{steps.ID.output|result[.FIELD]}}`: parsing, checking, filling.
- `plan`: a flow's steps checked and planned as effect specs, before anything is written.
- `manager`: the `FlowManager` that runs flows on the supervisor.
- `fanout` and `resume`: a step's outcome without a process of its own (`FanOut`, the supervisor's
  `instead` hook), given its dependencies by name.
"""
