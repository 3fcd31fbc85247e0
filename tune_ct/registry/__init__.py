"""The registry stage: publish the best model, load registered models, promote with gates, predict."""
