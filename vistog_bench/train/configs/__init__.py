"""accelerate config files for the trainer, named by the recipes that use them (package data)."""
