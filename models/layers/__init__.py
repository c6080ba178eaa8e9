"""Keras 3 layers of the methods the pipeline carries (keras.ops, TensorFlow and JAX backends)."""
