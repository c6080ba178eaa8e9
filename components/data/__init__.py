"""Data preparation: read a source (Fashion-MNIST, image folders, TFRecords, TFDS), draw the
long-tailed labeled split, the unlabeled pool, a balanced validation split and the test split,
and write them as sharded TFRecords of tf.train.Example (PNG bytes) with a JSON manifest."""
