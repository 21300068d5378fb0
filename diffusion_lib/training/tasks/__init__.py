"""What the Trainer trains: each task builds its model, loss and sample grids from a TrainConfig."""
