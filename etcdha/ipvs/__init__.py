"""IPVS: the table model, the desired table, the diff, the netlink backend, text forms.

The pure parts (model, desired, diff, text) import nothing that touches the
kernel; netlink talks to it; reconcile makes the group resource of them.
"""

from etcdha.ipvs.desired import Drains, Plan, RealState, Verdicts, desired, named_services, plan
from etcdha.ipvs.diff import Op, OpKind, apply_ops, diff
from etcdha.ipvs.model import Dest, Fwd, Service, ServiceKey, Table, VirtualServer
from etcdha.ipvs.text import from_json, parse_ipvsadm, to_ipvsadm, to_json

__all__ = [
    "Dest",
    "Drains",
    "Fwd",
    "Op",
    "OpKind",
    "Plan",
    "RealState",
    "Service",
    "ServiceKey",
    "Table",
    "Verdicts",
    "VirtualServer",
    "apply_ops",
    "desired",
    "diff",
    "from_json",
    "named_services",
    "parse_ipvsadm",
    "plan",
    "to_ipvsadm",
    "to_json",
]
