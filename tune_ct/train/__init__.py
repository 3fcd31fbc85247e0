"""The train stage: the training loop, the trial runner, search spaces, the Tune search and its resumption."""
