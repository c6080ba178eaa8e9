"""Keras 3 layers of the long-tail methods (keras.ops only, so every backend runs them)."""
