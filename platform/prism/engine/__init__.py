"""The shared engine: model assembly (backbone + adapters + a task's heads), precision, the one train
loop, the TorchTrainer driver, checkpoints. It knows no task by name."""
