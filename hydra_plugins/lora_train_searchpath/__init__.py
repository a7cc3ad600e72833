"""Hydra plugin shipped with lora-train: makes its config groups composable from any Hydra application."""
