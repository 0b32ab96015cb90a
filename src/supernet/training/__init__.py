"""Training: config schema, samplers, teachers, schedules, checkpoints and the one training loop."""
