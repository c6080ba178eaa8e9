"""BatchNormalization whose TensorFlow path is TF's fused kernel (FusedBatchNormV3 and its gradient).

Hand-written because Keras 3 has no fused path: on the TensorFlow backend its BatchNormalization computes the
moments and the normalisation as separate element-wise ops (tf.nn.moments, tf.nn.batch_normalization) and so do
their gradients. For the small CIFAR-style ResNets here that is most of a step: resnet8 on 128 28x28 images trains at
105 ms a step with Keras's layer and 68 ms with this one on the 2-core CPU (runs/ micro-benchmark, bench/results/
speed_vs_reference.md for the Trainer).

Same variables, names, config and moving-statistics update (momentum, biased batch variance) as
keras.layers.BatchNormalization, so weights, backbone warm starts and saved models carry over; on the other
backends (JAX, PyTorch), and for what the fused kernel does not cover (not 4-D channels-last, a mask, renorm,
synchronized, no centre or scale), it is Keras's layer unchanged.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="longtail")
class BatchNormalization(keras.layers.BatchNormalization):
    def _fusable(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and len(inputs.shape) == 4
                and self.axis in (-1, 3) and self.center and self.scale and not self.renorm and not self.synchronized)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        # bfloat16 goes in as it is: the kernel keeps its statistics in float32 (its U type), as Keras's layer does
        # under a mixed policy, and skips two casts a layer (the layer 1.6-1.9x as fast in a micro-benchmark; with it,
        # mixed_bfloat16 trains resnet8 1.33x as fast as float32, without it 1.17x: bench/results/lever_ab.md)
        x = inputs if inputs.dtype == tf.bfloat16 else tf.cast(inputs, "float32")
        if training and self.trainable:
            y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, epsilon=self.epsilon, is_training=True)
            # the kernel returns the Bessel-corrected batch variance; Keras's moving variance averages the biased one
            n = tf.cast(tf.reduce_prod(tf.shape(x)[:-1]), "float32")
            variance = variance * (n - 1.0) / n
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance, epsilon=self.epsilon,
                is_training=False)
        return tf.cast(y, self.compute_dtype)
