"""Runs: fine-tuning, unlearning and evaluation of a model, with the configs they take, the audit record,
continual sequences of requests and the stopping hooks, and the conventions that reproduce released code."""
from ..model.load import load_model
from .configs import AuditConfig, DataConfig, EvalConfig, MethodConfig, ModelConfig, UnlearnRun
from .preparation import prepare
from .runs import evaluate, finetune, retain_model_references, retain_model_truth_ratios, unlearn

__all__ = ["AuditConfig", "DataConfig", "EvalConfig", "MethodConfig", "ModelConfig", "UnlearnRun", "evaluate",
           "finetune", "load_model", "prepare", "retain_model_references", "retain_model_truth_ratios", "unlearn"]
