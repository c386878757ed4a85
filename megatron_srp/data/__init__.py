"""Data: segmentation, classifiers, annotation, variants, Megatron dataset writing and reading."""
