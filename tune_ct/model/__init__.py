"""The model stage: networks (one timm name gives one model), the checkpoint format, augmentation, inference."""
