"""Lethe: make a language model forget what it should not know, and measure that it did."""
from .api import (
                  AuditConfig,
                  DataConfig,
                  EvalConfig,
                  EvalSet,
                  Fields,
                  IndistinguishableStop,
                  Loss,
                  Method,
                  MethodConfig,
                  ModelConfig,
                  Need,
                  ParamsConfig,
                  PromptFormat,
                  RuntimeConfig,
                  TrainConfig,
                  UnlearnRun,
                  demo,
                  evaluate,
                  finetune,
                  load_records,
                  parse_method,
                  report,
                  run_scenario,
                  unlearn,
)
from .util.errors import LetheError
from .version import __version__

__all__ = ["AuditConfig", "DataConfig", "EvalConfig", "EvalSet", "Fields", "IndistinguishableStop", "Loss", "Method",
           "MethodConfig", "ModelConfig", "Need", "ParamsConfig", "PromptFormat", "RuntimeConfig", "TrainConfig",
           "UnlearnRun", "demo", "evaluate", "finetune", "load_records", "parse_method", "report", "run_scenario",
           "unlearn", "LetheError", "__version__"]
