"""Training: datasets, transforms, retraining, schedules."""
