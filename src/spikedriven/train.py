"""Former home of the training API, kept so that existing imports keep working: ``spikedriven.training.api``."""
from .training.api import DEFAULT_CONFIG, evaluate_checkpoint, read_resume_recipe, recipe_of_run, train
from .training.recipe import Recipe, resolve_recipe

__all__ = ["train", "evaluate_checkpoint", "recipe_of_run", "read_resume_recipe", "resolve_recipe", "Recipe",
           "DEFAULT_CONFIG"]
