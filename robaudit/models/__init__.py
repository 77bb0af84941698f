"""Model layer: zoo names, timm factory with offline ImageNet weights, safe store, trainer."""

from robaudit.models.loading import LoadedModel, Model, load_model, load_model_and_task, resolve_target
from robaudit.models.normalize import Normalized, logits_of
from robaudit.models.store import ModelCard
from robaudit.models.zoo import ZooRecipe, model_name, parse_zoo_name

__all__ = ["LoadedModel", "Model", "ModelCard", "Normalized", "ZooRecipe", "load_model", "load_model_and_task",
           "logits_of",
           "model_name", "parse_zoo_name", "resolve_target"]
