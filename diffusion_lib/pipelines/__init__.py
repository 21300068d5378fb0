"""Pipelines: trained models put to work (batched generation, evaluation, the guidance sweep)."""
