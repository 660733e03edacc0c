"""Flows: a DAG of steps submitted at once, each step an effect that starts when the steps it needs succeeded.

- `models`: the step a caller submits, the flow and step records, the status rule.
- `graph`: checking the steps form a DAG, and each step's ancestors.
- `templates`: `{{steps.ID.output|result[.FIELD]}}`: parsing, checking, filling.
- `manager`: the live `Flow` and the `FlowManager` that runs flows on the supervisor.
"""

from effectd.flows.graph import check_graph
from effectd.flows.manager import Flow, FlowManager
from effectd.flows.models import (
    MAX_STEPS,
    STOPPED_ON_PURPOSE,
    FlowRecord,
    FlowStatus,
    FlowStepRecord,
    Policy,
    Step,
    StepId,
    StepRef,
    flow_record,
    flow_status,
)
from effectd.flows.templates import TemplateRef, check_templates, parse_templates

__all__ = [
    "MAX_STEPS",
    "STOPPED_ON_PURPOSE",
    "Flow",
    "FlowManager",
    "FlowRecord",
    "FlowStatus",
    "FlowStepRecord",
    "Policy",
    "Step",
    "StepId",
    "StepRef",
    "TemplateRef",
    "check_graph",
    "check_templates",
    "flow_record",
    "flow_status",
    "parse_templates",
]
