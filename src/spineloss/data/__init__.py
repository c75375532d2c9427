"""Data: dataset layouts, synthetic phantoms, preprocessing, augmentation and loading."""
