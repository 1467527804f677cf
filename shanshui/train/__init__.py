"""Model architectures and training (training itself arrives with the training issue)."""
