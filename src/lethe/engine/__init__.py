from .loop import TrainConfig, TrainResult, train
from .schedule import lr_factor

__all__ = ["TrainConfig", "TrainResult", "train", "lr_factor"]
