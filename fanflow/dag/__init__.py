"""DAG layer: nodes, nested-argument traversal, the DAG model and its encoding."""

from fanflow.dag.graph import DAG
from fanflow.dag.node import Node, Ref, Task, substitute

__all__ = ["DAG", "Node", "Ref", "Task", "substitute"]
